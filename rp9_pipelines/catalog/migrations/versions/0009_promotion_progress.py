"""promotions: their phase, figures and rollback window; edge holds (requests held at the edge
during a cutover)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "promotions",
        sa.Column("phase", sa.String(32), server_default="requested", nullable=False),
    )
    op.add_column(
        "promotions",
        sa.Column("figures", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.add_column("promotions", sa.Column("switched_at", sa.DateTime(timezone=True)))
    op.add_column("promotions", sa.Column("rollback_until", sa.DateTime(timezone=True)))
    op.add_column("promotions", sa.Column("shared_removed_at", sa.DateTime(timezone=True)))
    op.create_index(
        "uq_promotions_one_running",
        "promotions",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "edge_holds",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column(
            "held_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_edge_holds_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_edge_holds")),
    )


def downgrade() -> None:
    op.drop_table("edge_holds")
    op.drop_index("uq_promotions_one_running", table_name="promotions")
    for column in ("shared_removed_at", "rollback_until", "switched_at", "figures", "phase"):
        op.drop_column("promotions", column)
