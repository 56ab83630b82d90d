"""Backups as plain data: where an object is stored, when it expires, what retention deletes,
which tenants are backed up on a tick, and what a backup holds (its manifest)."""

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

BackupKind = Literal["daily", "weekly", "on_demand", "pre_promotion", "pre_upgrade"]
SCHEDULED_KINDS: tuple[BackupKind, ...] = ("daily", "weekly")
# The specification fixes daily (7 d) and weekly (30 d); backups taken by hand or before a risky
# change are kept as long as the longest scheduled kind, so retention deletes them too.
RETENTION: Mapping[str, dt.timedelta] = {
    "daily": dt.timedelta(days=7),
    "weekly": dt.timedelta(days=30),
    "on_demand": dt.timedelta(days=30),
    "pre_promotion": dt.timedelta(days=30),
    "pre_upgrade": dt.timedelta(days=30),
}
# Tenants whose data changes; a suspended or deleted tenant keeps its last good backup.
BACKED_UP_STATUSES = frozenset({"active"})
# A purged tenant's backups are the only copy of its data left: kept this long after the purge
# (a mistaken purge can still be restored), then deleted like any expired backup, the last one
# included.
PURGE_GRACE = dt.timedelta(days=7)

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling per multipart upload
PART_SIZE_DOUBLES_EVERY = 1_000


def expires_at(kind: str, started_at: dt.datetime) -> dt.datetime:
    return started_at + RETENTION[kind]


def object_key(slug: str, kind: str, started_at: dt.datetime, backup_id: uuid.UUID) -> str:
    """`tenants/<slug>/<kind>/<yyyy/mm/dd>/<UTC timestamp>-<backup id>.pgdump`: a tenant's
    backups list together and in time order, and the id makes every key unique."""
    at = started_at.astimezone(dt.UTC)
    return f"tenants/{slug}/{kind}/{at:%Y/%m/%d}/{at:%Y%m%dT%H%M%SZ}-{backup_id}.pgdump"


def region_buckets(text: str) -> dict[str, str]:
    """`S3_REGION_BUCKETS` (`eu-1=rp9-backups-eu-1,us-1=rp9-backups-us-1`): the bucket of each
    region whose tenants' backups stay in it. Empty: none (every backup in `S3_BUCKET`)."""
    found: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        region, _, bucket = (part.strip() for part in entry.partition("="))
        if not region or not bucket:
            raise ValueError(f"S3_REGION_BUCKETS: {entry!r} is not region=bucket")
        if region in found:
            raise ValueError(f"S3_REGION_BUCKETS names region {region!r} twice")
        found[region] = bucket
    return found


def part_size(part_number: int, base: int) -> int:
    """The size of multipart part `part_number` (from 1): `base`, doubling every 1,000 parts, so
    10,000 parts reach about a million times `base` while memory stays bounded by one part."""
    if part_number < 1 or part_number > MAX_PARTS:
        raise ValueError(f"S3 numbers parts 1..{MAX_PARTS}, not {part_number}")
    return int(max(base, MIN_PART_SIZE) * 2 ** ((part_number - 1) // PART_SIZE_DOUBLES_EVERY))


@dataclass(frozen=True)
class BackupRecord:
    """A row of `backups`, as the decisions need it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    status: str
    bucket: str
    key: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None


def recency(backup: BackupRecord) -> tuple[dt.datetime, dt.datetime, str]:
    return (backup.finished_at or backup.started_at, backup.started_at, str(backup.id))


@dataclass(frozen=True)
class RetentionPlan:
    expire: tuple[BackupRecord, ...]
    # Past their expiry, but each is its tenant's newest `ok` backup.
    kept_last_ok: tuple[BackupRecord, ...]


def plan_retention(
    backups: Iterable[BackupRecord],
    now: dt.datetime,
    purged: Iterable[uuid.UUID] = (),
) -> RetentionPlan:
    """What retention deletes at `now`: every backup past its expiry (a failed one or one stuck
    `running` included, so no partial object lingers), except each tenant's newest `ok` backup,
    which stays whatever its age: a tenant is never left without a good backup. A `purged`
    tenant has asked for its data to go: its last backup goes too once it expires."""
    rows = list(backups)
    gone = set(purged)
    last_ok: dict[uuid.UUID, BackupRecord] = {}
    for backup in rows:
        if backup.status == "ok" and backup.tenant_id not in gone:
            best = last_ok.get(backup.tenant_id)
            if best is None or recency(backup) > recency(best):
                last_ok[backup.tenant_id] = backup
    keep = {b.id for b in last_ok.values()}
    due = [
        b
        for b in rows
        if b.status in {"ok", "failed", "running"} and b.expires_at is not None
        if b.expires_at <= now
    ]
    ordered = sorted(due, key=lambda b: (b.started_at, str(b.id)))
    return RetentionPlan(
        expire=tuple(b for b in ordered if b.id not in keep),
        kept_last_ok=tuple(b for b in ordered if b.id in keep),
    )


@dataclass(frozen=True)
class ScheduledRun:
    tenant_id: str
    slug: str
    run_key: str


def scheduled_runs(
    tenants: Iterable[tuple[str, str, str]], purpose: str, scheduled_for: dt.datetime
) -> list[ScheduledRun]:
    """One run per active tenant `(id, slug, status)`; the run key names the purpose, tenant
    and tick, so a schedule evaluated twice for the same tick launches nothing new."""
    tick = scheduled_for.astimezone(dt.UTC).strftime("%Y%m%dT%H%M")
    return [
        ScheduledRun(tenant_id, slug, f"{purpose}-{slug}-{tick}")
        for tenant_id, slug, status in sorted(tenants, key=lambda t: t[1])
        if status in BACKED_UP_STATUSES
    ]


def workflow_digest(versions: Iterable[tuple[str, str | None]]) -> str:
    """sha256 over the sorted `(workflow id, versionId)` pairs: equal digests mean the same
    workflows at the same versions."""
    lines = sorted(f"{workflow_id}:{version or ''}" for workflow_id, version in versions)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, counted in the very snapshot that was dumped."""

    workflows: int
    credentials: int
    executions: int
    workflow_digest: str

    def as_json(self) -> dict[str, Any]:
        return {
            "workflows": self.workflows,
            "credentials": self.credentials,
            "executions": self.executions,
            "workflow_digest": self.workflow_digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Manifest":
        return cls(
            workflows=int(data["workflows"]),
            credentials=int(data["credentials"]),
            executions=int(data["executions"]),
            workflow_digest=str(data["workflow_digest"]),
        )
