"""promotion decisions: the promotion_candidates sensor's verdict per shared tenant and day

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROMOTION_TRIGGERS = ("manual", "usage", "latency", "compliance")


def upgrade() -> None:
    op.create_table(
        "promotion_decisions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column(
            "judged_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("propose", sa.Boolean(), nullable=False),
        sa.Column(
            "trigger",
            sa.Enum(
                *PROMOTION_TRIGGERS,
                name="promotion_trigger",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
        ),
        sa.Column("reasons", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.CheckConstraint(
            "propose = (trigger IS NOT NULL)",
            name=op.f("ck_promotion_decisions_trigger_when_proposed"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_promotion_decisions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_decisions")),
        sa.UniqueConstraint("tenant_id", "day", name="uq_promotion_decisions_tenant_day"),
    )


def downgrade() -> None:
    op.drop_table("promotion_decisions")
