"""New tenants start from the n8n version's pre-migrated template, and each n8n still makes its
own instance identity (ids and signing keys are never shared between tenants)."""

from typing import Any

import pytest
import sqlalchemy as sa

from rp9_pipelines.domain.template import TEMPLATE_DATABASE, template_schema
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.settings import Settings, sqlalchemy_url

pytestmark = pytest.mark.stack


def _rows(settings: Settings, database: str, query: str) -> list[tuple[Any, ...]]:
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=database)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(query))]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def both(shared_tenant: dict[str, Any], dedicated_tenant: dict[str, Any]) -> list[TenantNames]:
    return [TenantNames(t["slug"], t["tier"]) for t in (shared_tenant, dedicated_tenant)]


def test_the_template_is_sealed_without_any_instance_identity(
    settings: Settings, tenant_db: TenantDatabaseResource, both: list[TenantNames]
) -> None:
    schema = template_schema(settings.n8n_version)
    assert tenant_db.template_ready(schema)
    keys = _rows(settings, TEMPLATE_DATABASE, f"SELECT count(*) FROM {schema}.deployment_key")
    assert keys == [(0,)]
    sql = tenant_db.template(schema).sql
    assert f"CREATE TABLE {schema}.deployment_key" in sql
    assert f"INSERT INTO {schema}.migrations" in sql


def test_tenants_start_migrated_and_make_their_own_instance_keys(
    settings: Settings, both: list[TenantNames]
) -> None:
    schema = template_schema(settings.n8n_version)
    expected = _rows(settings, TEMPLATE_DATABASE, f"SELECT name FROM {schema}.migrations")
    instance_ids = []
    for names in both:
        migrations = _rows(
            settings, names.db_name, f"SELECT name FROM {names.db_schema}.migrations"
        )
        assert sorted(migrations) == sorted(expected), names.slug
        keys = dict(
            _rows(
                settings, names.db_name, f"SELECT type, value FROM {names.db_schema}.deployment_key"
            )
        )
        assert {"instance.id", "signing.jwt"} <= set(keys), names.slug
        instance_ids.append(keys["instance.id"])
        owner = _rows(
            settings,
            names.db_name,
            f'SELECT email FROM {names.db_schema}."user" WHERE "roleSlug" = \'global:owner\'',
        )
        assert owner == [(f"owner@{names.slug}.{settings.base_domain}",)]
    assert len(set(instance_ids)) == len(both)
