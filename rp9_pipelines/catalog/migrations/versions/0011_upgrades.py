"""upgrades: the n8n versions the platform offers, the upgrade paths it has tested, and each
upgrade's phase, figures, rollback snapshot and rollout

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What this platform builds and has rehearsed (README, "n8n versions"): 2.20.12 is the version
# new tenants get; 2.22.6 the newer one that installs here, 15 database migrations ahead.
VERSIONS = ("2.20.12", "2.22.6")
PATHS = (("2.20.12", "2.22.6", "15 migrations; rehearsed by the upgrade suite"),)


def upgrade() -> None:
    versions = op.create_table(
        "n8n_versions",
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("offered", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column(
            "added_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    paths = op.create_table(
        "upgrade_paths",
        sa.Column(
            "from_version",
            sa.String(32),
            sa.ForeignKey("n8n_versions.version", name="fk_upgrade_paths_from"),
            primary_key=True,
        ),
        sa.Column(
            "to_version",
            sa.String(32),
            sa.ForeignKey("n8n_versions.version", name="fk_upgrade_paths_to"),
            primary_key=True,
        ),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "tested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.bulk_insert(versions, [{"version": v, "offered": True} for v in VERSIONS])
    op.bulk_insert(
        paths, [{"from_version": a, "to_version": b, "note": note} for a, b, note in PATHS]
    )
    op.add_column(
        "upgrades", sa.Column("phase", sa.String(32), nullable=False, server_default="requested")
    )
    op.add_column(
        "upgrades",
        sa.Column("figures", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column("upgrades", sa.Column("rollout", sa.String(64)))
    op.add_column("upgrades", sa.Column("switched_at", sa.DateTime(timezone=True)))
    op.add_column("upgrades", sa.Column("rollback_until", sa.DateTime(timezone=True)))
    op.create_index(
        "uq_upgrades_one_running",
        "upgrades",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index("ix_upgrades_rollout", "upgrades", ["rollout"])


def downgrade() -> None:
    op.drop_index("ix_upgrades_rollout", "upgrades")
    op.drop_index("uq_upgrades_one_running", "upgrades")
    for column in ("rollback_until", "switched_at", "rollout", "figures", "phase"):
        op.drop_column("upgrades", column)
    op.drop_table("upgrade_paths")
    op.drop_table("n8n_versions")
