"""usage sampling, Stripe objects, chargeback, enforcement delivery and suspension reason

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("suspension_reason", _enum("suspension_reason", "operator", "enforcement")),
    )
    op.add_column("enforcement_events", sa.Column("notified_at", sa.DateTime(timezone=True)))
    op.add_column("enforcement_events", sa.Column("notify_error", sa.Text()))
    op.create_table(
        "resource_samples",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("container_name", sa.String(length=128), nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_total_ns", sa.BigInteger(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "cpu_total_ns >= 0 AND memory_bytes >= 0",
            name=op.f("ck_resource_samples_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_resource_samples_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resource_samples")),
        sa.UniqueConstraint("container_name", "sampled_at", name="uq_resource_samples_sample"),
    )
    op.create_index(
        "ix_resource_samples_tenant_time",
        "resource_samples",
        ["tenant_id", "sampled_at"],
        unique=False,
    )
    op.create_table(
        "stripe_objects",
        sa.Column(
            "kind",
            _enum("stripe_object_kind", "product", "price", "meter", "feature"),
            nullable=False,
        ),
        sa.Column("lookup_key", sa.String(length=200), nullable=False),
        sa.Column("stripe_id", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("kind", "lookup_key", name=op.f("pk_stripe_objects")),
    )
    op.create_table(
        "chargeback",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("executions", sa.BigInteger(), nullable=False),
        sa.Column("duration_hours", sa.Float(), nullable=False),
        sa.Column("cpu_core_hours", sa.Float(), nullable=False),
        sa.Column("memory_gb_hours", sa.Float(), nullable=False),
        sa.Column("usage_cost", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("idle_cost", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("total_cost", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("revenue", sa.Numeric(precision=14, scale=4)),
        sa.Column("margin", sa.Numeric(precision=14, scale=4)),
        sa.Column("currency", sa.String(length=3), server_default="usd", nullable=False),
        sa.Column(
            "computed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "month ~ '^[0-9]{4}-[0-9]{2}$'", name=op.f("ck_chargeback_month_format")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_chargeback_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chargeback")),
        sa.UniqueConstraint("tenant_id", "month", name="uq_chargeback_tenant_month"),
    )


def downgrade() -> None:
    op.drop_table("chargeback")
    op.drop_table("stripe_objects")
    op.drop_index("ix_resource_samples_tenant_time", table_name="resource_samples")
    op.drop_table("resource_samples")
    op.drop_column("enforcement_events", "notify_error")
    op.drop_column("enforcement_events", "notified_at")
    op.drop_column("tenants", "suspension_reason")
