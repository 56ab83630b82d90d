"""The Postgres server that holds the tenants' n8n data, reached as the platform's tenant
administration login (TENANT_ADMIN_DATABASE_URL): the connection that `TenantDatabaseResource`
and `N8nDataResource` share, and the rules every platform session on a tenant's database
follows.

A tenant owns the objects in its schema (or database) and may define functions, operators,
casts, views, rules, triggers and policies there. The platform never runs any of them:

- every session resolves names in `pg_catalog` only (`SESSION_OPTIONS`, sent as startup options,
  which win over the `ALTER DATABASE/ROLE … SET search_path` a dedicated owner can set), and row
  security is off, so a policy is an error instead of a tenant's function run by the platform;
- SQL names every function (`pg_catalog.now()`) and table (`ONLY "t_x".execution_entity`) in
  full;
- before reading a tenant's tables, `check_relations` makes sure they are plain tables of the
  tenant (not views, without rules or row security) whose columns have built-in types and whose
  indexes, CHECK constraints and statistics use built-in objects only (the planner evaluates
  their constant expressions, as the user who plans the query).
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.settings import sqlalchemy_url

# Startup options win over what a database's owner sets (`ALTER DATABASE … SET`), so each
# setting that could make the planner or the executor run a tenant's code is pinned here: name
# resolution, row security, and constraint exclusion (which evaluates CHECK constraints).
SESSION_OPTIONS = (
    "-c search_path=pg_catalog,pg_temp -c row_security=off -c constraint_exclusion=partition"
)


class PostgresAdminResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A short AUTOCOMMIT connection per call, to any database of the server, with the
    platform's pinned session options."""

    admin_url: str
    connect_timeout_s: int = 5

    def url(self, database: str) -> sa.URL:
        return sa.make_url(sqlalchemy_url(self.admin_url)).set(database=database)

    def session_options(self) -> str:
        return SESSION_OPTIONS

    @contextmanager
    def connect(self, database: str) -> Iterator[sa.Connection]:
        engine = sa.create_engine(
            self.url(database),
            poolclass=sa.NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": self.connect_timeout_s,
                "options": self.session_options(),
            },
        )
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()

    def waiting_on_lock(self, names: TenantNames) -> int:
        """Sessions of the tenant's role in its database waiting for a lock."""
        with self.connect("postgres") as connection:
            rows = execute(
                connection,
                sql.SQL(
                    "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE usename = {}"
                    " AND datname = {} AND wait_event_type = 'Lock'"
                ).format(sql.Literal(names.db_role), sql.Literal(names.db_name)),
            )
        return int(rows[0][0]) if rows else 0


def raw_connection(connection: sa.Connection) -> psycopg.Connection[Any]:
    raw = connection.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def execute(connection: sa.Connection, statement: sql.SQL | sql.Composed) -> list[tuple[Any, ...]]:
    """Run a statement composed with psycopg (identifiers quoted by it); its rows, if any."""
    with raw_connection(connection).cursor() as cursor:
        cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


class UnsafeRelation(RuntimeError):
    """A tenant's table the platform will not read (a view, a rule, row security, a type or
    collation of the tenant's own, another owner): the tenant is reported unreadable."""


# What the platform reads of a tenant's n8n: table → the columns it reads.
Reads = Mapping[str, Sequence[str]]

# Run in a session with `SESSION_OPTIONS` (operators resolve in pg_catalog only).
_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind, o.rolname, o.rolsuper, c.relrowsecurity,
       EXISTS (SELECT FROM pg_catalog.pg_rewrite WHERE ev_class = c.oid),
       pg_catalog.has_schema_privilege(n.oid, 'USAGE')
         AND pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       EXISTS (
         SELECT FROM pg_catalog.pg_depend dependent
         JOIN pg_catalog.pg_depend used
           ON used.classid = dependent.classid AND used.objid = dependent.objid
         WHERE dependent.refclassid = 'pg_class'::regclass AND dependent.refobjid = c.oid
           AND (dependent.classid IN ('pg_constraint'::regclass, 'pg_statistic_ext'::regclass)
                OR dependent.classid = 'pg_class'::regclass
                   AND EXISTS (SELECT FROM pg_catalog.pg_index
                               WHERE indexrelid = dependent.objid))
           AND used.refclassid NOT IN ('pg_class'::regclass, 'pg_namespace'::regclass)
           AND used.refobjid >= 16384
       ),
       a.attname,
       t.typnamespace = 'pg_catalog'::regnamespace,
       a.attcollation = 0 OR co.collnamespace = 'pg_catalog'::regnamespace
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
LEFT JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attname = ANY(%(columns)s::name[])
LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = ANY(%(schemas)s::name[]) AND c.relname = ANY(%(tables)s::name[])
"""


def check_relations(
    connection: psycopg.Connection[Any], owners: Mapping[str, str], reads: Reads
) -> tuple[set[str], dict[str, str]]:
    """One catalog query for every schema of `owners` (schema → the tenant's role) in the
    connection's database: which hold none of the tables of `reads` (n8n has not created them
    yet), and what is wrong with the others that must not be read, by schema. A schema in
    neither may be read: each table is an ordinary table owned by the tenant's role (or a
    superuser, whom the tenant cannot be), without rules or row security, whose indexes, CHECK
    constraints and statistics use only built-in objects (objects made at initdb have OIDs below
    16384), and each column read exists with a type and collation of `pg_catalog` (a type of the
    tenant's own could carry an implicit cast to a function of its own)."""
    columns = sorted({column for wanted in reads.values() for column in wanted})
    with connection.cursor() as cursor:
        cursor.execute(
            _RELATIONS,
            {"schemas": sorted(owners), "tables": sorted(reads), "columns": columns},
        )
        rows = cursor.fetchall()
    found: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for row in rows:
        found.setdefault(row[0], {}).setdefault(row[1], []).append(row)
    absent = {schema for schema in owners if schema not in found}
    problems: dict[str, str] = {}
    for schema, tables in found.items():
        issues = [
            issue
            for table, wanted in sorted(reads.items())
            for issue in _table_issues(table, wanted, tables.get(table), owners[schema])
        ]
        if issues:
            problems[schema] = f"{schema}: " + "; ".join(issues)
    return absent, problems


def _table_issues(
    table: str, wanted: Sequence[str], rows: list[tuple[Any, ...]] | None, owner: str
) -> list[str]:
    if not rows:
        return [f"{table} is missing"]
    _, _, relkind, rolname, rolsuper, row_security, has_rules, may_read, foreign = rows[0][:9]
    issues = []
    if relkind != "r":
        issues.append(f"{table} is not an ordinary table (relkind {relkind})")
    if rolname != owner and not rolsuper:
        issues.append(f"{table} is owned by {rolname}, not {owner}")
    if row_security:
        issues.append(f"{table} has row-level security")
    if has_rules:
        issues.append(f"{table} has rules")
    if not may_read:
        issues.append(f"{table} is not readable by the platform's login")
    if foreign:
        issues.append(f"{table} has an index, constraint or statistics using the tenant's objects")
    columns = {row[9]: (row[10], row[11]) for row in rows if row[9] is not None}
    for column in wanted:
        if column not in columns:
            issues.append(f"{table}.{column} is missing")
        elif not columns[column][0]:
            issues.append(f"{table}.{column} has a type outside pg_catalog")
        elif not columns[column][1]:
            issues.append(f"{table}.{column} has a collation outside pg_catalog")
    return issues


def require_readable(
    connection: psycopg.Connection[Any], schema: str, owner: str, reads: Reads
) -> None:
    """`check_relations` for one schema whose tables must all be there and safe to read."""
    absent, problems = check_relations(connection, {schema: owner}, reads)
    if schema in absent:
        raise UnsafeRelation(f"{schema}: none of {', '.join(sorted(reads))} exists")
    if schema in problems:
        raise UnsafeRelation(problems[schema])
