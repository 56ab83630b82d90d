import dagster as dg

from rp9_pipelines.catalog import migrate
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource


@dg.op
def upgrade_catalog(context: dg.OpExecutionContext, catalog: CatalogResource) -> str:
    """Apply the catalog's Alembic migrations up to head."""
    migrate.upgrade(catalog.database_url)
    revision = migrate.current_revision(catalog.database_url)
    context.log.info(f"catalog at revision {revision}")
    return revision


@dg.job(tags={KIND_TAG: "platform"})
def migrate_catalog() -> None:
    """Bring the platform catalog schema to the latest migration."""
    upgrade_catalog()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[migrate_catalog])
