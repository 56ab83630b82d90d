from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from rp9_pipelines.resources.health import Health, probe
from rp9_pipelines.settings import sqlalchemy_url


class CatalogResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The platform catalog database (`rp9_platform`)."""

    database_url: str
    connect_timeout_s: int = 5

    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(
                sqlalchemy_url(self.database_url),
                pool_pre_ping=True,
                connect_args={"connect_timeout": self.connect_timeout_s},
            )
        return self._engine

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def ping(self) -> Health:
        def check() -> str:
            with self.engine.connect() as connection:
                return (
                    f"PostgreSQL {connection.execute(sa.text('SHOW server_version')).scalar_one()}"
                )

        return probe("postgres", check)
