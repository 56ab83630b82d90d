"""initial catalog

Revision ID: 0001
Revises:
Create Date: 2026-11-28 03:15:26.999919
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", "route", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "plans",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("executions_per_month", sa.BigInteger(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("cpu", sa.Numeric(precision=6, scale=2), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("min_workers", sa.Integer(), nullable=False),
        sa.Column("max_workers", sa.Integer(), nullable=False),
        sa.Column("overage_allowed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("stripe_product_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_price_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint("concurrency > 0", name=op.f("ck_plans_concurrency_positive")),
        sa.CheckConstraint(
            "cpu > 0 AND memory_mb >= 256", name=op.f("ck_plans_resources_positive")
        ),
        sa.CheckConstraint("executions_per_month > 0", name=op.f("ck_plans_executions_positive")),
        sa.CheckConstraint(
            "min_workers >= 0 AND max_workers >= min_workers", name=op.f("ck_plans_worker_range")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_plans")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column(
            "tier",
            sa.Enum(
                "shared",
                "dedicated",
                name="tenant_tier",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="shared",
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "provisioning",
                "active",
                "suspended",
                "promoting",
                "upgrading",
                "failed",
                "deleting",
                "deleted",
                name="tenant_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="provisioning",
            nullable=False,
        ),
        sa.Column("region", sa.String(length=40), server_default="eu-1", nullable=False),
        sa.Column("custom_domain", sa.String(length=253), nullable=True),
        sa.Column(
            "compliance",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("n8n_version", sa.String(length=32), nullable=False),
        sa.Column("workers", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "slug ~ '^[a-z0-9]([a-z0-9-]{1,38})[a-z0-9]$'", name=op.f("ck_tenants_slug_dns_label")
        ),
        sa.CheckConstraint("workers >= 0", name=op.f("ck_tenants_workers_non_negative")),
        sa.ForeignKeyConstraint(["plan"], ["plans.name"], name=op.f("fk_tenants_plan_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("custom_domain", name=op.f("uq_tenants_custom_domain")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_tenants_stripe_customer_id")),
    )
    op.create_table(
        "autoscaling_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("signals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("workers_from", sa.Integer(), nullable=False),
        sa.Column("workers_to", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "workers_from >= 0 AND workers_to >= 0",
            name=op.f("ck_autoscaling_events_workers_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_autoscaling_events_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_autoscaling_events")),
    )
    op.create_index(
        op.f("ix_autoscaling_events_tenant_id"), "autoscaling_events", ["tenant_id"], unique=False
    )
    op.create_table(
        "backups",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "daily",
                "weekly",
                "on_demand",
                "pre_promotion",
                "pre_upgrade",
                name="backup_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("manifest", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "ok",
                "failed",
                "expired",
                name="backup_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="running",
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status <> 'ok' OR "
            "(size_bytes IS NOT NULL AND sha256 IS NOT NULL AND finished_at IS NOT NULL)",
            name=op.f("ck_backups_ok_is_verified"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_backups_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
        sa.UniqueConstraint("bucket", "key", name="uq_backups_object"),
    )
    op.create_index(op.f("ix_backups_tenant_id"), "backups", ["tenant_id"], unique=False)
    op.create_table(
        "enforcement_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("limit_value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column(
            "action",
            sa.Enum(
                "warn",
                "suspend",
                "overage",
                "resume",
                name="enforcement_action",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "period ~ '^[0-9]{4}-[0-9]{2}$'", name=op.f("ck_enforcement_events_period_format")
        ),
        sa.CheckConstraint(
            "threshold IN (80, 100)", name=op.f("ck_enforcement_events_threshold_values")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_enforcement_events_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enforcement_events")),
        sa.UniqueConstraint(
            "tenant_id",
            "period",
            "metric",
            "threshold",
            "action",
            name="uq_enforcement_once_per_period",
        ),
    )
    op.create_index(
        op.f("ix_enforcement_events_tenant_id"), "enforcement_events", ["tenant_id"], unique=False
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "trigger",
            sa.Enum(
                "manual",
                "usage",
                "latency",
                "compliance",
                name="promotion_trigger",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "succeeded",
                "rolled_back",
                "failed",
                name="promotion_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="running",
            nullable=False,
        ),
        sa.Column(
            "steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("downtime_ms", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_promotions_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    op.create_index(op.f("ix_promotions_tenant_id"), "promotions", ["tenant_id"], unique=False)
    op.create_table(
        "quotas",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "source",
            sa.Enum(
                "plan",
                "stripe",
                "manual",
                name="quota_source",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("executions_per_month", sa.BigInteger(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("cpu", sa.Numeric(precision=6, scale=2), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("min_workers", sa.Integer(), nullable=True),
        sa.Column("max_workers", sa.Integer(), nullable=True),
        sa.Column("overage_allowed", sa.Boolean(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "min_workers IS NULL OR max_workers IS NULL OR max_workers >= min_workers",
            name=op.f("ck_quotas_worker_range"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_quotas_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quotas")),
        sa.UniqueConstraint("tenant_id", "source", name="uq_quotas_tenant_source"),
    )
    op.create_index(op.f("ix_quotas_tenant_id"), "quotas", ["tenant_id"], unique=False)
    op.create_table(
        "tenant_instances",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "main",
                "worker",
                "webhook",
                name="instance_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
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
        sa.Column("container_name", sa.String(length=128), nullable=False),
        sa.Column("container_id", sa.String(length=128), nullable=True),
        sa.Column("image", sa.String(length=200), nullable=False),
        sa.Column("cpu_limit", sa.Numeric(precision=6, scale=2), nullable=False),
        sa.Column("memory_limit_mb", sa.Integer(), nullable=False),
        sa.Column("db_name", sa.String(length=63), nullable=False),
        sa.Column("db_schema", sa.String(length=63), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "creating",
                "running",
                "draining",
                "stopped",
                "removed",
                "failed",
                name="instance_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="creating",
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "cpu_limit > 0 AND memory_limit_mb > 0",
            name=op.f("ck_tenant_instances_limits_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_instances_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_instances")),
        sa.UniqueConstraint("container_id", name=op.f("uq_tenant_instances_container_id")),
        sa.UniqueConstraint("container_name", name=op.f("uq_tenant_instances_container_name")),
    )
    op.create_index(
        op.f("ix_tenant_instances_tenant_id"), "tenant_instances", ["tenant_id"], unique=False
    )
    op.create_table(
        "upgrades",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("from_version", sa.String(length=32), nullable=False),
        sa.Column("to_version", sa.String(length=32), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "succeeded",
                "rolled_back",
                "failed",
                name="upgrade_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="running",
            nullable=False,
        ),
        sa.Column(
            "steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("downtime_ms", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_upgrades_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upgrades")),
    )
    op.create_index(op.f("ix_upgrades_tenant_id"), "upgrades", ["tenant_id"], unique=False)
    op.create_table(
        "usage",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("executions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failures", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("duration_ms_sum", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("queue_wait_p95_ms", sa.Float(), nullable=True),
        sa.Column("cpu_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("memory_gb_hours", sa.Float(), server_default="0", nullable=False),
        sa.Column(
            "collected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "executions >= 0 AND failures >= 0 AND failures <= executions",
            name=op.f("ck_usage_counts"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage")),
        sa.UniqueConstraint("tenant_id", "day", name="uq_usage_tenant_day"),
    )
    op.create_index(op.f("ix_usage_tenant_id"), "usage", ["tenant_id"], unique=False)
    op.create_table(
        "usage_reports",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column(
            "destination",
            sa.Enum(
                "stripe",
                "supabase",
                name="report_destination",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("identifier", sa.String(length=200), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "sent",
                "failed",
                name="report_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_reports_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_reports")),
        sa.UniqueConstraint("destination", "identifier", name="uq_usage_reports_identifier"),
    )
    op.create_index(
        op.f("ix_usage_reports_tenant_id"), "usage_reports", ["tenant_id"], unique=False
    )
    op.create_table(
        "restore_drills",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("backup_id", sa.UUID(), nullable=False),
        sa.Column("sandbox", sa.String(length=128), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "passed",
                "failed",
                name="drill_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="running",
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rto_seconds", sa.Float(), nullable=True),
        sa.Column(
            "checks",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backup_id"],
            ["backups.id"],
            name=op.f("fk_restore_drills_backup_id_backups"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_restore_drills_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_drills")),
    )
    op.create_index(
        op.f("ix_restore_drills_tenant_id"), "restore_drills", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_restore_drills_tenant_id"), table_name="restore_drills")
    op.drop_table("restore_drills")
    op.drop_index(op.f("ix_usage_reports_tenant_id"), table_name="usage_reports")
    op.drop_table("usage_reports")
    op.drop_index(op.f("ix_usage_tenant_id"), table_name="usage")
    op.drop_table("usage")
    op.drop_index(op.f("ix_upgrades_tenant_id"), table_name="upgrades")
    op.drop_table("upgrades")
    op.drop_index(op.f("ix_tenant_instances_tenant_id"), table_name="tenant_instances")
    op.drop_table("tenant_instances")
    op.drop_index(op.f("ix_quotas_tenant_id"), table_name="quotas")
    op.drop_table("quotas")
    op.drop_index(op.f("ix_promotions_tenant_id"), table_name="promotions")
    op.drop_table("promotions")
    op.drop_index(op.f("ix_enforcement_events_tenant_id"), table_name="enforcement_events")
    op.drop_table("enforcement_events")
    op.drop_index(op.f("ix_backups_tenant_id"), table_name="backups")
    op.drop_table("backups")
    op.drop_index(op.f("ix_autoscaling_events_tenant_id"), table_name="autoscaling_events")
    op.drop_table("autoscaling_events")
    op.drop_table("tenants")
    op.drop_table("plans")
    op.drop_table("idempotency_keys")
