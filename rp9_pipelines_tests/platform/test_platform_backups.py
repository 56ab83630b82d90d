"""The platform's own backups and the tenants' secrets rule, on the real OpenBao, S3 and
catalog."""

import datetime as dt
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import platform_backups
from rp9_pipelines.resources.stack import PlatformBackupResources
from rp9_pipelines.resources.vault import SecretsMissing, VaultResource
from rp9_pipelines.services.platform_backups import (
    SETS_PREFIX,
    DagsterStorage,
    apply_retention,
    take_platform_backup,
)

pytestmark = pytest.mark.stack


def test_a_tenants_secrets_are_issued_once_and_never_regenerated(vault: VaultResource) -> None:
    path = f"rp9/tenants/t-{uuid.uuid4().hex[:8]}"
    try:
        issued = vault.issue(path, "owner@example.test")
        assert vault.issue(path, "owner@example.test") == issued, "a re-run must keep the key"
        assert vault.require(path) == issued
        vault.destroy(path)
        with pytest.raises(SecretsMissing, match="generated only when a tenant is created"):
            vault.require(path)
        assert vault.read(path) is None, "require wrote something"
        vault.write(path, {"encryption_key": "k"})
        with pytest.raises(SecretsMissing, match="incomplete"):
            vault.require(path)
    finally:
        vault.destroy(path)


def test_retention_removes_due_sets_with_their_index_and_keeps_the_newest(
    backup_resources: PlatformBackupResources, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    storage = DagsterStorage("sqlite", str(home))
    first = take_platform_backup(backup_resources, storage, "daily", None, print)
    second = take_platform_backup(backup_resources, storage, "daily", None, print)
    with backup_resources.catalog.begin() as connection:
        connection.execute(
            sa.update(platform_backups)
            .where(platform_backups.c.set_id.in_([first.set_id, second.set_id]))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        )
    apply_retention(backup_resources, dt.datetime.now(dt.UTC), print)
    indexes = backup_resources.s3.list_keys(SETS_PREFIX)
    assert not [k for k in indexes if str(first.set_id) in k]
    assert [k for k in indexes if str(second.set_id) in k], "the newest set must stay"
    for stored in first.parts:
        assert backup_resources.s3.head(stored.key) is None
    for stored in second.parts:
        assert backup_resources.s3.head(stored.key) is not None
    with backup_resources.catalog.begin() as connection:
        statuses = dict(
            connection.execute(
                sa.select(platform_backups.c.set_id, platform_backups.c.status).where(
                    platform_backups.c.set_id.in_([first.set_id, second.set_id])
                )
            ).all()
        )
    assert statuses == {first.set_id: "expired", second.set_id: "ok"}
