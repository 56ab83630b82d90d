"""tenant boundary: purged tenants' backups expire after a grace period; an execution tally
the tenant cannot edit

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-02 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("purged_at", sa.DateTime(timezone=True)))
    op.add_column(
        "tenants",
        sa.Column("executions_seen_through", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "execution_tally",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("executions", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("executions >= 0", name=op.f("ck_execution_tally_non_negative")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_execution_tally_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_execution_tally")),
    )


def downgrade() -> None:
    op.drop_table("execution_tally")
    op.drop_column("tenants", "executions_seen_through")
    op.drop_column("tenants", "purged_at")
