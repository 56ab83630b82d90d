"""A change to a tenant that runs in phases (a promotion, an upgrade: `tables._change_progress`
plus `phase` and `figures`): where its run is, and what it measured."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


def advance(
    connection: sa.Connection,
    table: sa.Table,
    change_id: uuid.UUID,
    phase: str,
    figures: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """Record that the run reached `phase` (a step with its time), what it measured (merged
    into `figures`), and `values` of other columns."""
    step = {"phase": phase, "at": dt.datetime.now(dt.UTC).isoformat()}
    connection.execute(
        sa.update(table)
        .where(table.c.id == change_id)
        .values(
            phase=phase,
            steps=table.c.steps.op("||")(sa.cast([step], JSONB)),
            figures=table.c.figures.op("||")(sa.cast(figures or {}, JSONB)),
            **values,
        )
    )


def conclude(
    connection: sa.Connection, table: sa.Table, change_id: uuid.UUID, **values: Any
) -> None:
    """Set columns of the change (its outcome, …) without a step."""
    connection.execute(sa.update(table).where(table.c.id == change_id).values(**values))
