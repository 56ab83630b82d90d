"""A restore drill: restore a backup into a sandbox database, boot n8n on it with the tenant's
encryption key, check it through n8n itself, and tear everything down, whatever happened; and
what the API asks of drills: list a tenant's, and launch one after refusing what it would fail on.

The RTO is measured from the first byte read from storage to the first execution the restored
n8n served: restore, boot and a working instance, as a tenant would need after a loss.
"""

import datetime as dt
import functools
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import restore_drills as catalog
from rp9_pipelines.catalog import upgrades as upgrade_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.backups import BackupRecord, Manifest
from rp9_pipelines.domain.restore_drills import (
    SANDBOX_LABEL,
    SANDBOX_PREFIX,
    SANDBOX_READY_TIMEOUT_S,
    Check,
    SandboxNames,
    canary_workflow,
    check_canary,
    check_counts,
    check_credentials,
    check_object,
    check_workflows,
    choose_drill_backup,
    drill_passed,
    sandbox_container,
)
from rp9_pipelines.domain.upgrades import boot_failure
from rp9_pipelines.resources.postgres_dump import (
    PgServer,
    create_sandbox,
    deactivate_workflows,
    drop_sandbox,
    restore_stream,
    restored_counts,
    sandbox_leftovers,
)
from rp9_pipelines.resources.stack import DrillResources
from rp9_pipelines.services.backups import describe
from rp9_pipelines.services.tenants import Conflict, Launcher

Log = Callable[[str], None]
# A drill takes minutes; one still `running` after this lost its run.
STALE_DRILL = dt.timedelta(hours=2)
# How long a canary asks again an n8n that answers 503 (its database ping late, not an error).
UNAVAILABLE_RETRY_S = 30.0

# n8n's own CLI in the sandbox reads what it restored. The decrypted credentials never leave
# the container: only their count does, and the file goes when the command ends.
EXPORT_WORKFLOWS = r"""
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
if ! n8n export:workflow --all --output="$d/w.json" >"$d/log" 2>&1; then
  if grep -q 'No workflows found' "$d/log"; then echo '[]'; exit 0; fi
  tail -c 1500 "$d/log" >&2; exit 1
fi
node -e 'const w=require(process.argv[1]);
process.stdout.write(JSON.stringify(w.map(x=>[String(x.id),x.versionId??null])))' "$d/w.json"
"""
EXPORT_CREDENTIALS = r"""
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
if ! n8n export:credentials --all --decrypted --output="$d/c.json" >"$d/log" 2>&1; then
  if grep -q 'No credentials found' "$d/log"; then echo '{"listed":0,"decrypted":0}'; exit 0; fi
  tail -c 1500 "$d/log" >&2; exit 1
fi
node -e 'const c=require(process.argv[1]);
const ok=c.filter(x=>x.data!==null&&typeof x.data==="object").length;
process.stdout.write(JSON.stringify({listed:c.length,decrypted:ok}))' "$d/c.json"
"""


@dataclass(frozen=True)
class DrillOutcome:
    drill_id: uuid.UUID
    backup_id: uuid.UUID
    passed: bool
    checks: tuple[Check, ...]
    rto_seconds: float | None
    error: str | None

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def run_drill(
    r: DrillResources, tenant: Tenant, backup: dict[str, Any], drill_id: uuid.UUID, log: Log
) -> DrillOutcome:
    """Every check lands in the outcome; the teardown runs even when a step raises."""
    server = PgServer.from_url(r.admin_url)
    sandbox = SandboxNames.for_drill(drill_id)
    checks: list[Check] = []
    rto: float | None = None
    error: str | None = None
    try:
        rto = restore_and_check(r, server, tenant, backup, sandbox, checks, log)
    except Exception as failure:
        error = describe(failure)
        log(f"drill stopped: {error}")
    finally:
        checks.append(teardown(r, server, sandbox))
        log(f"teardown: {checks[-1].detail}")
    passed = error is None and drill_passed(checks)
    return DrillOutcome(
        drill_id, backup["id"], passed, tuple(checks), rto if passed else None, error
    )


@dataclass(frozen=True)
class Elsewhere:
    """A drill into another environment than the live one (a platform DR drill's scratch
    environment): the secrets come from its store, the sandbox joins its network and reaches
    its Postgres at `db_host:db_port`."""

    vault: Any
    network: str
    db_host: str
    db_port: int


def restore_and_check(
    r: DrillResources,
    server: PgServer,
    tenant: Tenant,
    backup: dict[str, Any],
    sandbox: SandboxNames,
    checks: list[Check],
    log: Log,
    elsewhere: Elsewhere | None = None,
    image: str | None = None,
    cpu_shares: int | None = None,
) -> float | None:
    """Restore `backup` into a sandbox database on `server`, boot n8n on it (the tenant's
    version, or `image`: an upgrade's rehearsal) with the tenant's key and check it through
    n8n (at `cpu_shares`, a weight against the serving tenants: default 1024); returns the
    seconds from the first byte read to the canary execution (None when a check failed), every
    check appended to `checks`."""
    manifest = Manifest.from_json(backup["manifest"])
    bucket, key, names = backup["bucket"], backup["key"], tenant.names
    started = time.monotonic()
    if r.s3.head(key, bucket) is None:
        checks.append(Check("object_integrity", False, f"s3://{bucket}/{key} is missing"))
        return None

    password = secrets.token_urlsafe(32)
    as_sandbox = create_sandbox(server, sandbox, password)
    restored = restore_stream(as_sandbox, sandbox.database, sandbox.role, r.s3.chunks(key, bucket))
    checks.append(
        check_object(backup["size_bytes"], backup["sha256"], restored.size, restored.sha256)
    )
    restore_ok = restored.exit_code == 0
    checks.append(
        Check(
            "restore",
            restore_ok,
            f"pg_restore into {sandbox.database} in {time.monotonic() - started:.1f} s"
            if restore_ok
            else f"pg_restore exited {restored.exit_code}: {restored.stderr[-600:]}",
        )
    )
    log(f"{checks[-2].detail}; {checks[-1].detail}")
    if not (checks[-1].ok and checks[-2].ok):
        return None

    unpublished = deactivate_workflows(as_sandbox, sandbox.database, names)
    counts = restored_counts(as_sandbox, sandbox.database, names)
    checks.append(check_counts(manifest, counts.workflows, counts.credentials, counts.executions))
    log(f"{checks[-1].detail}; {unpublished} workflow(s) unpublished in the sandbox")

    vault = elsewhere.vault if elsewhere else r.vault
    tenant_secrets = vault.read(names.vault_path) or {}
    if not tenant_secrets.get("encryption_key"):
        raise LookupError(f"no encryption key for {tenant.slug} in Vault")
    r.secret_files.write(
        sandbox.secrets_key,
        {"db_password": password, "encryption_key": tenant_secrets["encryption_key"]},
    )
    config = r.platform.stack_config()
    if elsewhere is None:
        r.docker_runtime.ensure_network(sandbox.network, tenant.slug)
        spec = sandbox_container(names, sandbox, config)
    else:
        spec = sandbox_container(
            names,
            sandbox,
            config,
            network=elsewhere.network,
            db_host=elsewhere.db_host,
            db_port=elsewhere.db_port,
        )
    image = image or r.platform.image_for(tenant.n8n_version)
    r.docker_runtime.create(
        spec, image, r.secret_files.path(sandbox.secrets_key), cpu_shares=cpu_shares
    )
    checks.append(_wait_ready(r, sandbox, max(r.platform.ready_timeout_s, SANDBOX_READY_TIMEOUT_S)))
    log(checks[-1].detail)
    if not checks[-1].ok:
        return None

    state = r.docker_runtime.state(sandbox.container)
    if state is None or not state.url:
        raise RuntimeError(f"{sandbox.container} has no address on {sandbox.network}")
    api_key = tenant_secrets.get("n8n_api_key", "")
    canary, canary_id = _canary(state.url, api_key, sandbox)
    checks.append(canary)
    rto = time.monotonic() - started if canary.ok else None
    log(f"{canary.detail}" + (f"; RTO {rto:.1f} s" if rto is not None else ""))

    try:
        versions = [v for v in _workflow_versions(r, sandbox) if v[0] != canary_id]
        checks.append(check_workflows(manifest, versions))
    except CliError as error:
        checks.append(Check("workflows", False, f"n8n could not export the workflows: {error}"))
    try:
        counts_seen = _credential_counts(r, sandbox)
        checks.append(check_credentials(manifest, counts_seen["listed"], counts_seen["decrypted"]))
    except CliError as error:
        detail = f"n8n could not decrypt the credentials: {error}"
        checks.append(Check("credentials_decrypt", False, detail))
    log(f"{checks[-2].detail}; {checks[-1].detail}")
    return rto


def _wait_ready(r: DrillResources, sandbox: SandboxNames, timeout_s: float) -> Check:
    """Docker's health check is n8n's /healthz/readiness (database connected and migrated)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        state = r.docker_runtime.state(sandbox.container)
        if state is None or state.status in {"exited", "dead"} or state.restarts:
            logs = r.docker_runtime.logs(sandbox.container, tail=300, timestamps=True)
            why = boot_failure(logs.splitlines())
            return Check("sandbox_ready", False, f"sandbox n8n stopped: {why}")
        if state.health == "healthy":
            return Check(
                "sandbox_ready", True, f"sandbox n8n ready in {time.monotonic() - started:.1f} s"
            )
        time.sleep(0.5)
    # Still booting (a long migration on busy cores) or stuck: its last line says which.
    lines = r.docker_runtime.logs(sandbox.container, tail=3).strip().splitlines()
    last = lines[-1].strip()[:300] if lines else "nothing"
    detail = f"sandbox n8n not ready after {timeout_s:.0f} s; its last log line: {last}"
    return Check("sandbox_ready", False, detail)


def _canary(base_url: str, api_key: str, sandbox: SandboxNames) -> tuple[Check, str | None]:
    """Through the restored instance's public API, with the tenant's own API key (restored with
    the data, valid only under the tenant's key): install a webhook workflow, then call it."""
    return run_canary(base_url, api_key, f"rp9-drill-{sandbox.token}")


def run_canary(
    base_url: str, api_key: str, path: str, *, remove: bool = False, expect_other: bool = False
) -> tuple[Check, str | None]:
    """A webhook workflow at `path` installed and activated through the n8n public API at
    `base_url` with `api_key`, then called with a nonce it must answer; the check and the
    workflow's id (deleted again with `remove`). `expect_other` expects another nonce: a drill
    of what a failing canary does."""
    nonce = secrets.token_hex(8)
    with httpx.Client(base_url=base_url, headers={"X-N8N-API-KEY": api_key}, timeout=30) as http:
        post = functools.partial(_post_once_available, http)
        created = post("/api/v1/workflows", json=canary_workflow(path))
        if created.status_code != 200:
            detail = f"public API refused the canary workflow: HTTP {created.status_code}"
            return Check("canary_execution", False, detail), None
        workflow_id = str(created.json()["id"])
        try:
            activated = post(f"/api/v1/workflows/{workflow_id}/activate")
            if activated.status_code != 200:
                detail = f"canary activation refused: HTTP {activated.status_code}"
                return Check("canary_execution", False, detail), workflow_id
            deadline = time.monotonic() + 15
            while True:
                answer = post(f"/webhook/{path}", json={"nonce": nonce})
                if answer.status_code != 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # the webhook registers as the activation settles
        finally:
            if remove:
                http.delete(f"/api/v1/workflows/{workflow_id}")
    try:
        body: Any = answer.json()
    except ValueError:
        body = answer.text
    expected = "not-" + nonce if expect_other else nonce
    return check_canary(expected, answer.status_code, body), workflow_id


def _post_once_available(http: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
    """POST, asked again for up to `UNAVAILABLE_RETRY_S` while n8n itself answers 503 (its
    database did not answer its last ping in time: a sandbox booted in the background on busy
    cores), which it does before handling the request. An edge's 503 (rp9's `error` body: the
    main may have been slow, not idle) is an answer: a retry could run the request twice."""
    deadline = time.monotonic() + UNAVAILABLE_RETRY_S
    while True:
        answer = http.post(url, **kwargs)
        if not _n8n_unavailable(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(1)


def _n8n_unavailable(answer: httpx.Response) -> bool:
    """n8n's own 503 (`{"code": ..., "message": ...}`), not the edge's (`{"error": ...}`)."""
    if answer.status_code != 503:
        return False
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "message" in body and "error" not in body


class CliError(RuntimeError):
    """n8n's CLI in the sandbox failed; the message ends with its output."""


def _run_cli(r: DrillResources, sandbox: SandboxNames, script: str) -> Any:
    code, out, err = r.docker_runtime.exec(sandbox.container, ["sh", "-c", script])
    if code != 0:
        raise CliError(f"exit {code}: {err.strip()[-800:]}")
    return json.loads(out)


def _workflow_versions(r: DrillResources, sandbox: SandboxNames) -> list[tuple[str, str | None]]:
    rows = _run_cli(r, sandbox, EXPORT_WORKFLOWS)
    return [(str(workflow_id), version) for workflow_id, version in rows]


def _credential_counts(r: DrillResources, sandbox: SandboxNames) -> dict[str, int]:
    counts = _run_cli(r, sandbox, EXPORT_CREDENTIALS)
    return {"listed": int(counts["listed"]), "decrypted": int(counts["decrypted"])}


def teardown(
    r: DrillResources, server: PgServer, sandbox: SandboxNames, *, own_network: bool = True
) -> Check:
    """Remove the container, its network, the database and role, and the secret files; then
    look again, so a leftover fails the drill instead of lingering unseen."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("container", lambda: r.docker_runtime.remove(sandbox.container, graceful=False)),
        ("database", lambda: drop_sandbox(server, sandbox.database)),
        ("secret files", lambda: r.secret_files.remove(sandbox.secrets_key)),
    ]
    if own_network:
        steps.insert(1, ("network", lambda: r.docker_runtime.remove_network(sandbox.network)))
    problems = []
    for what, step in steps:
        try:
            step()
        except Exception as error:
            problems.append(f"{what}: {describe(error)}")
    if r.docker_runtime.state(sandbox.container) is not None:
        problems.append(f"{sandbox.container} still exists")
    if sandbox.database in sandbox_leftovers(server):
        problems.append(f"{sandbox.database} still exists")
    if r.secret_files.path(sandbox.secrets_key).exists():
        problems.append("secret files still exist")
    detail = "; ".join(problems) or "container, network, database, role and secret files removed"
    return Check("teardown", not problems, detail)


def sweep_sandboxes(r: DrillResources, now: dt.datetime, log: Log) -> list[str]:
    """Remove what drills whose runs died left behind (a killed process cannot tear down), and
    fail their rows. Sandboxes of drills still running are left alone."""
    with r.catalog.begin() as connection:
        running = catalog.running_drills(connection)
        stale = [d["id"] for d in running if d["started_at"] < now - STALE_DRILL]
        catalog.fail_interrupted_drills(connection, stale)
        rehearsing = [u["id"] for u in upgrade_catalog.running_upgrades(connection)]
    live = {SandboxNames.for_drill(d["id"]).token for d in running if d["id"] not in stale}
    # A running upgrade's rehearsal is its run's to tear down.
    live |= {SandboxNames.for_rehearsal(upgrade_id).token for upgrade_id in rehearsing}
    server = PgServer.from_url(r.admin_url)
    client = r.docker_runtime.client()
    # Sandbox containers on every engine of the runtime, by the name their label gives (a
    # Swarm task's container is named after its task, its label after the runtime's name).
    found = {
        str(c.labels[SANDBOX_LABEL]).removeprefix("rp9-drill-")
        for engine in r.docker_runtime.engines()
        for c in engine.containers.list(all=True, filters={"label": SANDBOX_LABEL})
    }
    found |= {
        n.name.removeprefix("rp9-drill-")
        for n in client.networks.list(filters={"name": "rp9-drill-"})
        if n.name.startswith("rp9-drill-")
    }
    found |= {name.removeprefix(SANDBOX_PREFIX) for name in sandbox_leftovers(server)}
    found |= {p.name.removeprefix("drill_") for p in Path(r.secret_files.root).glob("drill_*")}
    swept = []
    for token in sorted(found - live):
        check = teardown(r, server, SandboxNames(token))
        log(f"swept sandbox {token}: {check.detail}")
        swept.append(token)
    return swept


# What the API asks of drills.

# The tenants a drill may restore: their data and their encryption key are there.
DRILL_STATES = frozenset({"active", "suspended"})


class Drills(Protocol):
    """The catalog as the drill routes read it (`CatalogDrills`)."""

    def backups(self, tenant_id: uuid.UUID) -> list[BackupRecord]:
        """Every backup of the tenant, expired ones included."""

    def latest(self, tenant_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        """The tenant's drills, newest first."""


@dataclass(frozen=True)
class CatalogDrills:
    engine: sa.Engine

    def backups(self, tenant_id: uuid.UUID) -> list[BackupRecord]:
        with self.engine.connect() as connection:
            return backup_catalog.backup_records(connection, tenant_id, include_expired=True)

    def latest(self, tenant_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return catalog.list_drills(connection, tenant_id, limit)


def start_drill(
    drills: Drills, launch: Launcher, tenant: Tenant, backup_id: uuid.UUID | None
) -> str:
    """Launch a drill of the given backup, or of a random recent `ok` one; the run's id. What
    the run would fail on is refused now: a tenant in another state (`Conflict`), a backup that
    is not the tenant's or not restorable, or no recent one (`NoRestorableBackup`)."""
    if tenant.status not in DRILL_STATES:
        raise Conflict("invalid_state", f"cannot drill a tenant that is {tenant.status}")
    now = dt.datetime.now(dt.UTC)
    choose_drill_backup(drills.backups(tenant.id), tenant.id, now, random.SystemRandom(), backup_id)
    requested = None if backup_id is None else str(backup_id)
    return launch(launches.restore_drill(str(tenant.id), tenant.slug, launches.API, requested))
