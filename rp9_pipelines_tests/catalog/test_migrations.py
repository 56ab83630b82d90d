import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rp9_pipelines.catalog import migrate
from rp9_pipelines.catalog.tables import metadata
from rp9_pipelines.settings import sqlalchemy_url

pytestmark = pytest.mark.stack

EXPECTED_TABLES = {
    "plans",
    "tenants",
    "edge_holds",
    "tenant_instances",
    "quotas",
    "usage",
    "usage_reports",
    "backups",
    "restore_drills",
    "autoscaling_events",
    "enforcement_events",
    "promotions",
    "upgrades",
    "idempotency_keys",
    "resource_samples",
    "stripe_objects",
    "chargeback",
    "execution_tally",
    "platform_backups",
    "platform_dr_drills",
    "promotion_decisions",
    "n8n_versions",
    "upgrade_paths",
}


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_up_from_empty_down_to_base_and_up_again(fresh_database_url: str) -> None:
    assert table_names(fresh_database_url) == set()

    migrate.upgrade(fresh_database_url)
    assert table_names(fresh_database_url) == EXPECTED_TABLES
    assert migrate.current_revision(fresh_database_url) == "0012"

    migrate.downgrade(fresh_database_url)
    assert table_names(fresh_database_url) == set()
    assert migrate.current_revision(fresh_database_url) == "base"

    migrate.upgrade(fresh_database_url)
    assert table_names(fresh_database_url) == EXPECTED_TABLES


def test_migrations_match_the_table_definitions(fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url)
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    engine.dispose()


@pytest.fixture
def catalog(fresh_database_url: str) -> sa.Engine:
    migrate.upgrade(fresh_database_url)
    return sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)


def insert_tenant(connection: sa.Connection, slug: str) -> uuid.UUID:
    statement = sa.text(
        "INSERT INTO tenants (slug, name, plan, n8n_version) "
        "VALUES (:slug, :slug, 'pro', '2.20.12') RETURNING id"
    )
    tenant_id: uuid.UUID = connection.execute(statement, {"slug": slug}).scalar_one()
    return tenant_id


VIOLATIONS = [
    (
        "duplicate slug",
        "INSERT INTO tenants (slug, name, plan, n8n_version) "
        "VALUES ('acme', 'Again', 'pro', '2.20.12')",
    ),
    (
        "slug not a DNS label",
        "INSERT INTO tenants (slug, name, plan, n8n_version) "
        "VALUES ('Bad_Slug', 'x', 'pro', '2.20.12')",
    ),
    (
        "unknown plan",
        "INSERT INTO tenants (slug, name, plan, n8n_version) "
        "VALUES ('other', 'x', 'gold', '2.20.12')",
    ),
    ("unknown status", "UPDATE tenants SET status = 'sleeping'"),
    (
        "usage twice for a day",
        "INSERT INTO usage (tenant_id, day, executions) "
        "SELECT id, DATE '2026-11-01', 5 FROM tenants",
    ),
    (
        "usage for a missing tenant",
        "INSERT INTO usage (tenant_id, day) VALUES (gen_random_uuid(), DATE '2026-11-02')",
    ),
    (
        "ok backup without checksum",
        "INSERT INTO backups (tenant_id, kind, bucket, key, status) "
        "SELECT id, 'daily', 'b', 'k', 'ok' FROM tenants",
    ),
    (
        "warn twice in a period",
        "INSERT INTO enforcement_events "
        "(tenant_id, period, metric, value, limit_value, threshold, action) "
        "SELECT id, '2026-11', 'executions', 80, 100, 80, 'warn' FROM tenants",
    ),
    (
        "threshold other than 80/100",
        "INSERT INTO enforcement_events "
        "(tenant_id, period, metric, value, limit_value, threshold, action) "
        "SELECT id, '2026-11', 'executions', 90, 100, 90, 'warn' FROM tenants",
    ),
]


@pytest.mark.parametrize(("case", "statement"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_constraints_protect_the_data(catalog: sa.Engine, case: str, statement: str) -> None:
    with catalog.begin() as connection:
        tenant_id = insert_tenant(connection, "acme")
        connection.execute(
            sa.text("INSERT INTO usage (tenant_id, day, executions) VALUES (:t, :d, 3)"),
            {"t": tenant_id, "d": dt.date(2026, 11, 1)},
        )
        connection.execute(
            sa.text(
                "INSERT INTO enforcement_events "
                "(tenant_id, period, metric, value, limit_value, threshold, action) "
                "VALUES (:t, '2026-11', 'executions', 81, 100, 80, 'warn')"
            ),
            {"t": tenant_id},
        )
    with pytest.raises(sa.exc.IntegrityError), catalog.begin() as connection:
        connection.execute(sa.text(statement))
    catalog.dispose()


def test_default_plans_are_seeded(catalog: sa.Engine) -> None:
    with catalog.connect() as connection:
        plans = connection.execute(sa.text("SELECT name FROM plans ORDER BY name")).scalars().all()
    catalog.dispose()
    assert plans == ["business", "enterprise", "pro", "starter"]
