"""Backups and restore drills of real tenants: pg_dump of a live n8n's data into S3, read back,
restored, and booted as a sandbox n8n that decrypts the tenant's credentials."""

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import backups, restore_drills, tenants
from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.backups import PURGE_GRACE
from rp9_pipelines.domain.restore_drills import DRILL_CHECKS, SandboxNames
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.postgres_dump import (
    PgServer,
    create_sandbox,
    drop_sandbox,
    restore_stream,
    sandbox_leftovers,
)
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import free_port
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def add_credential(n8n: TenantN8n) -> str:
    created = n8n.http.post(
        "/api/v1/credentials",
        json={
            "name": f"token {uuid.uuid4().hex[:6]}",
            "type": "httpHeaderAuth",
            "data": {"name": "X-Token", "value": f"secret-{uuid.uuid4().hex}"},
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def backup_job(tenant: dict[str, Any], kind: str = "daily") -> dg.ExecuteInProcessResult:
    config = {"ops": {"backup_database": {"config": {"tenant_id": tenant["id"], "kind": kind}}}}
    return (
        defs()
        .get_job_def("backup_tenant")
        .execute_in_process(
            run_config=config, tags={"rp9/tenant": tenant["slug"]}, raise_on_error=False
        )
    )


def take_backup(tenant: dict[str, Any], kind: str = "daily") -> dict[str, Any]:
    result = backup_job(tenant, kind)
    assert result.success
    output: dict[str, Any] = result.output_for_node("backup_database")
    return output


def drill_job(tenant: dict[str, Any], backup_id: str) -> dg.ExecuteInProcessResult:
    config = {"tenant_id": tenant["id"], "backup_id": backup_id}
    return (
        defs()
        .get_job_def("restore_drill")
        .execute_in_process(
            run_config={"ops": {"run_restore_drill": {"config": config}}}, raise_on_error=False
        )
    )


def row(catalog: sa.Engine, table: sa.Table, **where: Any) -> dict[str, Any]:
    query = sa.select(table).filter_by(**where)
    with catalog.connect() as connection:
        return dict(connection.execute(query).one()._mapping)


def n8n_rows(url: sa.URL, names: TenantNames) -> dict[str, list[tuple[Any, ...]]]:
    """The tenant's workflows and (encrypted) credentials, as n8n stored them."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    schema = names.db_schema
    with engine.connect() as connection:
        rows = {
            "workflows": connection.execute(
                sa.text(
                    f'SELECT id, name, "versionId", nodes::text, connections::text '
                    f'FROM "{schema}".workflow_entity ORDER BY id'
                )
            ).all(),
            "credentials": connection.execute(
                sa.text(
                    f'SELECT id, name, type, data FROM "{schema}".credentials_entity ORDER BY id'
                )
            ).all(),
        }
    engine.dispose()
    return {name: [tuple(r) for r in found] for name, found in rows.items()}


def assert_no_sandbox_left(settings: Settings, runtime: Any, token: str) -> None:
    assert runtime.state(f"rp9-drill-{token}") is None
    assert runtime.client().networks.list(names=[f"rp9-drill-{token}"]) == []
    assert f"rp9_drill_{token}" not in sandbox_leftovers(PgServer.from_url(settings.database_url))


def test_a_backup_is_stored_exactly_as_recorded_and_restores_the_same_workflows_and_credentials(
    settings: Settings,
    vault: VaultResource,
    shared_tenant: dict[str, Any],
    catalog: sa.Engine,
    s3: S3Resource,
) -> None:
    n8n = TenantN8n(settings, vault, shared_tenant)
    add_credential(n8n)
    n8n.install_echo(f"kept-{uuid.uuid4().hex[:6]}")

    backup_id = take_backup(shared_tenant)["backup_id"]
    stored = row(catalog, backups, id=uuid.UUID(backup_id))
    assert (stored["status"], stored["kind"], stored["error"]) == ("ok", "daily", None)
    assert stored["expires_at"] - stored["started_at"] == dt.timedelta(days=7)
    head = s3.head(stored["key"])
    assert head is not None
    assert (head.size, head.server_side_encryption) == (stored["size_bytes"], "AES256")
    assert s3.read_sha256(stored["key"]) == (stored["size_bytes"], stored["sha256"])

    server = PgServer.from_url(settings.database_url)
    admin = sa.make_url(sqlalchemy_url(settings.database_url))
    source = n8n_rows(admin.set(database=n8n.names.db_name), n8n.names)
    assert len(source["credentials"]) >= 1
    assert stored["manifest"]["workflows"] == len(source["workflows"])
    assert stored["manifest"]["credentials"] == len(source["credentials"])

    sandbox = SandboxNames(uuid.uuid4().hex[:12])
    as_sandbox = create_sandbox(server, sandbox, "sandbox-password-1")
    try:
        restored = restore_stream(
            as_sandbox, sandbox.database, sandbox.role, s3.chunks(stored["key"])
        )
        assert restored.exit_code == 0, restored.stderr
        assert n8n_rows(admin.set(database=sandbox.database), n8n.names) == source
    finally:
        drop_sandbox(server, sandbox.database)


def test_s3_unreachable_fails_the_run_and_the_backup_never_becomes_ok(
    api: Api, shared_tenant: dict[str, Any], catalog: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    result = backup_job(shared_tenant)
    assert not result.success
    with catalog.connect() as connection:
        rows = connection.execute(sa.select(backups).where(backups.c.run_id == result.run_id)).all()
    assert [r.status for r in rows] == ["failed"]
    assert "EndpointConnectionError" in rows[0].error
    assert (rows[0].size_bytes, rows[0].sha256) == (None, None)

    # Nothing can drill it either.
    refused = api.post(
        f"/tenants/{shared_tenant['slug']}/restore-drills", {"backup_id": str(rows[0].id)}
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "backup_not_restorable")


def test_a_drill_through_the_api_passes_on_a_real_tenant_and_records_its_rto(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    runtime: Any,
    shared_tenant: dict[str, Any],
    catalog: sa.Engine,
) -> None:
    add_credential(TenantN8n(settings, vault, shared_tenant))
    backup_id = take_backup(shared_tenant, "weekly")["backup_id"]
    slug = shared_tenant["slug"]

    unknown = api.post(f"/tenants/{slug}/restore-drills", {"backup_id": str(uuid.uuid4())})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "backup_not_found")

    started = api.post(
        f"/tenants/{slug}/restore-drills",
        {"backup_id": backup_id},
        **{"Idempotency-Key": str(uuid.uuid4())},
    )
    assert started.status_code == 202, started.text
    assert api.wait_run(started.json()["run_id"])["status"] == "SUCCESS"

    drills = api.get(f"/tenants/{slug}/restore-drills").json()["restore_drills"]
    drill = drills[0]
    assert (drill["status"], drill["backup_id"], drill["error"]) == ("passed", backup_id, None)
    assert [c["name"] for c in drill["checks"]] == [
        "object_integrity",
        "restore",
        "database_counts",
        "sandbox_ready",
        "canary_execution",
        "workflows",
        "credentials_decrypt",
        "teardown",
    ]
    assert set(DRILL_CHECKS) == {c["name"] for c in drill["checks"]}
    assert all(c["ok"] for c in drill["checks"]), drill["checks"]
    decrypted = next(c for c in drill["checks"] if c["name"] == "credentials_decrypt")
    assert "credentials decrypted" in decrypted["detail"]
    assert 0 < drill["rto_seconds"] < 240
    assert_no_sandbox_left(settings, runtime, drill["sandbox"].removeprefix("rp9-drill-"))


def test_a_corrupted_object_fails_the_drill_with_a_clear_check(
    settings: Settings,
    runtime: Any,
    shared_tenant: dict[str, Any],
    catalog: sa.Engine,
    s3: S3Resource,
) -> None:
    backup_id = take_backup(shared_tenant)["backup_id"]
    key = row(catalog, backups, id=uuid.UUID(backup_id))["key"]
    data = bytearray(b"".join(s3.chunks(key)))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(data))  # same size, other bytes

    result = drill_job(shared_tenant, backup_id)
    assert not result.success
    failure = result.failure_data_for_node("run_restore_drill")
    assert failure is not None
    assert "failed: object_integrity" in str(failure.error)

    drill = row(catalog, restore_drills, run_id=result.run_id)
    assert drill["status"] == "failed"
    assert drill["rto_seconds"] is None
    checks = {c["name"]: c for c in drill["checks"]}
    assert not checks["object_integrity"]["ok"]
    assert "the object changed" in checks["object_integrity"]["detail"]
    assert checks["teardown"]["ok"]  # torn down all the same
    assert "sandbox_ready" not in checks  # no n8n was booted on untrusted bytes
    assert_no_sandbox_left(settings, runtime, drill["sandbox"].removeprefix("rp9-drill-"))


def test_an_on_demand_backup_through_the_api_of_a_dedicated_tenant_restores_in_a_drill(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    dedicated_tenant: dict[str, Any],
) -> None:
    add_credential(TenantN8n(settings, vault, dedicated_tenant))
    slug, key = dedicated_tenant["slug"], str(uuid.uuid4())
    first = api.post(f"/tenants/{slug}/backup", **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    replay = api.post(f"/tenants/{slug}/backup", **{"Idempotency-Key": key})
    assert replay.json()["run_id"] == first.json()["run_id"]
    run_id = first.json()["run_id"]
    assert api.wait_run(run_id)["status"] == "SUCCESS"

    latest = api.get(f"/tenants/{slug}/backups").json()["backups"][0]
    assert (latest["kind"], latest["status"], latest["run_id"]) == ("on_demand", "ok", run_id)
    assert latest["manifest"]["credentials"] >= 1

    result = drill_job(dedicated_tenant, latest["id"])
    assert result.success, result.all_node_events
    output = result.output_for_node("run_restore_drill")
    assert output["rto_seconds"] > 0
    assert output["checks"]["credentials_decrypt"].startswith("ok: ")


def test_a_purged_tenants_backups_expire_after_the_grace_period(
    api: Api, catalog: sa.Engine
) -> None:
    tenant = api.create_tenant(slug=unique_slug("purge"), name="Purge Co", plan="starter")
    backed_up = api.post(f"/tenants/{tenant['slug']}/backup")
    assert api.wait_run(backed_up.json()["run_id"])["status"] == "SUCCESS"
    deleted = api.request("DELETE", f"/tenants/{tenant['id']}?purge=true")
    assert api.wait_run(deleted.json()["run_id"])["status"] == "SUCCESS"

    purged = row(catalog, tenants, id=uuid.UUID(tenant["id"]))
    assert purged["status"] == "deleted"
    assert purged["purged_at"] is not None
    (listed,) = api.get(f"/tenants/{tenant['id']}/backups").json()["backups"]
    due = dt.datetime.fromisoformat(listed["expires_at"])
    assert due == purged["purged_at"] + PURGE_GRACE  # the catalog says when they go
