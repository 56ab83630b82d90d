"""Apply the project's Supabase migrations (`deploy/supabase/migrations/*.sql`, in name order)
to the Supabase database, each once, in its own transaction, recorded with its sha256 in
`rp9_meta.supabase_migrations` (outside the schema PostgREST exposes). A recorded file whose
content changed is refused: migrations are append-only. PostgREST is then told to reload its
schema cache, so the new tables answer at once.

    python -m rp9_pipelines.catalog.supabase_migrate [--dir DIR]     # SUPABASE_DB_URL
"""

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from rp9_pipelines.settings import sqlalchemy_url

MIGRATIONS = Path(__file__).resolve().parents[2] / "deploy" / "supabase" / "migrations"
LEDGER = "rp9_meta.supabase_migrations"


@dataclass(frozen=True)
class Outcome:
    applied: list[str]
    already: list[str]


def _files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no Supabase migrations in {directory}")
    return files


def migrate(database_url: str, directory: Path = MIGRATIONS) -> Outcome:
    engine = sa.create_engine(
        sqlalchemy_url(database_url), poolclass=sa.NullPool, connect_args={"connect_timeout": 10}
    )
    applied, already = [], []
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS rp9_meta"))
            connection.execute(
                sa.text(
                    f"CREATE TABLE IF NOT EXISTS {LEDGER} (name text PRIMARY KEY,"
                    " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
        for path in _files(directory):
            body = path.read_text()
            digest = hashlib.sha256(body.encode()).hexdigest()
            with engine.begin() as connection:
                # One migrator at a time; the ledger row and the migration commit together.
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": LEDGER}
                )
                recorded = connection.execute(
                    sa.text(f"SELECT sha256 FROM {LEDGER} WHERE name = :n"), {"n": path.name}
                ).scalar()
                if recorded is not None:
                    if recorded != digest:
                        raise RuntimeError(
                            f"{path.name} changed after it was applied (sha256 {recorded} → "
                            f"{digest}); add a new migration instead"
                        )
                    already.append(path.name)
                    continue
                raw = connection.connection.dbapi_connection
                assert raw is not None
                with raw.cursor() as cursor:  # type: ignore[attr-defined]
                    cursor.execute(body)  # no parameters: psycopg runs several statements
                connection.execute(
                    sa.text(f"INSERT INTO {LEDGER} (name, sha256) VALUES (:n, :s)"),
                    {"n": path.name, "s": digest},
                )
                applied.append(path.name)
        with engine.begin() as connection:
            connection.execute(sa.text("NOTIFY pgrst, 'reload schema'"))
    finally:
        engine.dispose()
    return Outcome(applied, already)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=MIGRATIONS)
    args = parser.parse_args(argv)
    url = os.environ.get("SUPABASE_DB_URL")
    if not url:
        print("SUPABASE_DB_URL is not set (see .stack/env)", file=sys.stderr)
        return 2
    outcome = migrate(url, args.dir)
    print(
        f"supabase migrations: {len(outcome.applied)} applied "
        f"({', '.join(outcome.applied) or 'none'}), {len(outcome.already)} already applied"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
