"""Restore drills as plain data: which backup a drill restores, what the sandbox runs, and what
a drill checks."""

import datetime as dt
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rp9_pipelines.domain.backups import BackupRecord, Manifest, recency, workflow_digest
from rp9_pipelines.domain.stack import (
    DATABASE_ENV,
    SECRET_FILES,
    SECRETS_MOUNT,
    ContainerSpec,
    StackConfig,
    hardening_env,
)
from rp9_pipelines.domain.tenants import TenantNames

# A drill restores a backup taken within this window, unless it is given one.
DRILL_WINDOW = dt.timedelta(days=30)


class NoRestorableBackup(LookupError):
    """The drill has nothing it may restore (a stable code for the API)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def choose_drill_backup(
    backups: Iterable[BackupRecord],
    tenant_id: uuid.UUID,
    now: dt.datetime,
    rng: random.Random,
    requested: uuid.UUID | None = None,
) -> BackupRecord:
    """The given backup (if it is the tenant's and `ok`), or a random `ok` one finished within
    the last 30 days: over many quarters, every kind and age of backup gets restored."""
    mine = [b for b in backups if b.tenant_id == tenant_id]
    if requested is not None:
        chosen = next((b for b in mine if b.id == requested), None)
        if chosen is None:
            raise NoRestorableBackup("backup_not_found", f"no backup {requested} of this tenant")
        if chosen.status != "ok":
            raise NoRestorableBackup(
                "backup_not_restorable", f"backup {requested} is {chosen.status}, not ok"
            )
        return chosen
    recent = sorted(
        (
            b
            for b in mine
            if b.status == "ok"
            and b.finished_at is not None
            and b.finished_at >= now - DRILL_WINDOW
        ),
        key=recency,
    )
    if not recent:
        raise NoRestorableBackup(
            "no_recent_backup", f"no ok backup finished in the last {DRILL_WINDOW.days} days"
        )
    return rng.choice(recent)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


# Every drill must run all of these, and all must pass.
DRILL_CHECKS = (
    "object_integrity",
    "restore",
    "database_counts",
    "sandbox_ready",
    "workflows",
    "credentials_decrypt",
    "canary_execution",
    "teardown",
)


def check_object(
    expected_size: int, expected_sha256: str, size: int | None, sha256: str | None
) -> Check:
    """The bytes read back from storage are exactly the bytes recorded at backup time."""
    if size != expected_size:
        detail = f"object is {size} bytes, {expected_size} were recorded"
        return Check("object_integrity", False, detail)
    if sha256 != expected_sha256:
        detail = f"object sha256 is {sha256}, {expected_sha256} was recorded: the object changed"
        return Check("object_integrity", False, detail)
    return Check("object_integrity", True, f"{size} bytes, sha256 {sha256}")


def check_counts(manifest: Manifest, workflows: int, credentials: int, executions: int) -> Check:
    seen = {"workflows": workflows, "credentials": credentials, "executions": executions}
    wanted = {
        "workflows": manifest.workflows,
        "credentials": manifest.credentials,
        "executions": manifest.executions,
    }
    wrong = [
        f"{name} {seen[name]} != {wanted[name]}" for name in wanted if seen[name] != wanted[name]
    ]
    if wrong:
        return Check("database_counts", False, "restored rows differ: " + ", ".join(wrong))
    return Check("database_counts", True, ", ".join(f"{n} {v}" for n, v in seen.items()))


def check_workflows(manifest: Manifest, versions: Sequence[tuple[str, str | None]]) -> Check:
    """The sandbox n8n lists the manifest's workflows, at the manifest's versions."""
    digest = workflow_digest(versions)
    if len(versions) != manifest.workflows:
        detail = f"n8n lists {len(versions)} workflows, the manifest {manifest.workflows}"
        return Check("workflows", False, detail)
    if digest != manifest.workflow_digest:
        return Check("workflows", False, "workflow ids or versions differ from the manifest")
    return Check("workflows", True, f"{len(versions)} workflows, digest {digest[:12]}")


def check_credentials(manifest: Manifest, listed: int, decrypted: int) -> Check:
    """n8n decrypts every stored credential with the tenant's key (from Vault)."""
    if listed != manifest.credentials:
        detail = f"n8n exports {listed} credentials, the manifest {manifest.credentials}"
        return Check("credentials_decrypt", False, detail)
    if decrypted != listed:
        detail = f"{listed - decrypted} of {listed} credentials did not decrypt"
        return Check("credentials_decrypt", False, detail)
    if listed == 0:
        return Check("credentials_decrypt", True, "the backup holds no credentials")
    return Check("credentials_decrypt", True, f"{decrypted} of {listed} credentials decrypted")


def check_canary(nonce: str, status_code: int, body: Any) -> Check:
    """The canary webhook ran on the sandbox n8n and answered with the nonce it was sent."""
    if status_code == 200 and isinstance(body, dict) and body.get("nonce") == nonce:
        return Check("canary_execution", True, "canary webhook executed and answered")
    return Check("canary_execution", False, f"canary answered HTTP {status_code}: {body!r:.200}")


def drill_passed(checks: Sequence[Check]) -> bool:
    """Passed only if every required check ran and passed: a check that never ran fails it."""
    ran = {c.name for c in checks}
    return all(name in ran for name in DRILL_CHECKS) and all(c.ok for c in checks)


SANDBOX_LABEL = "io.rp9.sandbox"
SANDBOX_TENANT_LABEL = "io.rp9.sandbox-of"
SANDBOX_PREFIX = "rp9_drill_"


@dataclass(frozen=True)
class SandboxNames:
    """Everything a drill creates is named after it, so a teardown (or a later sweep) finds it
    all; none of these names can be a tenant's (slugs have no underscore, tenants' containers
    start with `rp9-<slug>-blue|green`)."""

    token: str

    @classmethod
    def for_drill(cls, drill_id: uuid.UUID) -> "SandboxNames":
        return cls(drill_id.hex[:12])

    @classmethod
    def for_rehearsal(cls, upgrade_id: uuid.UUID) -> "SandboxNames":
        """An upgrade's rehearsal (`u` and the upgrade's id: never a drill's, which are hex)."""
        return cls("u" + upgrade_id.hex[:11])

    @property
    def database(self) -> str:
        return f"{SANDBOX_PREFIX}{self.token}"

    @property
    def role(self) -> str:
        return f"{SANDBOX_PREFIX}{self.token}"

    @property
    def container(self) -> str:
        return f"rp9-drill-{self.token}"

    @property
    def network(self) -> str:
        return f"rp9-drill-{self.token}"

    @property
    def secrets_key(self) -> str:
        return f"drill_{self.token}"


SANDBOX_CPU = 1.0
SANDBOX_MEMORY_MB = 2048  # n8n plus its CLI (the workflow and credential exports) side by side
# How long a sandbox may take to answer ready. It boots at a background CPU weight, behind the
# tenants' own load, and a new version's migrations on a large tenant's data take minutes (CI
# on busy cores once passed 240 s); a boot that fails is seen at once (the container stops).
SANDBOX_READY_TIMEOUT_S = 900.0


def sandbox_container(
    names: TenantNames,
    sandbox: SandboxNames,
    config: StackConfig,
    *,
    network: str | None = None,
    db_host: str | None = None,
    db_port: int | None = None,
) -> ContainerSpec:
    """n8n on the restored database with the tenant's encryption key: regular mode (no queue,
    so nothing reaches the tenant's Redis or workers), on its own network, and with no
    `io.rp9.managed` or Traefik label, so no route and no scrape ever finds it."""
    env = {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": db_host or config.services_host,
        "DB_POSTGRESDB_PORT": str(db_port or config.postgres_port),
        "DB_POSTGRESDB_DATABASE": sandbox.database,
        "DB_POSTGRESDB_SCHEMA": names.db_schema,
        "DB_POSTGRESDB_USER": sandbox.role,
        "EXECUTIONS_MODE": "regular",
        "GENERIC_TIMEZONE": "UTC",
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_METRICS": "false",
        **DATABASE_ENV,
        # The tenant's own workflows run here: hardened as strictly as the strictest plan.
        **hardening_env(""),
    }
    for var in ("DB_POSTGRESDB_PASSWORD", "N8N_ENCRYPTION_KEY"):
        env[f"{var}_FILE"] = f"{SECRETS_MOUNT}/{SECRET_FILES[var]}"
    return ContainerSpec(
        name=sandbox.container,
        role="sandbox",
        index=0,
        command=[],
        env=env,
        labels={SANDBOX_LABEL: sandbox.container, SANDBOX_TENANT_LABEL: names.slug},
        cpu=SANDBOX_CPU,
        memory_mb=SANDBOX_MEMORY_MB,
        network=network or sandbox.network,
        healthcheck_interval_s=config.healthcheck_interval_s,
    )


def canary_workflow(path: str) -> dict[str, Any]:
    """Webhook → Respond to Webhook, answering the nonce it is sent: it touches no system
    outside the sandbox."""
    return {
        "name": f"rp9 restore drill canary {path}",
        "nodes": [
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}/webhook")),
                "name": "Webhook",
                "type": "n8n-nodes-base.webhook",
                "typeVersion": 2,
                "position": [0, 0],
                "webhookId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}/hook")),
                "parameters": {
                    "httpMethod": "POST",
                    "path": path,
                    "responseMode": "responseNode",
                    "options": {},
                },
            },
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path}/respond")),
                "name": "Respond to Webhook",
                "type": "n8n-nodes-base.respondToWebhook",
                "typeVersion": 1.1,
                "position": [240, 0],
                "parameters": {
                    "respondWith": "json",
                    "responseBody": "={{ { nonce: $json.body.nonce } }}",
                    "options": {},
                },
            },
        ],
        "connections": {
            "Webhook": {"main": [[{"node": "Respond to Webhook", "type": "main", "index": 0}]]}
        },
        "settings": {"executionOrder": "v1"},
    }
