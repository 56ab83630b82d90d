"""A shared tenant's n8n data copied into its dedicated database while it serves, then caught up
once it is frozen (a promotion, `services/promotion.py`).

The dedicated database starts as a copy of the n8n version's template (the platform's own
schema, no tenant object in it), so the tables and columns to copy are the template's: the
shared schema must have exactly those tables, each safe to read (`require_readable`: plain
tables of the tenant with built-in types and no rules or row security), or nothing is copied.
Rows travel as binary COPY from the shared database to the dedicated one, as the tenant
administrator: no tenant function runs on either side. Foreign keys of the copy are dropped
while it is filled (tables are emptied and filled in any order, and again at the catch-up)
and added back, validated, once it is exact.

The cutover boots the dedicated n8n before it freezes the shared one (`locked`): the copy's
tables are taken by one transaction, which catches them up, so that n8n waits on its first
read until they are exact. Its role's rights on them are withheld until that transaction
commits: if it never does (an error, the run killed), the n8n booted on the copy fails at
that read instead of serving a copy that was not caught up.
"""

import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from rp9_pipelines.domain.promotion import DELTA_KEY, DELTA_TABLE, Side, delta
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.postgres_admin import (
    PostgresAdminResource,
    UnsafeRelation,
    raw_connection,
    require_readable,
)

# Compared by digest, row by row, besides every table's count (the issue's "digests of
# workflows and credentials").
DIGESTED = ("workflow_entity", "credentials_entity")
LOCK_TIMEOUT = "10s"
# pg_trigger.tgtype's INSERT, DELETE and TRUNCATE bits (n8n's own trigger fires on UPDATE).
_FIRED_BY_CATCH_UP = 4 | 8 | 32
# Executions that may still change: not stopped, or waiting to resume.
_UNSETTLED = """
SELECT coalesce(
  min(id) FILTER (WHERE "stoppedAt" IS NULL OR "waitTill" IS NOT NULL
                  OR status IN ('new', 'running', 'waiting', 'unknown')),
  max(id) + 1,
  0)
FROM ONLY {}.execution_entity
"""


class CopyRefused(RuntimeError):
    """The shared schema cannot be copied as it is (a table the template lacks, one the
    platform will not read): nothing was copied."""


@dataclass(frozen=True)
class Copied:
    rows: dict[str, int]
    seconds: float
    # Executions from this id on had not stopped at the snapshot: copied again at the freeze.
    floor: int


def _layout(connection: psycopg.Connection[Any], schema: str) -> dict[str, list[str]]:
    """Every relation of `schema` that holds rows, with its columns in order."""
    rows = connection.execute(
        "SELECT c.relname, a.attname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
        (schema,),
    ).fetchall()
    layout: dict[str, list[str]] = {}
    for table, column in rows:
        layout.setdefault(table, []).append(column)
    return layout


def _table(schema: str, table: str) -> sql.Composed:
    return sql.SQL("ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def _columns(columns: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


class TenantCopy:
    """One promotion's copy: `source` (the shared schema) into `target` (the dedicated
    database), through the tenant administrator's login `db`."""

    def __init__(self, db: PostgresAdminResource, source: TenantNames, target: TenantNames):
        self.db, self.source, self.target = db, source, target
        # The transaction of `locked`, while it lasts: every use of the copy goes through it.
        self._held: psycopg.Connection[Any] | None = None

    @contextmanager
    def _dst(self) -> Iterator[psycopg.Connection[Any]]:
        if self._held is not None:
            yield self._held
            return
        with self.db.connect(self.target.db_name) as connection:
            yield raw_connection(connection)

    def _held_tables(
        self, layout: Iterable[str], open_tables: Iterable[str]
    ) -> sql.Composed | None:
        """The copy's tables of `layout` but `open_tables`, qualified, comma-separated (None:
        none)."""
        tables = sorted(set(layout) - set(open_tables))
        names = [sql.Identifier(self.target.db_schema, t) for t in tables]
        return sql.SQL(", ").join(names) if names else None

    def withhold(self, open_tables: Iterable[str] = ()) -> None:
        """The tenant's role loses its rights on the copy's tables but `open_tables` (it owns
        them), committed: only `locked`'s commit gives them back."""
        with self._dst() as dst:
            held = self._held_tables(_layout(dst, self.target.db_schema), open_tables)
            if held is not None:
                role = sql.Identifier(self.target.db_role)
                dst.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(held, role))

    @contextmanager
    def locked(self, open_tables: Iterable[str] = ()) -> Iterator[None]:
        """One transaction holding every table of the copy but `open_tables`, in which the copy
        is caught up, compared and given its foreign keys; it gives the tenant's role its rights
        back (`withhold`) and commits when the block ends without an error (else it is rolled
        back, the rights still withheld). Refused (`CopyRefused`) when the copy has anything the
        catch-up would run as the platform: a trigger it fires, a constraint or index of the
        tenant's functions."""
        with self.db.connect(self.target.db_name) as connection:
            dst = raw_connection(connection)
            dst.execute("BEGIN")
            layout = _layout(dst, self.target.db_schema)
            held = self._held_tables(layout, open_tables)
            if held is not None:
                role = sql.Identifier(self.target.db_role)
                dst.execute(sql.SQL("GRANT ALL ON TABLE {} TO {}").format(held, role))
                dst.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(held))
            # The tenant could log in to the copy while it booted: what the catch-up does to
            # its tables (TRUNCATE, COPY, DELETE) must not run anything of the tenant's.
            triggers = dst.execute(
                "SELECT c.relname, t.tgname FROM pg_catalog.pg_trigger t"
                " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND NOT t.tgisinternal"
                f" AND t.tgtype & {_FIRED_BY_CATCH_UP} <> 0 ORDER BY 1, 2",
                (self.target.db_schema,),
            ).fetchall()
            problems = [f"triggers on insert, delete or truncate {triggers}"] if triggers else []
            try:
                require_readable(dst, self.target.db_schema, self.target.db_role, layout)
            except UnsafeRelation as error:
                problems.append(str(error))
            if problems:
                raise CopyRefused(f"{self.target.db_name}: " + "; ".join(problems))
            self._held = dst
            try:
                yield
            finally:
                self._held = None
            # Only when all went well (as `_snapshot`): else the connection closes with it.
            dst.execute("COMMIT")

    def waiting(self) -> int:
        """Sessions of the tenant's role on the copy waiting for a lock (an n8n booted on it,
        at its first read while `locked` holds the tables)."""
        return self.db.waiting_on_lock(self.target)

    def _tables(
        self, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]
    ) -> dict[str, list[str]]:
        """The template's tables and columns, once the shared schema was found to have the
        same ones, safe to read."""
        wanted = _layout(dst, self.target.db_schema)
        found = _layout(src, self.source.db_schema)
        if found != wanted:
            extra = sorted(found.keys() - wanted.keys())
            missing = sorted(wanted.keys() - found.keys())
            changed = sorted(t for t in found.keys() & wanted.keys() if found[t] != wanted[t])
            raise CopyRefused(
                f"{self.source.db_schema} differs from the n8n template: tables only in the"
                f" shared schema {extra}, missing {missing}, other columns {changed}"
            )
        require_readable(src, self.source.db_schema, self.source.db_role, wanted)
        return wanted

    def foreign_keys(self) -> list[list[str]]:
        """The copy's foreign keys as [table, name, definition] (names qualified)."""
        with self._dst() as dst:
            rows = dst.execute(
                "SELECT c.relname, k.conname, pg_catalog.pg_get_constraintdef(k.oid)"
                " FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE k.contype = 'f' AND n.nspname = %s ORDER BY 1, 2",
                (self.target.db_schema,),
            )
            return [list(row) for row in rows.fetchall()]

    def _drop_constraint(self, raw: psycopg.Connection[Any], table: str, name: str) -> None:
        raw.execute(
            sql.SQL("ALTER TABLE {}.{} DROP CONSTRAINT IF EXISTS {}").format(
                sql.Identifier(self.target.db_schema), sql.Identifier(table), sql.Identifier(name)
            )
        )

    def drop_foreign_keys(self, keys: list[list[str]]) -> None:
        with self._dst() as raw:
            for table, name, _ in keys:
                self._drop_constraint(raw, table, name)

    def add_foreign_keys(self, keys: list[list[str]]) -> None:
        """Back, validated against the copied rows (the definitions are the template's)."""
        with self._dst() as raw, raw.transaction():
            for table, name, definition in keys:
                self._drop_constraint(raw, table, name)
                raw.execute(
                    sql.SQL("ALTER TABLE {}.{} ADD CONSTRAINT {} ").format(
                        sql.Identifier(self.target.db_schema),
                        sql.Identifier(table),
                        sql.Identifier(name),
                    )
                    + sql.SQL(definition)
                )

    def _copy(
        self,
        src: psycopg.Connection[Any],
        dst: psycopg.Connection[Any],
        table: str,
        columns: list[str],
        where: sql.Composable | None = None,
    ) -> int:
        cols = _columns(columns)
        query = sql.SQL("SELECT {} FROM {}").format(cols, _table(self.source.db_schema, table))
        if where is not None:
            query = query + sql.SQL(" WHERE ") + where
        out = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)
        into = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(self.target.db_schema), sql.Identifier(table), cols
        )
        with src.cursor() as reading, dst.cursor() as writing:
            with reading.copy(out) as source, writing.copy(into) as target:
                for block in source:
                    target.write(block)
            return max(writing.rowcount, 0)

    @contextmanager
    def _snapshot(
        self,
    ) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any], dict[str, list[str]]]]:
        """The shared database read from one snapshot (a lock held by the tenant fails it after
        `LOCK_TIMEOUT` instead of stalling it), the dedicated one, and the tables to copy."""
        with self.db.connect(self.source.db_name) as s, self._dst() as dst:
            src = raw_connection(s)
            src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            src.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            yield src, dst, self._tables(src, dst)
            # Only when all went well: on an error (or the run interrupted mid-COPY) the
            # connection is closed with its transaction, and the error is what propagates.
            src.execute("COMMIT")

    def copy_all(self) -> Copied:
        """Every row of the shared schema, from one snapshot, into the emptied copy (one
        transaction: all of it or nothing)."""
        started = time.monotonic()
        with self._snapshot() as (src, dst, tables):
            floor = src.execute(
                sql.SQL(_UNSETTLED).format(sql.Identifier(self.source.db_schema))
            ).fetchone()
            rows: dict[str, int] = {}
            with dst.transaction():
                self._truncate(dst, tables)
                for table, columns in sorted(tables.items()):
                    rows[table] = self._copy(src, dst, table, columns)
            names = [sql.Identifier(self.target.db_schema, t) for t in sorted(tables)]
            dst.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(names)))
        return Copied(rows, time.monotonic() - started, int(floor[0]) if floor else 0)

    def _truncate(self, dst: psycopg.Connection[Any], tables: Iterable[str]) -> None:
        names = [sql.Identifier(self.target.db_schema, t) for t in sorted(tables)]
        if names:
            dst.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(names)))

    def catch_up(self, floor: int) -> Copied:
        """With the source frozen: every table again, but `DELTA_TABLE` by difference (what is
        gone deleted, what is new or may have changed since the snapshot copied), and every
        sequence's value. One transaction on the copy."""
        started = time.monotonic()
        with self._snapshot() as (src, dst, tables):
            rows: dict[str, int] = {}
            whole = {t: c for t, c in tables.items() if t != DELTA_TABLE}
            with dst.transaction():
                self._truncate(dst, whole)
                for table, columns in sorted(whole.items()):
                    rows[table] = self._copy(src, dst, table, columns)
                if DELTA_TABLE in tables:
                    rows[DELTA_TABLE] = self._copy_delta(src, dst, tables[DELTA_TABLE], floor)
                for name, value in self._sequences(src, self.source.db_schema).items():
                    target = sql.Identifier(self.target.db_schema, name).as_string(dst)
                    dst.execute(
                        "SELECT pg_catalog.setval(%s::regclass, %s, %s)",
                        (target, value[0], value[1]),
                    )
        return Copied(rows, time.monotonic() - started, floor)

    def _ids(self, connection: psycopg.Connection[Any], schema: str) -> set[int]:
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.Identifier(DELTA_KEY), _table(schema, DELTA_TABLE)
        )
        return {int(row[0]) for row in connection.execute(query)}

    def _copy_delta(
        self,
        src: psycopg.Connection[Any],
        dst: psycopg.Connection[Any],
        columns: list[str],
        floor: int,
    ) -> int:
        change = delta(
            self._ids(src, self.source.db_schema), self._ids(dst, self.target.db_schema), floor
        )
        key = sql.Identifier(DELTA_KEY)
        if change.delete:
            dst.execute(
                sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
                    _table(self.target.db_schema, DELTA_TABLE), key
                ),
                (list(change.delete),),
            )
        if not change.copy:
            return 0
        where = sql.SQL("{} = ANY({})").format(key, sql.Literal(list(change.copy)))
        return self._copy(src, dst, DELTA_TABLE, columns, where)

    @staticmethod
    def _sequences(connection: psycopg.Connection[Any], schema: str) -> dict[str, tuple[int, bool]]:
        names = connection.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'S' ORDER BY 1",
            (schema,),
        ).fetchall()
        values = {}
        for (name,) in names:
            row = connection.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()
            assert row is not None
            values[name] = (int(row[0]), bool(row[1]))
        return values

    def _side(
        self, connection: psycopg.Connection[Any], schema: str, tables: dict[str, list[str]]
    ) -> Side:
        rows = {}
        for table in sorted(tables):
            count = connection.execute(
                sql.SQL("SELECT count(*) FROM {}").format(_table(schema, table))
            ).fetchone()
            rows[table] = int(count[0]) if count else 0
        digests = {}
        for table in DIGESTED:
            if table in tables:
                digest = connection.execute(
                    sql.SQL(
                        "SELECT coalesce(pg_catalog.md5(pg_catalog.string_agg("
                        "pg_catalog.md5(ROW({})::text), '' ORDER BY id)), '') FROM {}"
                    ).format(_columns(tables[table]), _table(schema, table))
                ).fetchone()
                digests[table] = str(digest[0]) if digest else ""
        if DELTA_TABLE in tables:
            ids = sorted(self._ids(connection, schema))
            digests[f"{DELTA_TABLE} ids"] = hashlib.sha256(
                ",".join(map(str, ids)).encode()
            ).hexdigest()
        sequences = {
            name: value if called else value - 1
            for name, (value, called) in self._sequences(connection, schema).items()
        }
        return Side(rows, digests, sequences)

    def compare(self) -> tuple[Side, Side]:
        """Both sides' figures, from one snapshot of each (the source is frozen)."""
        with self._snapshot() as (src, dst, tables):
            return (
                self._side(src, self.source.db_schema, tables),
                self._side(dst, self.target.db_schema, tables),
            )

    def executions_after(self, last_id: int) -> int:
        """Executions the copy holds past `last_id` (made on the dedicated side, which has been
        the tenant's since the switch: its table is read only if it is still safe to read)."""
        with self.db.connect(self.target.db_name) as connection:
            require_readable(
                raw_connection(connection),
                self.target.db_schema,
                self.target.db_role,
                {"execution_entity": ["id"]},
            )
            row = (
                raw_connection(connection)
                .execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE id > %s").format(
                        _table(self.target.db_schema, "execution_entity")
                    ),
                    (last_id,),
                )
                .fetchone()
            )
            return int(row[0]) if row else 0

    def last_execution_id(self) -> int:
        with self._dst() as dst:
            row = dst.execute(
                sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
                    _table(self.target.db_schema, "execution_entity")
                )
            ).fetchone()
            return int(row[0]) if row else 0
