"""Alembic migrations of the platform catalog, run programmatically or as a small CLI.

python -m rp9_pipelines.catalog.migrate up|down|current [REVISION]
"""

import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from rp9_pipelines.settings import get_settings, sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is an INI parser: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str:
    engine = sa.create_engine(sqlalchemy_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision() or "base"
    finally:
        engine.dispose()


def main(argv: list[str]) -> int:
    usage = "usage: python -m rp9_pipelines.catalog.migrate up|down|current [REVISION]"
    if not argv or argv[0] not in {"up", "down", "current"}:
        print(usage, file=sys.stderr)
        return 2
    url = get_settings().database_url
    if argv[0] == "up":
        upgrade(url, argv[1] if len(argv) > 1 else "head")
    elif argv[0] == "down":
        downgrade(url, argv[1] if len(argv) > 1 else "base")
    print(f"catalog at revision {current_revision(url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
