"""Retention against a fixed clock on a real catalog and a real S3: exactly the policy's
objects go, and each tenant's last ok backup stays."""

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.catalog.tables import backups
from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.backups import expires_at, object_key
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.settings import sqlalchemy_url

pytestmark = pytest.mark.stack

CLOCK = dt.datetime(2030, 1, 1, 4, 30, tzinfo=dt.UTC)

# (tenant, kind, status, age in days, expected after retention)
BACKUPS = [
    ("acme", "daily", "ok", 8, "expired"),
    ("acme", "daily", "ok", 6.9, "ok"),
    ("acme", "weekly", "ok", 31, "expired"),
    ("acme", "weekly", "ok", 20, "ok"),
    ("acme", "on_demand", "ok", 10, "ok"),
    ("acme", "daily", "failed", 9, "expired"),
    ("acme", "daily", "failed", 1, "failed"),
    # Suspended for six weeks: every backup is past expiry; the newest ok one stays.
    ("globex", "daily", "ok", 40, "ok"),
    ("globex", "daily", "ok", 41, "expired"),
    ("globex", "weekly", "ok", 45, "expired"),
    ("globex", "daily", "failed", 39, "expired"),
]


def test_retention_deletes_exactly_what_the_policy_says_and_keeps_the_last_ok(
    fresh_database_url: str, bucket: S3Resource, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(fresh_database_url)
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    expected: dict[str, str] = {}
    with engine.begin() as connection:
        tenant_ids = {
            slug: connection.execute(
                sa.text(
                    "INSERT INTO tenants (slug, name, plan, n8n_version, status) "
                    "VALUES (:s, :s, 'pro', '2.20.12', :st) RETURNING id"
                ),
                {"s": slug, "st": status},
            ).scalar_one()
            for slug, status in (("acme", "active"), ("globex", "suspended"))
        }
        for slug, kind, status, age, after in BACKUPS:
            started = CLOCK - dt.timedelta(days=age)
            backup_id = uuid.uuid4()
            key = object_key(slug, kind, started, backup_id)
            ok = status == "ok"
            connection.execute(
                sa.insert(backups).values(
                    id=backup_id,
                    tenant_id=tenant_ids[slug],
                    kind=kind,
                    bucket=bucket.bucket,
                    key=key,
                    status=status,
                    started_at=started,
                    finished_at=started + dt.timedelta(minutes=3),
                    expires_at=expires_at(kind, started),
                    size_bytes=4 if ok else None,
                    sha256="0" * 64 if ok else None,
                )
            )
            # A failed backup may have left an object behind (its verification failed).
            bucket.client().put_object(Bucket=bucket.bucket, Key=key, Body=b"dump")
            expected[key] = after

    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("S3_BUCKET", bucket.bucket)
    job = defs().get_job_def("backup_retention")
    config = {"ops": {"expire_backups": {"config": {"as_of": CLOCK.isoformat()}}}}
    result = job.execute_in_process(run_config=config)
    assert result.success
    assert result.output_for_node("expire_backups") == {"expired": 6, "kept_last_ok": 1}

    with engine.connect() as connection:
        statuses = dict(connection.execute(sa.select(backups.c.key, backups.c.status)).all())
    assert statuses == expected
    listed = bucket.client().list_objects_v2(Bucket=bucket.bucket).get("Contents", [])
    assert {item["Key"] for item in listed} == {k for k, s in expected.items() if s != "expired"}

    # Run again at the same clock: nothing more to do.
    again = job.execute_in_process(run_config=config)
    assert again.output_for_node("expire_backups") == {"expired": 0, "kept_last_ok": 1}
    engine.dispose()
