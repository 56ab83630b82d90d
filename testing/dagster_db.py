"""A Dagster instance's storage of its own for a test session or a bench: a fresh database
`dagster_<id>` on the local stack's Postgres (dagster.yaml reads DAGSTER_PG_*), closed to
tenants like every platform database, dropped afterwards."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.settings import sqlalchemy_url


def _server() -> psycopg.Connection[tuple[object, ...]]:
    # DATABASE_URL is the catalog's, as the stack's superuser: the same server, its `postgres`.
    url = sa.make_url(sqlalchemy_url(os.environ["DATABASE_URL"]))
    url = url.set(drivername="postgresql", database="postgres")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


@contextmanager
def dagster_database() -> Iterator[dict[str, str]]:
    """The environment that points dagster.yaml at a new, empty database."""
    name = f"dagster_{secrets.token_hex(5)}"
    with _server() as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        server.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
        )
    try:
        yield {"DAGSTER_PG_DB": name}
    finally:
        with _server() as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
