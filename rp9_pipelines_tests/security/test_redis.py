"""Redis attacks with a tenant's own credentials (its ACL user `rp9-<slug>` and the password its
containers hold): nothing outside its keys and channels, no command that lists, changes or
stops the shared server, while its n8n keeps running executions through its workers; and its
malformed queue keys cannot fail the autoscaler's reading of another tenant."""

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
import redis
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.defs.autoscaling.sensor import build_autoscaler
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.launches import TENANT_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import TENANT_COMMANDS, RedisResource, tenant_acl
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import AutoscalingSettings, Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.autoscaling.synthetic import clear_keys, fill_queue, insert_tenants
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

# Commands no tenant may run: they list other tenants' key names or channels (key and channel
# patterns do not filter them), read server-wide state, or change or stop the shared server.
FORBIDDEN = {
    "keys",
    "scan",
    "randomkey",
    "dbsize",
    "info",
    "script",
    "function",
    "fcall",
    "flushall",
    "flushdb",
    "pubsub",
    "config",
    "acl",
    "debug",
    "monitor",
    "slowlog",
    "latency",
    "memory",
    "client",
    "select",
    "swapdb",
    "move",
    "copy",
    "sort",
    "object",
    "dump",
    "restore",
    "migrate",
    "shutdown",
    "save",
    "bgsave",
    "replicaof",
    "cluster",
}

# How Redis words a refusal: NOPERM, a script's call refused by the ACL, or a command the
# server's configuration turns off for everyone (DEBUG).
REFUSED = re.compile(r"no permissions|can't (run|access)|command not allowed")


def test_a_tenant_user_gets_only_the_allowed_commands_on_its_own_patterns() -> None:
    rules = tenant_acl("secret", "rp9:acme", 0, enabled=True)
    assert rules[:2] == ["reset", "on"]
    assert [r for r in rules if r[0] in "~&%"] == ["~rp9:acme:*", "&rp9:acme:*"]
    allowed = {r[1:] for r in rules if r.startswith("+")}
    assert allowed == {*TENANT_COMMANDS, "select|0"}
    assert not any(r.startswith("-") or "@" in r for r in rules)  # no category, no `allkeys`
    assert not {c.split("|")[0] for c in TENANT_COMMANDS if c != "client|setname"} & FORBIDDEN
    assert tenant_acl("secret", "rp9:acme", 0, enabled=False)[1] == "off"


@pytest.fixture(scope="module")
def tenant(api: Api) -> Iterator[dict[str, Any]]:
    """A starter tenant of this module's own, provisioned through the API and purged at the end
    (the attacks leave its queue broken)."""
    created = api.create_tenant(slug=unique_slug("sec"), name="Redis attacker", plan="starter")
    yield created
    response = api.request("DELETE", f"/tenants/{created['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


@pytest.fixture(scope="module")
def names(tenant: dict[str, Any]) -> TenantNames:
    return TenantNames(tenant["slug"], tenant["tier"])


@pytest.fixture(scope="module")
def admin(settings: Settings) -> RedisResource:
    return RedisResource(redis_url=settings.redis_url)


def as_tenant(settings: Settings, vault: VaultResource, names: TenantNames) -> redis.Redis:
    """A connection with the credentials the tenant's containers hold."""
    secrets = vault.read(names.vault_path) or {}
    url = urlsplit(settings.redis_url)
    return redis.Redis(
        host=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        username=names.redis_user,
        password=secrets["redis_password"],
        socket_timeout=5,
    )


@pytest.fixture
def attacker(settings: Settings, vault: VaultResource, names: TenantNames) -> Iterator[redis.Redis]:
    client = as_tenant(settings, vault, names)
    yield client
    client.close()


@pytest.mark.stack
def test_its_n8n_runs_executions_through_its_worker_under_the_acl(
    settings: Settings,
    vault: VaultResource,
    admin: RedisResource,
    tenant: dict[str, Any],
    names: TenantNames,
) -> None:
    with admin.client() as client:
        user = client.acl_getuser(names.redis_user)
    assert user is not None
    assert user["enabled"]
    assert user["keys"] == [f"~{names.redis_prefix}:*"]
    assert user["channels"] == [f"&{names.redis_prefix}:*"]
    assert user["categories"][0] == "-@all"  # then only what `tenant_acl` adds

    n8n = TenantN8n(settings, vault, tenant)
    n8n.install_echo("acl")
    # The Respond to Webhook answer comes back from the worker through Bull (Lua scripts,
    # blocking pops, pub/sub): the whole queue path runs under the ACL.
    answer = n8n.call("acl", {"n": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "echo": {"n": 1}}

    # A repair resets the user to the same rules while n8n runs: its connections survive.
    connections = _connections(admin, names.redis_user)
    assert len(connections) >= 4  # main and worker: Bull's three clients, n8n's pub/sub
    admin.ensure_tenant_user(
        names.redis_user, (vault.read(names.vault_path) or {})["redis_password"], names.redis_prefix
    )
    assert set(_connections(admin, names.redis_user)) >= set(connections)
    answer = n8n.call("acl", {"n": 2})
    assert answer.status_code == 200, answer.text


def _connections(admin: RedisResource, user: str) -> list[str]:
    with admin.client() as client:
        return [str(c["id"]) for c in client.client_list() if c.get("user") == user]


@pytest.mark.stack
def test_its_own_keys_and_channels_work(attacker: redis.Redis, names: TenantNames) -> None:
    own = f"{names.redis_prefix}:probe"
    assert attacker.ping()
    assert attacker.set(own, "mine")
    assert attacker.get(own) == b"mine"
    assert attacker.eval("return redis.call('GET', KEYS[1])", 1, own) == b"mine"
    assert attacker.client_setname("probe")
    attacker.delete(own)
    listener = attacker.pubsub()  # type: ignore[no-untyped-call]
    listener.psubscribe(f"{names.redis_prefix}:*")
    assert listener.get_message(timeout=2)["type"] == "psubscribe"
    assert attacker.publish(f"{names.redis_prefix}:n8n:n8n.commands", "{}") >= 0
    listener.close()


def _refusals(names: TenantNames) -> list[tuple[str, ...]]:
    other = f"rp9:other-{uuid.uuid4().hex[:6]}"
    # A tenant whose slug starts with this one's: the pattern's `:` keeps them apart.
    longer = f"{names.redis_prefix}x"
    own = f"{names.redis_prefix}:probe"
    return [
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("SCAN", "0", "MATCH", "rp9:*"),
        ("RANDOMKEY",),
        ("DBSIZE",),
        ("GET", f"{other}:bull:jobs:id"),
        ("SET", f"{other}:bull:jobs:id", "1"),
        ("DEL", f"{other}:bull:jobs:wait"),
        ("LLEN", f"{other}:bull:jobs:wait"),
        ("GET", f"{longer}:bull:jobs:id"),
        ("GET", names.redis_prefix),
        ("RENAME", own, f"{other}:stolen"),
        ("COPY", own, f"{other}:copied"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", f"{other}:bull:jobs:id"),
        ("EVAL", f"return redis.call('GET', '{other}:bull:jobs:id')", "0"),
        ("EVAL", "return redis.call('KEYS', '*')", "0"),
        ("EVAL", "return redis.call('FLUSHALL')", "0"),
        ("PUBLISH", f"{other}:n8n:n8n.commands", "{}"),
        ("SUBSCRIBE", f"{other}:n8n:n8n.commands"),
        ("PSUBSCRIBE", "*"),
        ("PSUBSCRIBE", "rp9:*"),
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "KILL"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LIST"),
        ("FCALL", "anything", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("ACL", "LIST"),
        ("ACL", "GETUSER", "default"),
        ("ACL", "SETUSER", names.redis_user, "+@all", "~*"),
        ("PUBSUB", "CHANNELS"),
        ("PUBSUB", "NUMSUB", f"{other}:n8n:n8n.commands"),
        ("PUBSUB", "NUMPAT"),
        ("CLIENT", "LIST"),
        ("CLIENT", "INFO"),
        ("CLIENT", "KILL", "USER", "default"),
        ("CLIENT", "PAUSE", "10"),
        ("INFO",),
        ("INFO", "keyspace"),
        ("DEBUG", "SLEEP", "0"),
        ("MONITOR",),
        ("SLOWLOG", "GET"),
        ("LATENCY", "LATEST"),
        ("MEMORY", "STATS"),
        ("OBJECT", "ENCODING", own),
        ("DUMP", own),
        ("SORT", own, "BY", "nosort", "GET", "rp9:*"),
        ("SELECT", "1"),
        ("SWAPDB", "0", "1"),
        ("MOVE", own, "1"),
        ("SAVE",),
        ("BGSAVE",),
        ("REPLICAOF", "NO", "ONE"),
        ("SHUTDOWN", "NOSAVE"),
    ]


@pytest.mark.stack
def test_everything_outside_its_patterns_and_commands_is_refused(
    admin: RedisResource, attacker: redis.Redis, names: TenantNames
) -> None:
    for command in _refusals(names):
        # Asked first without running it, so a broken ACL fails here, before a destructive
        # command reaches the shared server; then run for real, with the tenant's password.
        with admin.client() as client:
            dry = client.execute_command("ACL", "DRYRUN", names.redis_user, *command)
        if command[0] != "EVAL":  # a script's own calls are checked when it runs
            assert dry not in (b"OK", "OK", True), f"{command} would be allowed"
        with pytest.raises(redis.ResponseError) as refused:
            attacker.execute_command(*command)  # type: ignore[no-untyped-call]
        message = str(refused.value)
        assert REFUSED.search(message), (command, message)


@pytest.mark.stack
def test_the_acl_file_keeps_the_user_as_redis_has_it(
    admin: RedisResource, names: TenantNames
) -> None:
    """The user a stack restart loads is the one Redis runs now."""
    with admin.client() as client:
        path = client.config_get("aclfile")["aclfile"]
        [live] = [u for u in client.acl_list() if u.startswith(f"user {names.redis_user} ")]
    saved = [
        line
        for line in Path(path).read_text().splitlines()
        if line.startswith(f"user {names.redis_user} ")
    ]
    assert saved == [live]


@pytest.mark.stack
@pytest.mark.parametrize("attack", ["wait is a string", "active is a hash"])
def test_its_malformed_queue_leaves_another_tenants_autoscaling_correct(
    settings: Settings,
    fresh_database_url: str,
    attacker: redis.Redis,
    names: TenantNames,
    attack: str,
) -> None:
    """The autoscaler's tick over this tenant and a busy one (a catalog of their own, the real
    Redis): the busy one is read and scaled as usual, this one is left out with a note. (Its
    live worker pops whatever is pushed on `wait`: the shapes of a head job are in
    `autoscaling/test_signals.py`, on queues without a worker.)"""
    if attack == "wait is a string":
        key = f"{names.bull_prefix}:jobs:wait"
        attacker.set(key, "not a list")
    else:
        key = f"{names.bull_prefix}:jobs:active"
        attacker.hset(key, "not", "a list")

    migrate.upgrade(fresh_database_url)
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    platform = redis.Redis.from_url(settings.redis_url)
    instance = dg.DagsterInstance.ephemeral()
    try:
        quota: dict[str, object] = {"concurrency": 2}
        [broken, busy] = insert_tenants(
            engine, [names.slug, f"{names.slug}-busy"], plan="pro", quota=quota
        )
        fill_queue(platform, busy.names.bull_prefix, waiting=0, active=2)
        sensor = build_autoscaler(AutoscalingSettings(enabled=True, tenants=f"{names.slug}*"))
        context = dg.build_sensor_context(
            instance=instance,
            resources={
                "catalog": CatalogResource(database_url=fresh_database_url),
                "redis": RedisResource(redis_url=settings.redis_url),
                "n8n_data": N8nDataResource(admin_url=settings.database_url),
                "prometheus": PrometheusResource(base_url=""),
            },
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        # The busy tenant's two running jobs fill its one worker (2 slots): a second worker.
        [request] = result.run_requests or []
        assert request.tags[TENANT_TAG] == busy.slug
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT tenant_id, signals FROM autoscaling_events"))
            events = {row.tenant_id: row.signals for row in rows}
        assert set(events) == {busy.id}
        assert (events[busy.id]["active"], events[busy.id]["queue_depth"]) == (2, 0)
        assert broken.slug == names.slug
    finally:
        attacker.delete(key)
        clear_keys(platform, f"{busy.names.redis_prefix}:*")
        platform.close()
        engine.dispose()
        instance.dispose()


@pytest.mark.stack
def test_turning_its_user_off_drops_its_connections_and_on_lets_it_back(
    settings: Settings,
    vault: VaultResource,
    admin: RedisResource,
    tenant: dict[str, Any],
    names: TenantNames,
) -> None:
    client = as_tenant(settings, vault, names)
    assert client.ping()
    admin.set_tenant_user_enabled(names.redis_user, False)
    try:
        assert _connections(admin, names.redis_user) == []
        with pytest.raises(redis.RedisError):
            client.ping()  # dropped; logging in again is refused
        with pytest.raises(redis.AuthenticationError):
            as_tenant(settings, vault, names).ping()
    finally:
        admin.set_tenant_user_enabled(names.redis_user, True)
    assert as_tenant(settings, vault, names).ping()
    with admin.client() as client_admin:
        user = client_admin.acl_getuser(names.redis_user)
    assert user is not None
    assert user["enabled"]
    # n8n logs in again by itself: its main and worker reconnect.
    wait_until(
        lambda: len(_connections(admin, names.redis_user)) >= 4,
        timeout_s=60,
        what="n8n's connections to come back",
    )
    # A user that does not exist: nothing to turn off, and it cannot be turned on.
    admin.set_tenant_user_enabled(f"rp9-gone-{uuid.uuid4().hex[:6]}", False)
    with pytest.raises(LookupError):
        admin.set_tenant_user_enabled(f"rp9-gone-{uuid.uuid4().hex[:6]}", True)
