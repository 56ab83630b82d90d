"""The autoscaler's signal sources against the real servers: Redis (Bull keys), Postgres
(`execution_entity`) and Prometheus."""

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import sqlalchemy as sa

from rp9_pipelines.catalog.autoscaling import Candidate
from rp9_pipelines.domain.autoscaling import Policy
from rp9_pipelines.domain.tenants import SHARED_DATABASE, Limits, TenantNames
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import QueueSnapshot, RedisResource
from rp9_pipelines.services.autoscaling import evaluate
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.autoscaling.synthetic import (
    Execution,
    clear_keys,
    drop_schemas,
    ensure_database,
    execution_table,
    fill_queue,
)

pytestmark = pytest.mark.stack


@pytest.fixture
def tag() -> str:
    return f"assig-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(settings: Settings, tag: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    clear_keys(client, f"rp9:{tag}*")
    client.close()


def test_queue_snapshots_read_depth_running_and_head_age_for_many_queues(
    settings: Settings, redis_client: redis.Redis, tag: str
) -> None:
    busy, running, idle = (TenantNames(f"{tag}-{n}", "shared") for n in ("a", "b", "c"))
    fill_queue(redis_client, busy.bull_prefix, waiting=30, active=2, age_s=20)
    fill_queue(redis_client, running.bull_prefix, waiting=0, active=3)
    snapshots = RedisResource(redis_url=settings.redis_url).queue_snapshots(
        [busy.bull_prefix, running.bull_prefix, idle.bull_prefix]
    )
    head = snapshots[busy.bull_prefix]
    assert (head.waiting, head.active) == (30, 2)
    # The head of `wait` is job 3, the oldest waiting one: 20 s * 29/31 old when it was made.
    assert head.oldest_wait_s is not None
    assert 18.7 - 0.1 <= head.oldest_wait_s <= 18.7 + 2
    assert snapshots[running.bull_prefix] == QueueSnapshot(0, 3, None)
    assert snapshots[idle.bull_prefix] == QueueSnapshot(0, 0, None)
    # The head's age is what a worker taking jobs from the right would see next.
    assert redis_client.lindex(f"{busy.bull_prefix}:jobs:wait", -1) == b"3"


# What a tenant can make of its own queue keys with its own Redis user (its ACL allows every
# command on them): each breaks the one read that expects Bull's shape.
def _wait_is_a_string(client: redis.Redis, prefix: str) -> None:
    client.set(f"{prefix}:jobs:wait", "not a list")


def _active_is_a_hash(client: redis.Redis, prefix: str) -> None:
    client.hset(f"{prefix}:jobs:active", "a", "b")


def _head_is_huge(client: redis.Redis, prefix: str) -> None:
    client.rpush(f"{prefix}:jobs:wait", b"9" * (8 * 1024 * 1024))


def _head_job_is_a_zset(client: redis.Redis, prefix: str) -> None:
    client.rpush(f"{prefix}:jobs:wait", "7")
    client.zadd(f"{prefix}:jobs:7", {"timestamp": 1})


def _head_timestamp_is_text(client: redis.Redis, prefix: str) -> None:
    client.rpush(f"{prefix}:jobs:wait", "7")
    client.hset(f"{prefix}:jobs:7", "timestamp", "yesterday")


def _head_timestamp_is_huge(client: redis.Redis, prefix: str) -> None:
    client.rpush(f"{prefix}:jobs:wait", "7")
    client.hset(f"{prefix}:jobs:7", "timestamp", "1" * (8 * 1024 * 1024))


@pytest.mark.parametrize(
    "malform",
    [
        _wait_is_a_string,
        _active_is_a_hash,
        _head_is_huge,
        _head_job_is_a_zset,
        _head_timestamp_is_text,
        _head_timestamp_is_huge,
    ],
)
def test_a_malformed_queue_is_unreadable_and_the_others_are_read(
    settings: Settings,
    redis_client: redis.Redis,
    tag: str,
    malform: Callable[[redis.Redis, str], None],
) -> None:
    before, broken, after = (TenantNames(f"{tag}-{n}", "shared") for n in ("a", "b", "c"))
    fill_queue(redis_client, before.bull_prefix, waiting=5, active=1, age_s=20)
    fill_queue(redis_client, after.bull_prefix, waiting=0, active=2)
    malform(redis_client, broken.bull_prefix)
    started = time.perf_counter()
    snapshots = RedisResource(redis_url=settings.redis_url).queue_snapshots(
        [before.bull_prefix, broken.bull_prefix, after.bull_prefix]
    )
    # A huge value stays on the server: the read costs what a normal one does.
    assert time.perf_counter() - started < 1
    unreadable = snapshots[broken.bull_prefix]
    assert not unreadable.readable
    assert (unreadable.waiting, unreadable.active, unreadable.oldest_wait_s) == (0, 0, None)
    head = snapshots[before.bull_prefix]
    assert head.readable
    assert (head.waiting, head.active) == (5, 1)
    assert head.oldest_wait_s is not None
    assert head.oldest_wait_s >= 15
    assert snapshots[after.bull_prefix] == QueueSnapshot(0, 2, None)


def test_a_tick_leaves_out_an_unreadable_tenant_and_judges_the_others(
    settings: Settings, redis_client: redis.Redis, tag: str, n8n_data: N8nDataResource
) -> None:
    """Its history is kept for the next tick; the others scale on their own figures."""
    limits = Limits(10_000, 2, 1.0, 1024, 1, 4, False)
    busy, broken = (
        Candidate(uuid.uuid4(), f"{tag}-{n}", "shared", 1, limits) for n in ("busy", "broken")
    )
    fill_queue(redis_client, busy.names.bull_prefix, waiting=0, active=2)
    _wait_is_a_string(redis_client, broken.names.bull_prefix)
    history = {str(broken.id): ()}
    tick = evaluate(
        [busy, broken],
        history,
        [],
        redis=RedisResource(redis_url=settings.redis_url),
        n8n_data=n8n_data,
        prometheus=None,
        policy=Policy(),
        signal_window_s=60,
        now=time.time(),
    )
    assert [j.observation.candidate.slug for j in tick.judged] == [busy.slug]
    [judged] = tick.judged
    assert (judged.observation.signals.active, judged.decision.workers_to) == (2, 2)
    assert tick.histories[str(broken.id)] == ()
    [note] = [n for n in tick.notes if broken.slug in n]
    assert note.startswith(f"queue of {broken.slug} unreadable: WRONGTYPE")


def test_execution_windows_read_many_schemas_and_databases_in_bulk(
    settings: Settings, admin_engine: sa.Engine, tag: str
) -> None:
    shared = [TenantNames(f"{tag}-s{n}", "shared") for n in range(3)]
    dedicated = TenantNames(f"{tag}-d", "dedicated")
    missing = TenantNames(f"{tag}-gone", "dedicated")  # its database does not exist
    ensure_database(admin_engine, SHARED_DATABASE)
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{dedicated.db_name}"'))
    base = sa.make_url(sqlalchemy_url(settings.database_url))
    shared_db = sa.create_engine(base.set(database=SHARED_DATABASE), poolclass=sa.NullPool)
    dedicated_db = sa.create_engine(base.set(database=dedicated.db_name), poolclass=sa.NullPool)
    try:
        # Tenant s0: ten executions in the window (run 1..10 s, waited 0.5..5 s), one crashed,
        # and two that stopped before the window. s1: nothing in the window. s2: no table.
        recent = [Execution(5, run_s=n, wait_s=n / 2) for n in range(1, 11)]
        recent[-1] = Execution(5, run_s=10, wait_s=5, status="crashed")
        execution_table(
            shared_db, shared[0].db_schema, [*recent, Execution(500, 1, 1), Execution(90, 1, 1)]
        )
        execution_table(shared_db, shared[1].db_schema, [Execution(400, 1, 1)])
        execution_table(dedicated_db, "public", [Execution(1, run_s=2, wait_s=1)] * 4)
        result = N8nDataResource(admin_url=settings.database_url).execution_windows(
            [*shared, dedicated, missing], window_s=60
        )
    finally:
        drop_schemas(shared_db, [n.db_schema for n in shared])
        shared_db.dispose()
        dedicated_db.dispose()
        with admin_engine.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{dedicated.db_name}" WITH (FORCE)')
            )
    assert set(result.windows) == {shared[0].slug, shared[1].slug, dedicated.slug}
    busy = result.windows[shared[0].slug]
    assert (busy.total, busy.failed, busy.per_minute) == (10, 1, 10.0)
    # percentile_cont: 0.95 of the way through 1..10 s is 9.55 s; of 0.5..5 s, 4.775 s.
    assert busy.latency_p95_ms == pytest.approx(9550, abs=20)
    assert busy.queue_wait_p95_ms == pytest.approx(4775, abs=20)
    quiet = result.windows[shared[1].slug]
    assert (quiet.total, quiet.latency_p95_ms, quiet.queue_wait_p95_ms) == (0, None, None)
    own = result.windows[dedicated.slug]
    assert own.total == 4
    assert own.latency_p95_ms == pytest.approx(2000, abs=20)
    assert list(result.errors) == [missing.slug]
    assert "does not exist" in result.errors[missing.slug]


def test_prometheus_answers_per_tenant_and_fails_loudly_when_down(settings: Settings) -> None:
    prometheus = PrometheusResource(base_url=settings.prometheus_url)
    assert prometheus.configured
    assert prometheus.ping().ok
    assert prometheus.by_tenant('label_replace(vector(3), "tenant", "acme", "", "")') == {
        "acme": 3.0
    }
    rates = prometheus.execution_rates(300)  # whatever tenants run now: well-formed figures
    assert all(r.per_minute >= 0 for r in rates.values())
    assert not PrometheusResource(base_url="").configured
    down = PrometheusResource(base_url="http://127.0.0.1:1", timeout_s=2)
    assert not down.ping().ok
    with pytest.raises(Exception, match=r"Connection refused|Max retries"):
        down.execution_rates(60)
