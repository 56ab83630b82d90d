"""The Postgres server that holds the tenants' n8n data, reached as the platform's admin role
(DATABASE_URL): the connection that `TenantDatabaseResource` and `N8nDataResource` share."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.settings import sqlalchemy_url


class PostgresAdminResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A short AUTOCOMMIT connection per call, to any database of the server."""

    admin_url: str
    connect_timeout_s: int = 5

    def url(self, database: str) -> sa.URL:
        return sa.make_url(sqlalchemy_url(self.admin_url)).set(database=database)

    @contextmanager
    def connect(self, database: str) -> Iterator[sa.Connection]:
        engine = sa.create_engine(
            self.url(database),
            poolclass=sa.NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": self.connect_timeout_s},
        )
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()


def execute(connection: sa.Connection, statement: sql.Composable) -> list[tuple[Any, ...]]:
    """Run a statement composed with psycopg (identifiers quoted by it); its rows, if any."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
