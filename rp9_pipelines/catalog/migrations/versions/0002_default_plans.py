"""default plans

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 03:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

plans = sa.table(
    "plans",
    sa.column("name", sa.String),
    sa.column("executions_per_month", sa.BigInteger),
    sa.column("concurrency", sa.Integer),
    sa.column("cpu", sa.Numeric),
    sa.column("memory_mb", sa.Integer),
    sa.column("min_workers", sa.Integer),
    sa.column("max_workers", sa.Integer),
    sa.column("overage_allowed", sa.Boolean),
)

# n8n idles at about 560 MiB resident per process, so 1 GiB is the smallest useful limit.
# Every tenant runs in queue mode, so every plan has at least one worker.
DEFAULT_PLANS = [
    ("starter", 10_000, 5, 1.0, 1024, 1, 1, False),
    ("pro", 100_000, 20, 2.0, 2048, 1, 4, False),
    ("business", 1_000_000, 50, 4.0, 4096, 2, 8, True),
    ("enterprise", 10_000_000, 200, 8.0, 8192, 2, 16, True),
]


def upgrade() -> None:
    op.bulk_insert(
        plans,
        [
            dict(
                zip(
                    (
                        "name",
                        "executions_per_month",
                        "concurrency",
                        "cpu",
                        "memory_mb",
                        "min_workers",
                        "max_workers",
                        "overage_allowed",
                    ),
                    row,
                    strict=True,
                )
            )
            for row in DEFAULT_PLANS
        ],
    )


def downgrade() -> None:
    names = [row[0] for row in DEFAULT_PLANS]
    op.execute(plans.delete().where(plans.c.name.in_(names)))
