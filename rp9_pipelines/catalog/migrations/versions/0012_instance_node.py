"""tenant_instances: the node that runs each instance (a Swarm's node hostname; NULL on the
Docker runtime, whose one engine is the host)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenant_instances", sa.Column("node", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("tenant_instances", "node")
