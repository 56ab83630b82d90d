"""The platform catalog (`rp9_platform`): SQLAlchemy Core tables, mirrored by the migrations."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TENANT_STATUSES = (
    "provisioning",
    "active",
    "suspended",
    "promoting",
    "upgrading",
    "failed",
    "deleting",
    "deleted",
)
TIERS = ("shared", "dedicated")
INSTANCE_ROLES = ("main", "worker", "webhook")
COLORS = ("blue", "green")
INSTANCE_STATES = ("creating", "running", "draining", "stopped", "removed", "failed")
QUOTA_SOURCES = ("plan", "stripe", "manual")
BACKUP_KINDS = ("daily", "weekly", "on_demand", "pre_promotion", "pre_upgrade")
BACKUP_STATUSES = ("running", "ok", "failed", "expired")
DRILL_STATUSES = ("running", "passed", "failed")
REPORT_DESTINATIONS = ("stripe", "supabase")
REPORT_STATUSES = ("pending", "sent", "failed")
ENFORCEMENT_ACTIONS = ("warn", "suspend", "overage", "resume")
PROMOTION_TRIGGERS = ("manual", "usage", "latency", "compliance")
CHANGE_STATUSES = ("running", "succeeded", "rolled_back", "failed")
# Who suspended a tenant: enforcement resumes only what enforcement suspended.
SUSPENSION_REASONS = ("operator", "enforcement")
STRIPE_OBJECT_KINDS = ("product", "price", "meter", "feature")

# A DNS label of 3-40 characters: lowercase letters, digits and inner hyphens.
SLUG_PATTERN = "^[a-z0-9]([a-z0-9-]{1,38})[a-z0-9]$"


def _enum(name: str, values: tuple[str, ...]) -> sa.Enum:
    # CHECK constraints instead of native Postgres enums: adding a value later is a plain
    # constraint swap in a migration, with no ALTER TYPE outside a transaction.
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _id() -> sa.Column[object]:
    return sa.Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
    )


def _tenant_fk(*, nullable: bool = False, index: bool = True) -> sa.Column[object]:
    # index=False where a composite index or unique constraint already leads with tenant_id.
    return sa.Column(
        "tenant_id",
        UUID(as_uuid=True),
        sa.ForeignKey("tenants.id", ondelete="RESTRICT"),
        nullable=nullable,
        index=index,
    )


def _created_at(name: str = "created_at") -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _updated_at() -> sa.Column[object]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def _change_progress(status_enum: str) -> list[sa.Column[object]]:
    """How a change to a tenant (a promotion, an upgrade) runs: its status, steps, run,
    timing and error."""
    return [
        sa.Column(
            "status",
            _enum(status_enum, CHANGE_STATUSES),
            nullable=False,
            server_default="running",
        ),
        sa.Column("steps", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("run_id", sa.String(64)),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("downtime_ms", sa.BigInteger),
        sa.Column("error", sa.Text),
    ]


plans = sa.Table(
    "plans",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("executions_per_month", sa.BigInteger, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("cpu", sa.Numeric(6, 2), nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("min_workers", sa.Integer, nullable=False),
    sa.Column("max_workers", sa.Integer, nullable=False),
    sa.Column("overage_allowed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("stripe_product_id", sa.String(64)),
    sa.Column("stripe_price_id", sa.String(64)),
    sa.CheckConstraint("executions_per_month > 0", name="executions_positive"),
    sa.CheckConstraint("concurrency > 0", name="concurrency_positive"),
    sa.CheckConstraint("cpu > 0 AND memory_mb >= 256", name="resources_positive"),
    sa.CheckConstraint("min_workers >= 0 AND max_workers >= min_workers", name="worker_range"),
)

tenants = sa.Table(
    "tenants",
    metadata,
    _id(),
    sa.Column("slug", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("plan", sa.String(40), sa.ForeignKey("plans.name"), nullable=False),
    sa.Column("tier", _enum("tenant_tier", TIERS), nullable=False, server_default="shared"),
    sa.Column(
        "status",
        _enum("tenant_status", TENANT_STATUSES),
        nullable=False,
        server_default="provisioning",
    ),
    sa.Column("region", sa.String(40), nullable=False, server_default="eu-1"),
    sa.Column("custom_domain", sa.String(253), unique=True),
    sa.Column("compliance", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("stripe_customer_id", sa.String(64), unique=True),
    sa.Column("n8n_version", sa.String(32), nullable=False),
    sa.Column("workers", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("suspension_reason", _enum("suspension_reason", SUSPENSION_REASONS)),
    _created_at(),
    _updated_at(),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    # When its data was purged: its backups go after a grace period (`backups.expires_at`).
    sa.Column("purged_at", sa.DateTime(timezone=True)),
    # The highest `execution_entity.id` counted into `execution_tally` (ids only grow).
    sa.Column("executions_seen_through", sa.BigInteger, nullable=False, server_default="0"),
    # When its secrets were first stored: from then on they are only ever read, never generated.
    sa.Column("secrets_issued_at", sa.DateTime(timezone=True)),
    # The color of the containers serving it: a cutover boots the other color beside them.
    sa.Column("color", _enum("instance_color", COLORS), nullable=False, server_default="blue"),
    sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="slug_dns_label"),
    sa.CheckConstraint("workers >= 0", name="workers_non_negative"),
)

tenant_instances = sa.Table(
    "tenant_instances",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("role", _enum("instance_role", INSTANCE_ROLES), nullable=False),
    sa.Column("color", _enum("instance_color", COLORS), nullable=False, server_default="blue"),
    sa.Column("container_name", sa.String(128), nullable=False, unique=True),
    sa.Column("container_id", sa.String(128), unique=True),
    sa.Column("image", sa.String(200), nullable=False),
    sa.Column("cpu_limit", sa.Numeric(6, 2), nullable=False),
    sa.Column("memory_limit_mb", sa.Integer, nullable=False),
    sa.Column("db_name", sa.String(63), nullable=False),
    sa.Column("db_schema", sa.String(63), nullable=False),
    sa.Column(
        "state", _enum("instance_state", INSTANCE_STATES), nullable=False, server_default="creating"
    ),
    # The Swarm node that runs it (NULL: the Docker runtime's one engine).
    sa.Column("node", sa.String(128)),
    _created_at(),
    _updated_at(),
    sa.CheckConstraint("cpu_limit > 0 AND memory_limit_mb > 0", name="limits_positive"),
)

quotas = sa.Table(
    "quotas",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("source", _enum("quota_source", QUOTA_SOURCES), nullable=False),
    sa.Column("executions_per_month", sa.BigInteger),
    sa.Column("concurrency", sa.Integer),
    sa.Column("cpu", sa.Numeric(6, 2)),
    sa.Column("memory_mb", sa.Integer),
    sa.Column("min_workers", sa.Integer),
    sa.Column("max_workers", sa.Integer),
    sa.Column("overage_allowed", sa.Boolean),
    _updated_at(),
    sa.UniqueConstraint("tenant_id", "source", name="uq_quotas_tenant_source"),
    sa.CheckConstraint(
        "min_workers IS NULL OR max_workers IS NULL OR max_workers >= min_workers",
        name="worker_range",
    ),
)

usage = sa.Table(
    "usage",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("executions", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("duration_ms_sum", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latency_p95_ms", sa.Float),
    sa.Column("queue_wait_p95_ms", sa.Float),
    sa.Column("cpu_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("memory_gb_hours", sa.Float, nullable=False, server_default="0"),
    sa.Column(
        "collected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.UniqueConstraint("tenant_id", "day", name="uq_usage_tenant_day"),
    sa.CheckConstraint(
        "executions >= 0 AND failures >= 0 AND failures <= executions", name="counts"
    ),
)

usage_reports = sa.Table(
    "usage_reports",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("destination", _enum("report_destination", REPORT_DESTINATIONS), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("identifier", sa.String(200), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column(
        "status", _enum("report_status", REPORT_STATUSES), nullable=False, server_default="pending"
    ),
    sa.Column("error", sa.Text),
    _created_at(),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("destination", "identifier", name="uq_usage_reports_identifier"),
)

backups = sa.Table(
    "backups",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("kind", _enum("backup_kind", BACKUP_KINDS), nullable=False),
    sa.Column("bucket", sa.String(63), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("manifest", JSONB),
    sa.Column(
        "status", _enum("backup_status", BACKUP_STATUSES), nullable=False, server_default="running"
    ),
    sa.Column("run_id", sa.String(64)),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("bucket", "key", name="uq_backups_object"),
    # An `ok` backup is a verified one: it must carry what was verified.
    sa.CheckConstraint(
        "status <> 'ok' OR "
        "(size_bytes IS NOT NULL AND sha256 IS NOT NULL AND finished_at IS NOT NULL)",
        name="ok_is_verified",
    ),
)

restore_drills = sa.Table(
    "restore_drills",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column(
        "backup_id",
        UUID(as_uuid=True),
        sa.ForeignKey("backups.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    sa.Column("sandbox", sa.String(128), nullable=False),
    sa.Column(
        "status", _enum("drill_status", DRILL_STATUSES), nullable=False, server_default="running"
    ),
    sa.Column("run_id", sa.String(64)),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("rto_seconds", sa.Float),
    sa.Column("checks", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("error", sa.Text),
)

# The platform's own state, backed up as a set per run: the catalog database, the Dagster
# instance's storage and an encrypted snapshot of the secret store.
PLATFORM_COMPONENTS = ("catalog", "dagster", "secrets")

platform_backups = sa.Table(
    "platform_backups",
    metadata,
    _id(),
    sa.Column("set_id", UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("component", _enum("platform_component", PLATFORM_COMPONENTS), nullable=False),
    sa.Column("kind", _enum("backup_kind", BACKUP_KINDS), nullable=False),
    sa.Column("bucket", sa.String(63), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("manifest", JSONB),
    sa.Column(
        "status", _enum("backup_status", BACKUP_STATUSES), nullable=False, server_default="running"
    ),
    sa.Column("run_id", sa.String(64)),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("bucket", "key", name="uq_platform_backups_object"),
    sa.CheckConstraint(
        "status <> 'ok' OR "
        "(size_bytes IS NOT NULL AND sha256 IS NOT NULL AND finished_at IS NOT NULL)",
        name="ok_is_verified",
    ),
)

platform_dr_drills = sa.Table(
    "platform_dr_drills",
    metadata,
    _id(),
    sa.Column("set_id", UUID(as_uuid=True)),
    sa.Column(
        "status", _enum("drill_status", DRILL_STATUSES), nullable=False, server_default="running"
    ),
    sa.Column("run_id", sa.String(64)),
    sa.Column("request_id", sa.String(128)),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # From the drill's start to the last tenant's canary execution, and per tenant.
    sa.Column("rto_seconds", sa.Float),
    # The age of the oldest backup restored (the platform set's and every tenant's).
    sa.Column("rpo_seconds", sa.Float),
    sa.Column("tenants", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("checks", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("error", sa.Text),
)

autoscaling_events = sa.Table(
    "autoscaling_events",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("signals", JSONB, nullable=False),
    sa.Column("workers_from", sa.Integer, nullable=False),
    sa.Column("workers_to", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.CheckConstraint("workers_from >= 0 AND workers_to >= 0", name="workers_non_negative"),
)

enforcement_events = sa.Table(
    "enforcement_events",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("period", sa.String(7), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("limit_value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Integer, nullable=False),
    sa.Column("action", _enum("enforcement_action", ENFORCEMENT_ACTIONS), nullable=False),
    sa.Column("run_id", sa.String(64)),
    _created_at(),
    # Delivery of the warning to the configured webhook (NULL: not delivered yet).
    sa.Column("notified_at", sa.DateTime(timezone=True)),
    sa.Column("notify_error", sa.Text),
    # One event per threshold and action per period: re-runs never warn twice.
    sa.UniqueConstraint(
        "tenant_id",
        "period",
        "metric",
        "threshold",
        "action",
        name="uq_enforcement_once_per_period",
    ),
    sa.CheckConstraint("threshold IN (80, 100)", name="threshold_values"),
    sa.CheckConstraint("period ~ '^[0-9]{4}-[0-9]{2}$'", name="period_format"),
)

promotions = sa.Table(
    "promotions",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("trigger", _enum("promotion_trigger", PROMOTION_TRIGGERS), nullable=False),
    *_change_progress("promotion_status"),
    # Where the run is (`domain.promotion.PHASES`): a re-run resumes or rolls back from it.
    sa.Column("phase", sa.String(32), nullable=False, server_default="requested"),
    # What it measured: rows copied, counts and digests compared, the hold's length, …
    sa.Column("figures", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("switched_at", sa.DateTime(timezone=True)),
    # Until when `POST /tenants/{id}/promotion/rollback` may go back to the shared schema,
    # which is kept until then and removed by a later run (`shared_removed_at`).
    sa.Column("rollback_until", sa.DateTime(timezone=True)),
    sa.Column("shared_removed_at", sa.DateTime(timezone=True)),
    # One promotion per tenant at a time.
    sa.Index(
        "uq_promotions_one_running",
        "tenant_id",
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    ),
)

# A tenant's requests held at the edge while its n8n changes places (a promotion's cutover):
# Traefik routes its hosts to the API's holder, which waits until `released_at` and then sends
# each held request on through Traefik, to wherever the tenant is served by then.
edge_holds = sa.Table(
    "edge_holds",
    metadata,
    sa.Column(
        "tenant_id",
        UUID(as_uuid=True),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("reason", sa.String(32), nullable=False),
    # What the holder sends released requests with (`routing.release_config`): they alone take
    # the release's route, past the tenant's edge limits.
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("released_at", sa.DateTime(timezone=True)),
)

# The `promotion_candidates` sensor's verdict on a shared tenant, one per tenant and day (the
# usage it judges changes daily): whether it proposes a promotion, on which trigger, and every
# reason, proposed or not.
promotion_decisions = sa.Table(
    "promotion_decisions",
    metadata,
    _id(),
    _tenant_fk(index=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column(
        "judged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("propose", sa.Boolean, nullable=False),
    sa.Column("trigger", _enum("promotion_trigger", PROMOTION_TRIGGERS)),
    sa.Column("reasons", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.UniqueConstraint("tenant_id", "day", name="uq_promotion_decisions_tenant_day"),
    sa.CheckConstraint("propose = (trigger IS NOT NULL)", name="trigger_when_proposed"),
)

# The n8n versions the platform builds images of and offers, and the upgrade paths between
# them it has tested (rehearsed on real data): `domain.upgrades.Offer`.
n8n_versions = sa.Table(
    "n8n_versions",
    metadata,
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("offered", sa.Boolean, nullable=False, server_default=sa.true()),
    _created_at("added_at"),
)

upgrade_paths = sa.Table(
    "upgrade_paths",
    metadata,
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
    _created_at("tested_at"),
)

upgrades = sa.Table(
    "upgrades",
    metadata,
    _id(),
    _tenant_fk(),
    sa.Column("from_version", sa.String(32), nullable=False),
    sa.Column("to_version", sa.String(32), nullable=False),
    *_change_progress("upgrade_status"),
    # Where the run is (`domain.upgrades.PHASES`): a re-run resumes or rolls back from it.
    sa.Column("phase", sa.String(32), nullable=False, server_default="requested"),
    # What it measured: rehearsal, migrations, the hold, the snapshot's backup, …
    sa.Column("figures", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # The fleet rollout it belongs to, if any (its runs carry the same tag).
    sa.Column("rollout", sa.String(64), index=True),
    sa.Column("switched_at", sa.DateTime(timezone=True)),
    # Until when `POST /tenants/{id}/upgrade/rollback` may restore the snapshot.
    sa.Column("rollback_until", sa.DateTime(timezone=True)),
    # One upgrade per tenant at a time.
    sa.Index(
        "uq_upgrades_one_running",
        "tenant_id",
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    ),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("route", sa.String(200), primary_key=True),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", JSONB, nullable=False),
    _created_at(),
)


# Container statistics sampled on a schedule: cumulative CPU time and resident memory per
# container, from which usage derives CPU-seconds and memory GB-hours per tenant per day.
resource_samples = sa.Table(
    "resource_samples",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _tenant_fk(index=False),
    sa.Column("container_name", sa.String(128), nullable=False),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cpu_total_ns", sa.BigInteger, nullable=False),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("container_name", "sampled_at", name="uq_resource_samples_sample"),
    sa.Index("ix_resource_samples_tenant_time", "tenant_id", "sampled_at"),
    sa.CheckConstraint("cpu_total_ns >= 0 AND memory_bytes >= 0", name="non_negative"),
)

# Production executions as the platform saw them appear, per tenant and UTC day of creation:
# counted once, when first seen, so executions deleted in n8n afterwards still count for
# metering and enforcement (the tenant can edit its own `execution_entity`, not this).
execution_tally = sa.Table(
    "execution_tally",
    metadata,
    # A tenant's row is never deleted once it ran (it is marked deleted); one removed with no
    # run (the API's "no run, no tenant") has no tally either way.
    sa.Column(
        "tenant_id",
        UUID(as_uuid=True),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("executions", sa.BigInteger, nullable=False),
    _updated_at(),
    sa.PrimaryKeyConstraint("tenant_id", "day"),
    sa.CheckConstraint("executions >= 0", name="non_negative"),
)

# The Stripe objects the platform created (meters, products, prices, features), by a stable
# lookup key, so that every run finds them again instead of creating duplicates.
stripe_objects = sa.Table(
    "stripe_objects",
    metadata,
    sa.Column("kind", _enum("stripe_object_kind", STRIPE_OBJECT_KINDS), primary_key=True),
    sa.Column("lookup_key", sa.String(200), primary_key=True),
    sa.Column("stripe_id", sa.String(200), nullable=False),
    _created_at(),
)

# Monthly chargeback per tenant (OpenCost's model: usage at rates plus idle capacity shared out).
chargeback = sa.Table(
    "chargeback",
    metadata,
    _id(),
    _tenant_fk(index=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("executions", sa.BigInteger, nullable=False),
    sa.Column("duration_hours", sa.Float, nullable=False),
    sa.Column("cpu_core_hours", sa.Float, nullable=False),
    sa.Column("memory_gb_hours", sa.Float, nullable=False),
    sa.Column("usage_cost", sa.Numeric(14, 4), nullable=False),
    sa.Column("idle_cost", sa.Numeric(14, 4), nullable=False),
    sa.Column("total_cost", sa.Numeric(14, 4), nullable=False),
    sa.Column("revenue", sa.Numeric(14, 4)),
    sa.Column("margin", sa.Numeric(14, 4)),
    sa.Column("currency", sa.String(3), nullable=False, server_default="usd"),
    sa.Column(
        "computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.UniqueConstraint("tenant_id", "month", name="uq_chargeback_tenant_month"),
    sa.CheckConstraint("month ~ '^[0-9]{4}-[0-9]{2}$'", name="month_format"),
)
