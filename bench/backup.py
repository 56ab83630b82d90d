"""`make bench-backup`: backup throughput to S3 against a plain `pg_dump -Fc` to a local file,
for a dedicated tenant holding at least 200 MB of execution data, and the restore drill's RTO
for that tenant.

The tenant is provisioned for real (in-process Dagster runs, real n8n), then filled with
synthetic executions by SQL; the backup is the very code the `backup_tenant` job runs (dump of
an exported snapshot, multipart upload, read-back verification) and the drill is the
`restore_drill` job. Needs the local stack; removes its tenant and objects afterwards.
"""

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.definitions import defs
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.postgres_dump import PgServer
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.backups import BackupOutcome, take_backup
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.tenants.conftest import TenantN8n

MB = 1_000_000
BATCH = 20_000
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# An n8n run's data: JSON items with repeated keys and per-item values (ids, emails, amounts).
FILL = """
WITH new AS (
    INSERT INTO execution_entity
        (finished, mode, status, "workflowId", "createdAt", "startedAt", "stoppedAt")
    SELECT true, 'webhook', 'success', :workflow,
           now() - g * interval '1 second', now() - g * interval '1 second',
           now() - g * interval '1 second' + interval '80 milliseconds'
    FROM generate_series(1, :rows) g
    RETURNING id
)
INSERT INTO execution_data ("executionId", "workflowData", data)
SELECT new.id, '{"nodes":[],"connections":{}}'::json,
       '[{"startData":"1","resultData":"2"},{"runData":"3"},[' || (
           SELECT string_agg(format(
               '{"json":{"id":"%s","email":"user%s@example.com","status":"processed",'
               '"amount":%s,"ref":"%s"}}', md5(random()::text), new.id * 10 + i,
               (random() * 100000)::int, md5(random()::text)), ',')
           FROM generate_series(1, 9) i
       ) || ']]'
FROM new
"""


def provision(settings: Settings, slug: str) -> Tenant:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url))
    with engine.begin() as connection:
        tenant_id = catalog.insert_tenant(
            connection,
            {
                "slug": slug,
                "name": "Bench backup",
                "plan": "pro",
                "tier": "dedicated",
                "workers": 1,
                "n8n_version": settings.n8n_version,
            },
        )
        catalog.set_quota(
            connection, tenant_id, "plan", catalog.plan_limits(connection, "pro") or {}
        )
    provision = launches.tenant_job("provision_tenant", str(tenant_id), slug, "bench")
    result = (
        defs()
        .get_job_def("provision_tenant")
        .execute_in_process(
            run_config=provision.run_config | QUIET,
            tags=provision.tags,
        )
    )
    assert result.success
    with engine.begin() as connection:
        tenant = catalog.get_tenant(connection, tenant_id)
    engine.dispose()
    assert tenant is not None
    return tenant


def execution_bytes(connection: sa.Connection) -> int:
    query = (
        "SELECT pg_total_relation_size('execution_entity')"
        " + pg_total_relation_size('execution_data')"
    )
    return int(connection.execute(sa.text(query)).scalar_one())


def fill(settings: Settings, tenant: Tenant, workflow_id: str, megabytes: int) -> int:
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=tenant.names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        while execution_bytes(connection) < megabytes * MB:
            connection.execute(sa.text(FILL), {"workflow": workflow_id, "rows": BATCH})
            connection.commit()
        connection.execute(sa.text("ANALYZE"))
        size = execution_bytes(connection)
    engine.dispose()
    return size


def local_dump(server: PgServer, database: str, target: Path) -> tuple[float, int]:
    started = time.monotonic()
    subprocess.run(
        [server.tool("pg_dump"), "--format=custom", "--no-password", f"--file={target}"],
        env=server.env(database),
        check=True,
    )
    return time.monotonic() - started, target.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="execution data to create, in MB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    vault = VaultResource(
        vault_addr=settings.vault_addr, vault_token=settings.vault_token.get_secret_value()
    )
    catalog_db = CatalogResource(database_url=settings.database_url)
    s3 = S3Resource(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        bucket=settings.s3_bucket,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
    )
    server = PgServer.from_url(settings.database_url)
    slug = f"bench-bk-{uuid.uuid4().hex[:6]}"
    outcomes: list[BackupOutcome] = []
    tenant: Tenant | None = None
    try:
        print(f"provisioning dedicated tenant {slug} ...", flush=True)
        tenant = provision(settings, slug)
        n8n = TenantN8n(settings, vault, {"slug": slug, "tier": "dedicated"})
        workflow_id = n8n.install_echo("bench")
        credential = n8n.http.post(
            "/api/v1/credentials",
            json={
                "name": "bench",
                "type": "httpHeaderAuth",
                "data": {"name": "X-Token", "value": uuid.uuid4().hex},
            },
        )
        assert credential.status_code == 200, credential.text
        started = time.monotonic()
        size = fill(settings, tenant, workflow_id, args.mb)
        print(f"execution data: {size / MB:.0f} MB ({time.monotonic() - started:.0f} s to insert)")

        local_s, s3_s, s3_total_s = [], [], []
        with tempfile.TemporaryDirectory() as scratch:
            for round_ in range(1, args.rounds + 1):
                seconds, local_size = local_dump(server, tenant.names.db_name, Path(scratch) / "x")
                local_s.append(seconds)
                outcome = take_backup(
                    catalog_db, settings.database_url, s3, tenant, "on_demand", None, lambda _: None
                )
                outcomes.append(outcome)
                s3_s.append(outcome.dump_seconds)
                s3_total_s.append(outcome.dump_seconds + outcome.verify_seconds)
                print(
                    f"  round {round_}: pg_dump -Fc → file {seconds:.1f} s ({local_size / MB:.0f}"
                    f" MB); → S3 {outcome.dump_seconds:.1f} s ({outcome.size / MB:.0f} MB, "
                    f"{outcome.parts} parts) + verify {outcome.verify_seconds:.1f} s",
                    flush=True,
                )

        print("restore drill of the last backup ...", flush=True)
        drill = (
            defs()
            .get_job_def("restore_drill")
            .execute_in_process(
                run_config={
                    "ops": {
                        "run_restore_drill": {
                            "config": {
                                "tenant_id": str(tenant.id),
                                "backup_id": str(outcomes[-1].backup_id),
                            }
                        }
                    }
                }
                | QUIET,
                raise_on_error=False,
            )
        )
        output = drill.output_for_node("run_restore_drill") if drill.success else None

        local_m, s3_m, total_m = (statistics.median(x) for x in (local_s, s3_s, s3_total_s))
        dump_mb = statistics.median(o.size for o in outcomes) / MB
        print()
        print(f"tenant {slug}: {size / MB:.0f} MB of execution data, dump {dump_mb:.0f} MB")
        print(f"{'median of ' + str(args.rounds):28} {'seconds':>8} {'DB MB/s':>8}")
        print(f"{'pg_dump -Fc → local file':28} {local_m:8.1f} {size / MB / local_m:8.1f}")
        print(f"{'backup → S3 (stored)':28} {s3_m:8.1f} {size / MB / s3_m:8.1f}")
        print(f"{'backup → S3 (+ read-back)':28} {total_m:8.1f} {size / MB / total_m:8.1f}")
        print(
            f"throughput ratio S3 / local file: {local_m / s3_m:.2f} stored, "
            f"{local_m / total_m:.2f} verified (goal: at least 0.8)"
        )
        if output:
            print(f"restore drill: passed, RTO {output['rto_seconds']:.1f} s")
            for name, detail in output["checks"].items():
                print(f"  {name}: {detail}")
        else:
            failure = drill.failure_data_for_node("run_restore_drill")
            print(f"restore drill: FAILED: {failure.error if failure else drill}")
            raise SystemExit(1)
    finally:
        for outcome in outcomes:
            s3.delete(outcome.key)
            with catalog_db.begin() as connection:
                backup_catalog.mark_expired(connection, outcome.backup_id)
        if tenant is not None:
            delete = launches.tenant_job("delete_tenant", str(tenant.id), slug, "bench", purge=True)
            defs().get_job_def("delete_tenant").execute_in_process(
                run_config=delete.run_config | QUIET, tags=delete.tags
            )


if __name__ == "__main__":
    main()
