"""Nothing lost when the machine goes (#17), on the real stack: a tenant whose secrets are gone
is not "repaired" with new ones; the platform backs itself up and a DR drill rebuilds it from
S3 alone; a restart of every service keeps every tenant, secret and backup; a Postgres killed
mid-backup leaves no `ok` row.

These tests restart the stack's services, so they run last in the session (`restarts_stack`)."""

import hashlib
import json
import os
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import platform_backups
from rp9_pipelines.domain.platform_backups import unseal
from rp9_pipelines.domain.stack import LABEL_ROLE, LABEL_TENANT
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stack import PlatformBackupResources
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.platform_backups import (
    DagsterStorage,
    fail_interrupted,
    newest_set_index,
    take_platform_backup,
)
from rp9_pipelines.services.restore_drills import EXPORT_CREDENTIALS
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.restarts_stack]

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"


def stack(command: str) -> None:
    done = subprocess.run(
        ["bash", str(STACK), command], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"stack.sh {command}: {done.stdout[-1500:]}{done.stderr[-1500:]}"


class Recovered:
    """A tenant with something worth losing: an active webhook workflow, a credential (only
    readable with the tenant's encryption key) and a verified backup."""

    def __init__(self, api: Api, settings: Settings, vault: VaultResource, **fields: Any) -> None:
        self.tenant = api.create_tenant(**fields)
        self.id, self.slug = self.tenant["id"], self.tenant["slug"]
        self.names = TenantNames(self.slug, self.tenant["tier"])
        self.n8n = TenantN8n(settings, vault, self.tenant)
        self.path = f"dr-{uuid.uuid4().hex[:8]}"
        self.n8n.install_echo(self.path)
        credential = {
            "name": "partner API",
            "type": "httpHeaderAuth",
            "data": {"name": "X-Partner-Key", "value": f"pk-{uuid.uuid4().hex}"},
        }
        created = self.n8n.http.post("/api/v1/credentials", json=credential)
        assert created.status_code == 200, created.text
        backup = api.post(f"/tenants/{self.id}/backup")
        assert backup.status_code == 202, backup.text
        assert api.wait_run(backup.json()["run_id"])["status"] == "SUCCESS"
        wait_until(self.serves, timeout_s=30, what=f"{self.slug}'s webhook to answer")

    def serves(self) -> bool:
        answer = self.n8n.call(self.path, {"hello": self.slug})
        return answer.status_code == 200 and answer.json() == {
            "ok": True,
            "echo": {"hello": self.slug},
        }


@pytest.fixture(scope="module")
def tenants(api: Api, settings: Settings, vault: VaultResource) -> Iterator[list[Recovered]]:
    """Two shared tenants and a dedicated one, each serving, with a credential and a backup."""
    made = [
        Recovered(api, settings, vault, slug=unique_slug("dra"), name="DR A", plan="starter"),
        Recovered(api, settings, vault, slug=unique_slug("drb"), name="DR B", plan="starter"),
        Recovered(
            api,
            settings,
            vault,
            slug=unique_slug("drc"),
            name="DR C",
            plan="pro",
            tier="dedicated",
            workers=1,
        ),
    ]
    yield made
    for tenant in made:
        response = api.request("DELETE", f"/tenants/{tenant.id}?purge=true")
        assert response.status_code == 202, response.text
        assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


def main_container(runtime: DockerRuntimeResource, slug: str) -> Any:
    found = runtime.client().containers.list(
        filters={"label": [f"{LABEL_TENANT}={slug}", f"{LABEL_ROLE}=main"]}
    )
    assert len(found) == 1, f"{slug}: {len(found)} main containers"
    return found[0]


def decrypted_credentials(runtime: DockerRuntimeResource, slug: str) -> dict[str, int]:
    """n8n's own CLI in the tenant's main decrypts every credential (counts only)."""
    container = main_container(runtime, slug)
    code, out, err = runtime.exec(container.name, ["sh", "-c", EXPORT_CREDENTIALS])
    assert code == 0, err
    counts: dict[str, int] = json.loads(out)
    return counts


def started_containers(runtime: DockerRuntimeResource, slug: str) -> dict[str, tuple[str, str]]:
    listed = runtime.client().containers.list(filters={"label": f"{LABEL_TENANT}={slug}"})
    return {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in listed}


def files_digest(settings: Settings, slug: str) -> dict[str, str]:
    directory = Path(settings.secrets_dir) / slug
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_a_repair_without_the_tenants_secrets_changes_nothing_and_it_keeps_serving(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    tenants: list[Recovered],
) -> None:
    tenant = tenants[0]
    saved = vault.read(tenant.names.vault_path)
    assert saved
    assert saved["encryption_key"]
    files_before = files_digest(settings, tenant.slug)
    containers_before = {
        c.name: (c.id, c.attrs["State"]["StartedAt"])
        for c in runtime.client().containers.list(
            filters={"label": f"{LABEL_TENANT}={tenant.slug}"}
        )
    }
    vault.destroy(tenant.names.vault_path)
    try:
        repair = api.post(f"/tenants/{tenant.id}/provision")
        assert repair.status_code == 202, repair.text
        assert api.wait_run(repair.json()["run_id"])["status"] == "FAILURE"
        after = api.get(f"/tenants/{tenant.id}").json()
        assert after["status"] == "active"
        assert "SecretsMissing" in after["last_error"]
        assert "generated only when a tenant is created" in after["last_error"]
        assert vault.read(tenant.names.vault_path) is None, "the failed repair wrote secrets"
        assert files_digest(settings, tenant.slug) == files_before
        assert started_containers(runtime, tenant.slug) == containers_before
        assert tenant.serves()
    finally:
        vault.write(tenant.names.vault_path, saved)
    # With its secrets restored (from the snapshot, in a real recovery) the repair succeeds.
    again = api.post(f"/tenants/{tenant.id}/provision")
    assert api.wait_run(again.json()["run_id"])["status"] == "SUCCESS"
    assert tenant.serves()


def test_the_platform_backs_itself_up_and_a_dr_drill_rebuilds_it_from_s3_alone(
    api: Api, s3: S3Resource, tenants: list[Recovered]
) -> None:
    started = api.post("/platform/backups", {"kind": "on_demand"})
    assert started.status_code == 202, started.text
    assert api.wait_run(started.json()["run_id"])["status"] == "SUCCESS"
    parts = api.get("/platform/backups?limit=3").json()["platform_backups"]
    assert {p["component"] for p in parts} == {"catalog", "dagster", "secrets"}
    assert {p["status"] for p in parts} == {"ok"}
    assert len({p["set_id"] for p in parts}) == 1
    sealed = b"".join(s3.chunks(next(p["key"] for p in parts if p["component"] == "secrets")))
    snapshot = unseal(sealed, os.environ["PLATFORM_BACKUP_KEY"])
    for tenant in tenants:
        key = snapshot[tenant.names.vault_path]["encryption_key"]
        assert key.encode() not in sealed, "the snapshot holds a readable encryption key"

    drill = api.post("/platform/dr-drills", {"tenants": [t.slug for t in tenants]})
    assert drill.status_code == 202, drill.text
    drill_id = drill.json()["drill_id"]
    run = api.wait_run(drill.json()["run_id"], timeout_s=900)
    record = api.get(f"/platform/dr-drills/{drill_id}").json()
    assert run["status"] == "SUCCESS", json.dumps(record, indent=1)[-3000:]
    assert record["status"] == "passed"
    assert record["set_id"] == parts[0]["set_id"]
    assert {t["slug"] for t in record["tenants"]} == {t.slug for t in tenants}
    assert {t["tier"] for t in record["tenants"]} == {"shared", "dedicated"}
    for result in record["tenants"]:
        assert result["passed"], result
        assert 0 < result["rto_seconds"] <= record["rto_seconds"]
        assert 0 <= result["rpo_seconds"] <= record["rpo_seconds"]
        names = {c["name"] for c in result["checks"] if c["ok"]}
        assert {"canary_execution", "credentials_decrypt", "teardown"} <= names
    assert record["rto_seconds"] < 15 * 60
    per_tenant = ", ".join(f"{t['slug']} {t['rto_seconds']:.0f} s" for t in record["tenants"])
    rto, rpo = record["rto_seconds"], record["rpo_seconds"]
    print(f"\nplatform DR drill: RTO {rto:.0f} s, RPO {rpo:.0f} s; per tenant: {per_tenant}")
    token = uuid.UUID(drill_id).hex
    prefixes = (f"rp9-dr-{token[:10]}", f"rp9-drill-{token[:8]}")
    leftovers = [name for name in container_names() if name.startswith(prefixes)]
    assert leftovers == []


def container_names() -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


def test_a_restart_of_every_service_keeps_every_tenant_secret_and_backup(
    api: Api,
    settings: Settings,
    runtime: DockerRuntimeResource,
    s3: S3Resource,
    tenants: list[Recovered],
) -> None:
    index = newest_set_index(s3)
    assert index is not None
    stack("down")
    stack("up")
    for tenant in tenants:
        wait_until(tenant.serves, timeout_s=180, what=f"{tenant.slug} to serve after the restart")
        listed = tenant.n8n.http.get("/api/v1/workflows")
        assert listed.status_code == 200, f"{tenant.slug}: its API key: {listed.text}"
        counts = decrypted_credentials(runtime, tenant.slug)
        assert counts["listed"] >= 1, counts
        assert counts["decrypted"] == counts["listed"], counts
        backups = api.get(f"/tenants/{tenant.id}/backups").json()["backups"]
        ok = [b for b in backups if b["status"] == "ok"]
        assert ok
        assert all(s3.head(b["key"], b["bucket"]) for b in ok)
    # Traefik's fallback router (published by the API, which kept running) answers for
    # addresses no container serves: rp9's JSON, never Traefik's bare 404.
    edge = httpx.Client(base_url=settings.traefik_url, timeout=30)
    unknown = f"nobody-{uuid.uuid4().hex[:8]}.{settings.base_domain}"

    def fallback_answers() -> bool:
        answer = edge.get("/", headers={"Host": unknown})
        return answer.status_code == 404 and answer.json()["error"]["code"] == "tenant_not_found"

    wait_until(fallback_answers, timeout_s=30, what="the fallback router after the restart")
    suspended = tenants[1]
    assert (
        api.wait_run(api.post(f"/tenants/{suspended.id}/suspend").json()["run_id"])["status"]
        == "SUCCESS"
    )
    answer = edge.get("/", headers={"Host": suspended.n8n.host})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "tenant_suspended"
    assert answer.headers["Retry-After"]
    assert (
        api.wait_run(api.post(f"/tenants/{suspended.id}/resume").json()["run_id"])["status"]
        == "SUCCESS"
    )
    # Restorable: a restore drill of one of them passes; every one is repaired.
    drill = api.post(f"/tenants/{tenants[2].id}/restore-drills", {})
    assert drill.status_code == 202, drill.text
    assert api.wait_run(drill.json()["run_id"], timeout_s=600)["status"] == "SUCCESS"
    for tenant in tenants:
        repair = api.post(f"/tenants/{tenant.id}/provision")
        assert repair.status_code == 202, repair.text
        assert api.wait_run(repair.json()["run_id"])["status"] == "SUCCESS", tenant.slug
        assert tenant.serves()
    assert newest_set_index(s3) == index, "the platform's backups did not survive the restart"


def test_killing_postgres_during_a_platform_backup_leaves_no_ok_row_and_the_next_succeeds(
    backup_resources: PlatformBackupResources, tmp_path: Path, settings: Settings
) -> None:
    # A Dagster home with a large database, so the backup is still running when Postgres dies.
    home = tmp_path / "dagster_home"
    (home / "history").mkdir(parents=True)
    with sqlite3.connect(home / "history" / "runs.db") as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, body BLOB)")
        for _ in range(60):
            db.execute("INSERT INTO runs (body) VALUES (randomblob(4000000))")
    storage = DagsterStorage("sqlite", str(home))
    engine = sa.create_engine(sqlalchemy_url(settings.database_url))
    failure: list[BaseException] = []

    def backup() -> None:
        try:
            take_platform_backup(backup_resources, storage, "on_demand", "killed-run", print)
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=backup)
    worker.start()

    def dagster_part_running() -> bool:
        with engine.begin() as connection:
            rows = connection.execute(
                sa.select(platform_backups.c.component).where(
                    platform_backups.c.run_id == "killed-run",
                    platform_backups.c.status == "running",
                )
            ).scalars()
            return "dagster" in set(rows)

    wait_until(dagster_part_running, timeout_s=60, what="the Dagster part to be running")
    kill_postgres()
    worker.join(timeout=120)
    assert failure, "the backup did not notice its catalog was gone"
    stack("up")
    engine.dispose()
    with engine.begin() as connection:
        rows = connection.execute(
            sa.select(platform_backups).where(platform_backups.c.run_id == "killed-run")
        ).all()
    dagster_rows = [r for r in rows if r.component == "dagster"]
    assert dagster_rows
    assert all(r.status != "ok" for r in dagster_rows)
    assert not any(r.component == "secrets" for r in rows), "it went on after the catalog died"

    assert fail_interrupted(backup_resources, lambda run_id: False, print) >= 1
    with engine.begin() as connection:
        statuses = (
            connection.execute(
                sa.select(platform_backups.c.status).where(
                    platform_backups.c.run_id == "killed-run"
                )
            )
            .scalars()
            .all()
        )
    assert "running" not in statuses
    small = tmp_path / "small_home"
    small.mkdir()
    outcome = take_platform_backup(
        backup_resources, DagsterStorage("sqlite", str(small)), "on_demand", "next-run", print
    )
    newest = newest_set_index(backup_resources.s3)
    assert newest is not None
    assert newest["set_id"] == str(outcome.set_id)
    engine.dispose()


def kill_postgres() -> None:
    """SIGKILL this checkout's postmaster (its data directory is keyed by the checkout's path,
    as `stack.sh` keys it), as a crashed machine would."""
    key = hashlib.md5(str(ROOT).encode()).hexdigest()[:8]  # noqa: S324 (a name, not security)
    found = subprocess.run(
        ["pgrep", "-f", "-o", f"postgres -D /var/lib/rp9/postgres-{key}/data"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert found, "the platform's postmaster is not running"
    subprocess.run(["kill", "-9", found[0]], check=True)
