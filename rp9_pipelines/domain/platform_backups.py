"""The platform's own backups as plain data: one set per run (the catalog database, the Dagster
instance's storage, an encrypted snapshot of the secret store), where each object goes, which
set a recovery restores, what retention deletes, and the secrets snapshot's sealed format."""

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rp9_pipelines.domain.backups import RETENTION

COMPONENTS = ("catalog", "dagster", "secrets")
EXTENSIONS = {"catalog": "pgdump", "dagster": "tar", "secrets": "json.sealed"}
# A sealed snapshot: this header, a 12-byte nonce, then AES-256-GCM of the JSON (the header is
# authenticated too, so a snapshot sealed under another format version does not open).
SEALED_HEADER = b"rp9-secrets-v1\n"
NONCE_BYTES = 12


def object_key(component: str, kind: str, started_at: dt.datetime, set_id: uuid.UUID) -> str:
    """`platform/<component>/<kind>/<yyyy/mm/dd>/<UTC timestamp>-<set id>.<ext>`."""
    at = started_at.astimezone(dt.UTC)
    return (
        f"platform/{component}/{kind}/{at:%Y/%m/%d}/{at:%Y%m%dT%H%M%SZ}-{set_id}"
        f".{EXTENSIONS[component]}"
    )


def expires_at(kind: str, started_at: dt.datetime) -> dt.datetime:
    return started_at + RETENTION[kind]


@dataclass(frozen=True)
class PlatformBackupRecord:
    """A row of `platform_backups`, as the decisions need it."""

    id: uuid.UUID
    set_id: uuid.UUID
    component: str
    kind: str
    status: str
    bucket: str
    key: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None


def complete_sets(records: Iterable[PlatformBackupRecord]) -> list[uuid.UUID]:
    """The sets whose every component is `ok`, newest first (a set is only as good as its
    weakest part: a catalog without its secrets restores tenants nobody can decrypt)."""
    by_set: dict[uuid.UUID, dict[str, PlatformBackupRecord]] = {}
    for record in records:
        by_set.setdefault(record.set_id, {})[record.component] = record
    complete = [
        (max(r.finished_at or r.started_at for r in parts.values()), set_id)
        for set_id, parts in by_set.items()
        if set(parts) == set(COMPONENTS) and all(r.status == "ok" for r in parts.values())
    ]
    return [set_id for _, set_id in sorted(complete, reverse=True)]


def plan_retention(
    records: Iterable[PlatformBackupRecord], now: dt.datetime
) -> tuple[PlatformBackupRecord, ...]:
    """What to expire: anything past its `expires_at` (failed ones too, whose objects may have
    been left half-written), except every part of the newest complete set, which is kept
    whatever its age: the platform is never left without a set to recover from."""
    records = list(records)
    newest = complete_sets(records)[:1]
    return tuple(
        r
        for r in records
        if r.status in {"ok", "failed"}
        and r.expires_at is not None
        and r.expires_at <= now
        and r.set_id not in newest
    )


class SealedSnapshotError(ValueError):
    """A secrets snapshot that does not open with the key given (wrong key or altered bytes)."""


def backup_key(hex_key: str) -> bytes:
    try:
        key = bytes.fromhex(hex_key.strip())
    except ValueError as error:
        raise ValueError("PLATFORM_BACKUP_KEY must be 64 hexadecimal characters") from error
    if len(key) != 32:
        raise ValueError("PLATFORM_BACKUP_KEY must be 32 bytes (64 hexadecimal characters)")
    return key


def seal(secrets: Mapping[str, Mapping[str, str]], hex_key: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(secrets, sort_keys=True, separators=(",", ":")).encode()
    return SEALED_HEADER + nonce + AESGCM(backup_key(hex_key)).encrypt(nonce, plain, SEALED_HEADER)


def unseal(sealed: bytes, hex_key: str) -> dict[str, dict[str, str]]:
    if not sealed.startswith(SEALED_HEADER):
        raise SealedSnapshotError("not an rp9 secrets snapshot (unknown header)")
    body = sealed[len(SEALED_HEADER) :]
    nonce, cipher = body[:NONCE_BYTES], body[NONCE_BYTES:]
    try:
        plain = AESGCM(backup_key(hex_key)).decrypt(nonce, cipher, SEALED_HEADER)
    except Exception as error:  # cryptography's InvalidTag says nothing more
        raise SealedSnapshotError("the snapshot does not open with this key") from error
    loaded: dict[str, dict[str, str]] = json.loads(plain)
    return loaded
