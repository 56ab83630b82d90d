"""tenants: the color of the containers serving each tenant (a cutover boots the other color
beside them)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column(
            "color",
            sa.Enum(
                "blue",
                "green",
                name="instance_color",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="blue",
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("tenants", "color")
