"""Blue/green n8n upgrades on the real stack (Postgres, Redis, Docker, two n8n images, Traefik,
the API's holder, S3, Dagster): a tenant upgraded through the API under 20 webhooks a second
and rolled back through the API; a rehearsal that fails on the tenant's data; a switch whose
probe fails, rolled back on its own; a rollout halted after its canary wave.

The module's three tenants are shared by its tests, in order (each upgrade costs minutes): the
rollout at the end uses them as they are left by the tests before it."""

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tables import tenants, upgrades
from rp9_pipelines.domain.stack import LABEL_ROLE, LABEL_TENANT
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.upgrades import CatalogUpgrades
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served, terminate_run
from rp9_pipelines_tests.n8n_workflows import webhook, workflow
from rp9_pipelines_tests.platform.test_recovery import decrypted_credentials
from rp9_pipelines_tests.promotion.traffic import (
    Load,
    every_minute,
    executions_by_id,
    install,
    run_under_load,
    schedule_minutes,
)
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

OLD, NEW = "2.20.12", "2.22.6"
# A table n8n 2.22.6's migration CreateEvaluationConfig1778100000000 creates: a tenant that made
# one of that name (with its own credentials, in its own schema) breaks that migration.
PLANTED = "evaluation_config"


def _with_workflows(
    api: Api, settings: Settings, vault: VaultResource, prefix: str
) -> dict[str, Any]:
    slug = unique_slug(prefix)
    tenant = api.create_tenant(slug=slug, name=f"Upgrade {prefix}", plan="pro")
    n8n = TenantN8n(settings, vault, tenant)
    path = f"up-{uuid.uuid4().hex[:8]}"
    tenant["path"] = path
    tenant["webhook_id"] = install(n8n, workflow(f"receive {path}", [webhook(path, "onReceived")]))
    tenant["schedule_id"] = install(n8n, every_minute())
    credential = n8n.http.post(
        "/api/v1/credentials",
        json={"name": "up", "type": "httpHeaderAuth", "data": {"name": "X-Key", "value": "s"}},
    )
    assert credential.status_code == 200, credential.text
    return tenant


def _purge(api: Api, tenant: dict[str, Any]) -> None:
    gone = api.request("DELETE", f"/tenants/{tenant['slug']}?purge=true")
    assert gone.status_code == 202, gone.text
    assert api.wait_run(gone.json()["run_id"])["status"] == "SUCCESS"


# One tenant each, made when a test first needs it (three idle n8n stacks beside the one
# under load would take the cores it needs on two).


def _tenant_fixture(name: str, prefix: str, role: str) -> Any:
    """A module's tenant with workflows (`_with_workflows`), purged after it."""

    @pytest.fixture(scope="module", name=name)
    def made(
        api: Api, settings: Settings, vault: VaultResource, upgrade_image: str
    ) -> Iterator[dict[str, Any]]:
        tenant = _with_workflows(api, settings, vault, prefix)
        yield tenant
        _purge(api, tenant)

    made.__doc__ = role
    return made


busy = _tenant_fixture("busy", "ub", "Upgraded under load, then rolled back.")
hostile = _tenant_fixture(
    "hostile", "uh", "A table planted in its schema breaks 2.22.6's migrations."
)
probed = _tenant_fixture("probed", "up", "Its switch's probe is made to fail.")


def _versions(runtime: DockerRuntimeResource, slug: str) -> dict[str, str]:
    """`n8n --version` in each of the tenant's running containers, by role and name."""
    found = {}
    for container in runtime.client().containers.list(filters={"label": f"{LABEL_TENANT}={slug}"}):
        code, out, err = runtime.exec(container.name, ["n8n", "--version"])
        assert code == 0, err
        found[f"{container.labels[LABEL_ROLE]}:{container.name}"] = out.strip().splitlines()[-1]
    return found


def _executions(settings: Settings, names: TenantNames, workflow_id: str) -> set[int]:
    """The ids of the executions of `workflow_id` in the tenant's own tables."""
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(f'SELECT id FROM "{names.db_schema}".execution_entity WHERE "workflowId" = :w'),
            {"w": workflow_id},
        )
        found = {int(row[0]) for row in rows}
    engine.dispose()
    return found


def _last_upgrade(api: Api, slug: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/tenants/{slug}/upgrades").json()["upgrades"][0]
    return found


def _upgrade(api: Api, slug: str, version: str = NEW) -> tuple[dict[str, Any], dict[str, Any]]:
    asked = api.post(
        f"/tenants/{slug}/upgrade",
        {"version": version},
        **{"Idempotency-Key": str(uuid.uuid4())},
    )
    assert asked.status_code == 202, asked.text
    # The rehearsal's sandbox boots at the background weight behind the 20/s load: minutes on
    # two busy cores.
    run = api.wait_run(asked.json()["run_id"], timeout_s=1500)
    return run, _last_upgrade(api, slug)


def test_a_tenant_upgraded_under_20_webhooks_a_second_fails_no_request_and_runs_each_once(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    busy: dict[str, Any],
) -> None:
    tenant = busy
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    assert set(_versions(runtime, slug).values()) == {OLD}
    load = Load(n8n, tenant["path"])

    def upgrade() -> dict[str, Any]:
        run, found = _upgrade(api, slug)
        assert run["status"] == "SUCCESS", (run, found["error"], found["phase"])
        return found

    upgrade_row = run_under_load(load, upgrade)
    assert (upgrade_row["status"], upgrade_row["phase"]) == ("succeeded", "done"), upgrade_row
    figures = upgrade_row["figures"]
    # The rehearsal ran n8n 2.22.6's 15 migrations on a copy; the switch ran them on the data.
    assert figures["rehearsal_migrations"] == 15, figures
    assert figures["migrations"] == 15, figures
    assert {"hold_s", "snapshot_backup_id", "rehearsal_s"} <= figures.keys(), figures
    assert figures["watch_verdict"] == "healthy", figures
    now = api.get(f"/tenants/{slug}").json()
    assert (now["status"], now["n8n_version"]) == ("active", NEW), now
    # Every container runs the target version (`n8n --version`).
    versions = _versions(runtime, slug)
    assert set(versions.values()) == {NEW}, versions
    assert any(k.startswith("worker:") for k in versions), versions
    # Every request answered 2xx, those sent while held too; none lost; each executed once.
    assert len(load.answers) >= 40
    held = load.held(upgrade_row["steps"])
    failed = load.failures()
    why = "\n".join([load.report(), str(upgrade_row["steps"])])
    assert held, why
    assert all(200 <= status < 300 for status in held), why
    assert not failed, why
    names = TenantNames(slug, "shared")
    ran = executions_by_id(settings, names, load.token)
    assert set(ran) == set(load.answers), (len(ran), len(load.answers))
    assert max(ran.values()) == 1, [i for i, n in ran.items() if n > 1][:5]
    # The schedule fires on the new version, never twice in a minute.
    since = dt.datetime.fromisoformat(upgrade_row["switched_at"]).replace(second=0, microsecond=0)

    def fired_since_the_switch() -> Counter[str] | None:
        found = schedule_minutes(settings, names, tenant["schedule_id"])
        return found if any(dt.datetime.fromisoformat(m) >= since for m in found) else None

    minutes = wait_until(fired_since_the_switch, timeout_s=150, what="the schedule on 2.22.6")
    assert max(minutes.values()) == 1, minutes
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
    assert n8n.http.get("/api/v1/workflows", params={"limit": 1}).status_code == 200
    # The probe workflow the watch installed is gone again.
    listed = n8n.http.get("/api/v1/workflows", params={"limit": 250}).json()["data"]
    assert not [w for w in listed if "drill canary" in w["name"]], listed
    again = api.post(f"/tenants/{slug}/upgrade", {"version": NEW})
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "already_on_version"
    back = api.post(f"/tenants/{slug}/upgrade", {"version": OLD})
    assert back.json()["error"]["code"] == "downgrade", back.text
    nonsense = api.post(f"/tenants/{slug}/upgrade", {"version": "latest"})
    assert nonsense.status_code == 422, nonsense.text
    assert nonsense.json()["error"]["code"] == "invalid_version"


def test_an_upgraded_tenant_is_rolled_back_through_the_api_and_says_what_stays_behind(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    busy: dict[str, Any],
) -> None:
    tenant = busy
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    # An execution on the new version, after the snapshot: the rollback leaves it behind.
    assert n8n.call(tenant["path"], {"id": "after-the-switch"}).status_code == 200
    load = Load(n8n, tenant["path"])

    def roll_back() -> dict[str, Any]:
        asked = api.post(
            f"/tenants/{slug}/upgrade/rollback", **{"Idempotency-Key": str(uuid.uuid4())}
        )
        assert asked.status_code == 202, asked.text
        run = api.wait_run(asked.json()["run_id"], timeout_s=600)
        found = _last_upgrade(api, slug)
        assert run["status"] == "SUCCESS", (run, found["error"])
        return found

    back = run_under_load(load, roll_back)
    assert back["status"] == "rolled_back", back
    assert back["figures"]["executions_left_behind"] >= 1, back["figures"]
    assert back["figures"]["rollback_s"] < 60, back["figures"]
    assert not load.failures(), load.report()
    now = api.get(f"/tenants/{slug}").json()
    assert (now["status"], now["n8n_version"]) == ("active", OLD), now
    assert set(_versions(runtime, slug).values()) == {OLD}
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
    assert n8n.http.get("/api/v1/workflows", params={"limit": 1}).status_code == 200
    assert n8n.call(tenant["path"], {"id": "after-the-rollback"}).status_code == 200
    again = api.post(f"/tenants/{slug}/upgrade/rollback")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "no_upgrade", again.text


def test_a_rehearsal_that_fails_on_the_tenants_data_leaves_it_untouched_and_serving(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    hostile: dict[str, Any],
) -> None:
    tenant = hostile
    slug = tenant["slug"]
    names = TenantNames(slug, "shared")
    password = (vault.read(names.vault_path) or {})["db_password"]
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(
        database=names.db_name, username=names.db_role, password=password
    )
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as connection:  # the tenant, with its own credentials
        connection.execute(sa.text(f'CREATE TABLE "{names.db_schema}".{PLANTED} (id int)'))
    engine.dispose()
    before = {
        c.name: c.id
        for c in runtime.client().containers.list(filters={"label": f"{LABEL_TENANT}={slug}"})
    }
    run, found = _upgrade(api, slug)
    assert run["status"] == "FAILURE", run
    assert (found["status"], found["phase"]) == ("failed", "rehearsing"), found
    assert "rehearsal" in found["error"], found["error"]
    assert PLANTED in found["error"], found["error"]
    assert found["switched_at"] is None
    now = api.get(f"/tenants/{slug}").json()
    assert (now["status"], now["n8n_version"]) == ("active", OLD), now
    after = {
        c.name: c.id
        for c in runtime.client().containers.list(filters={"label": f"{LABEL_TENANT}={slug}"})
    }
    assert after == before
    assert TenantN8n(settings, vault, tenant).call(tenant["path"], {"id": "x"}).status_code == 200
    # Its sandbox is gone.
    assert not runtime.client().containers.list(all=True, filters={"name": "rp9-drill-u"})


def test_a_switch_whose_probe_fails_is_rolled_back_to_the_old_version_and_data(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    dagster_webserver: Served,
    probed: dict[str, Any],
) -> None:
    tenant = probed
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    assert n8n.call(tenant["path"], {"id": "before"}).status_code == 200
    names = TenantNames(slug, "shared")
    before = wait_until(
        lambda: _executions(settings, names, tenant["webhook_id"]),
        timeout_s=30,
        what="the execution before the upgrade",
    )
    workflows_before = n8n.http.get("/api/v1/workflows", params={"limit": 250}).json()["data"]
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        current = tenant_catalog.require_tenant(connection, slug)
    upgrade_id = CatalogUpgrades(engine).start(current, NEW)
    engine.dispose()
    dagster = DagsterClient(f"{dagster_webserver.url}/graphql")
    run_id = dagster.launch(
        launches.upgrade(
            "upgrade_tenant", str(upgrade_id), tenant["id"], slug, "test", fail_probe=True
        )
    )
    run = api.wait_run(run_id, timeout_s=900)
    found = _last_upgrade(api, slug)
    assert run["status"] == "FAILURE", run
    assert (found["status"], found["phase"]) == ("rolled_back", "rolled_back"), found
    assert "probe" in found["error"], found["error"]
    assert found["figures"]["migrations"] == 15, found["figures"]
    assert found["figures"]["rollback_s"] < 60, found["figures"]
    now = api.get(f"/tenants/{slug}").json()
    assert (now["status"], now["n8n_version"]) == ("active", OLD), now
    assert set(_versions(runtime, slug).values()) == {OLD}
    # Its data as before the upgrade: the workflows, the execution, the credential decrypting.
    workflows_after = n8n.http.get("/api/v1/workflows", params={"limit": 250}).json()["data"]
    assert sorted((w["id"], w["versionId"]) for w in workflows_after) == sorted(
        (w["id"], w["versionId"]) for w in workflows_before
    )
    assert _executions(settings, names, tenant["webhook_id"]) == before
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
    assert n8n.call(tenant["path"], {"id": "after"}).status_code == 200


def test_a_rollout_halts_after_the_wave_with_a_failed_rehearsal(
    api: Api,
    busy: dict[str, Any],
    hostile: dict[str, Any],
    probed: dict[str, Any],
) -> None:
    good, bad, later = probed, hostile, busy
    asked = api.post(
        "/upgrades/rollout",
        {
            "version": NEW,
            "canaries": [good["slug"], bad["slug"]],
            "waves": [100],
            "tenants": [good["slug"], bad["slug"], later["slug"]],
        },
    )
    assert asked.status_code == 202, asked.text
    rollout = asked.json()["rollout_id"]
    run = api.wait_run(asked.json()["run_id"], timeout_s=1200)
    assert run["status"] == "FAILURE", run
    assert _last_upgrade(api, good["slug"])["status"] == "succeeded"
    assert api.get(f"/tenants/{good['slug']}").json()["n8n_version"] == NEW
    assert _last_upgrade(api, bad["slug"])["status"] == "failed"
    assert api.get(f"/tenants/{bad['slug']}").json()["n8n_version"] == OLD
    # The wave after the canaries never started.
    untouched = api.get(f"/tenants/{later['slug']}/upgrades").json()["upgrades"]
    assert not [u for u in untouched if u["rollout"] == rollout], untouched
    assert api.get(f"/tenants/{later['slug']}").json()["n8n_version"] == OLD
    # Each tenant's run carried the rollout's tag.
    assert {
        u["rollout"] for u in (_last_upgrade(api, good["slug"]), _last_upgrade(api, bad["slug"]))
    } == {rollout}
    bad_waves = api.post("/upgrades/rollout", {"version": NEW, "waves": [50, 20]})
    assert bad_waves.status_code == 422, bad_waves.text
    unknown = api.post("/upgrades/rollout", {"version": "9.9.9"})
    assert unknown.status_code == 409, unknown.text


def test_an_upgrade_killed_with_its_requests_held_is_undone_by_its_rerun(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    dagster_webserver: Served,
    busy: dict[str, Any],
) -> None:
    slug = busy["slug"]
    asked = api.post(
        f"/tenants/{slug}/upgrade", {"version": NEW}, **{"Idempotency-Key": str(uuid.uuid4())}
    )
    assert asked.status_code == 202, asked.text
    run_id, upgrade_id = asked.json()["run_id"], asked.json()["upgrade_id"]
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)

    def phase() -> str:
        with engine.connect() as connection:
            return str(
                connection.execute(
                    sa.select(upgrades.c.phase).where(upgrades.c.id == upgrade_id)
                ).scalar_one()
            )

    # Killed with its requests held, the old stack stopping, and the new version's main booted
    # beside it, waiting at the tenant's `migrations` table.
    wait_until(
        lambda: phase() in ("holding", "stopped"), timeout_s=600, what="the hold", interval_s=0.05
    )
    terminate_run(dagster_webserver.url, run_id)
    assert api.wait_run(run_id)["status"] in {"CANCELED", "FAILURE"}
    if phase() in ("holding", "stopped"):
        # It never migrated the data: it fails at that read (its rights were withheld).
        with engine.connect() as connection:
            serving = connection.execute(
                sa.select(tenants.c.color).where(tenants.c.slug == slug)
            ).scalar_one()
        booted = [
            c.name
            for c in runtime.client().containers.list(all=True, filters={"name": f"rp9-{slug}-"})
            if c.name.endswith("-main") and c.name != f"rp9-{slug}-{serving}-main"
        ]
        assert booted

        def failed_or_gone() -> bool:
            return all(
                (state := runtime.state(name)) is None
                or state.status in ("exited", "restarting")
                or state.restarts > 0
                or "permission denied" in runtime.logs(name)
                for name in booted
            )

        wait_until(failed_or_gone, timeout_s=120, what="the new main to fail at its first read")
    rerun = DagsterClient(f"{dagster_webserver.url}/graphql").launch(
        launches.upgrade("upgrade_tenant", upgrade_id, busy["id"], slug, "test")
    )
    assert api.wait_run(rerun, timeout_s=600)["status"] == "FAILURE"
    engine.dispose()
    found = _last_upgrade(api, slug)
    assert found["id"] == upgrade_id
    # Before the new version started: put back; after: rolled back to the snapshot.
    assert found["status"] in ("failed", "rolled_back"), found
    assert "interrupted" in found["error"], found["error"]
    now = api.get(f"/tenants/{slug}").json()
    assert (now["status"], now["n8n_version"]) == ("active", OLD), now
    assert set(_versions(runtime, slug).values()) == {OLD}
    mains = [
        c.name
        for c in runtime.client().containers.list(all=True, filters={"name": f"rp9-{slug}-"})
        if c.name.endswith("-main")
    ]
    assert len(mains) == 1, mains
    n8n = TenantN8n(settings, vault, busy)
    wait_until(
        lambda: n8n.call(busy["path"], {"id": "after-the-rerun"}).status_code == 200,
        timeout_s=60,
        what="the tenant to serve again",
    )
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
