import datetime as dt
import uuid

import pytest

from rp9_pipelines.domain.platform_backups import (
    COMPONENTS,
    PlatformBackupRecord,
    SealedSnapshotError,
    complete_sets,
    object_key,
    plan_retention,
    seal,
    unseal,
)

KEY = "11" * 32
NOW = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)


def part(
    set_id: uuid.UUID, component: str, age_days: float, status: str = "ok"
) -> PlatformBackupRecord:
    started = NOW - dt.timedelta(days=age_days)
    return PlatformBackupRecord(
        id=uuid.uuid4(),
        set_id=set_id,
        component=component,
        kind="daily",
        status=status,
        bucket="b",
        key=f"{set_id}/{component}",
        started_at=started,
        finished_at=started + dt.timedelta(minutes=1),
        expires_at=started + dt.timedelta(days=7),
    )


def whole_set(age_days: float, **statuses: str) -> tuple[uuid.UUID, list[PlatformBackupRecord]]:
    set_id = uuid.uuid4()
    return set_id, [part(set_id, c, age_days, statuses.get(c, "ok")) for c in COMPONENTS]


def test_a_sealed_snapshot_opens_only_with_its_key_and_unaltered() -> None:
    secrets = {"rp9/tenants/acme": {"encryption_key": "k" * 64, "db_password": "p"}}
    sealed = seal(secrets, KEY)
    assert b"k" * 64 not in sealed
    assert unseal(sealed, KEY) == secrets
    with pytest.raises(SealedSnapshotError, match="does not open"):
        unseal(sealed, "22" * 32)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealedSnapshotError):
        unseal(tampered, KEY)
    with pytest.raises(SealedSnapshotError, match="header"):
        unseal(b"plain json", KEY)
    assert seal(secrets, KEY) != sealed, "every seal has its own nonce"


@pytest.mark.parametrize("key", ["", "zz" * 32, "11" * 16])
def test_a_backup_key_that_is_not_32_hex_bytes_is_refused_clearly(key: str) -> None:
    with pytest.raises(ValueError, match="PLATFORM_BACKUP_KEY"):
        seal({}, key)


def test_only_sets_with_every_part_ok_are_complete_newest_first() -> None:
    old, old_parts = whole_set(3)
    new, new_parts = whole_set(1)
    _, failed_parts = whole_set(0.5, secrets="failed")
    partial = uuid.uuid4()
    partial_parts = [part(partial, "catalog", 0.1), part(partial, "dagster", 0.1)]
    records = [*old_parts, *failed_parts, *new_parts, *partial_parts]
    assert complete_sets(records) == [new, old]


def test_retention_expires_what_is_due_but_never_the_newest_complete_set() -> None:
    ancient, ancient_parts = whole_set(40)
    newest, newest_parts = whole_set(20)  # past its 7 days too, but the newest complete set
    broken, broken_parts = whole_set(10, dagster="failed")
    expired = plan_retention([*ancient_parts, *newest_parts, *broken_parts], NOW)
    assert {r.set_id for r in expired} == {ancient, broken}
    assert len(expired) == 6
    assert not [r for r in expired if r.set_id == newest]


def test_object_keys_group_by_component_and_kind_in_time_order() -> None:
    set_id = uuid.UUID(int=7)
    key = object_key("secrets", "weekly", NOW, set_id)
    assert key == f"platform/secrets/weekly/2026/12/02/20261202T120000Z-{set_id}.json.sealed"
