"""platform recovery: tenants' secrets are issued once; platform backups; platform DR drills

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKUP_KINDS = ("daily", "weekly", "on_demand", "pre_promotion", "pre_upgrade")
BACKUP_STATUSES = ("running", "ok", "failed", "expired")
DRILL_STATUSES = ("running", "passed", "failed")
COMPONENTS = ("catalog", "dagster", "secrets")


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.add_column("tenants", sa.Column("secrets_issued_at", sa.DateTime(timezone=True)))
    # Every tenant past its first provision has had its secrets issued.
    op.execute("UPDATE tenants SET secrets_issued_at = created_at WHERE status <> 'provisioning'")
    op.create_table(
        "platform_backups",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("set_id", sa.UUID(), nullable=False),
        sa.Column("component", _enum("platform_component", COMPONENTS), nullable=False),
        sa.Column("kind", _enum("backup_kind", BACKUP_KINDS), nullable=False),
        sa.Column("bucket", sa.String(63), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("manifest", JSONB()),
        sa.Column(
            "status",
            _enum("backup_status", BACKUP_STATUSES),
            server_default="running",
            nullable=False,
        ),
        sa.Column("run_id", sa.String(64)),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint(
            "status <> 'ok' OR "
            "(size_bytes IS NOT NULL AND sha256 IS NOT NULL AND finished_at IS NOT NULL)",
            name=op.f("ck_platform_backups_ok_is_verified"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_backups")),
        sa.UniqueConstraint("bucket", "key", name="uq_platform_backups_object"),
    )
    op.create_index(op.f("ix_platform_backups_set_id"), "platform_backups", ["set_id"])
    op.create_table(
        "platform_dr_drills",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("set_id", sa.UUID()),
        sa.Column(
            "status",
            _enum("drill_status", DRILL_STATUSES),
            server_default="running",
            nullable=False,
        ),
        sa.Column("run_id", sa.String(64)),
        sa.Column("request_id", sa.String(128)),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("rto_seconds", sa.Float()),
        sa.Column("rpo_seconds", sa.Float()),
        sa.Column("tenants", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("checks", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_dr_drills")),
    )


def downgrade() -> None:
    op.drop_table("platform_dr_drills")
    op.drop_index(op.f("ix_platform_backups_set_id"), table_name="platform_backups")
    op.drop_table("platform_backups")
    op.drop_column("tenants", "secrets_issued_at")
