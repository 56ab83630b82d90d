"""Catalog queries about the monthly chargeback: a month of `usage` rows as its input, and the
`chargeback` rows it computes."""

import datetime as dt
from collections.abc import Iterable
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog.tables import chargeback, tenants, usage
from rp9_pipelines.domain.chargeback import RESULT_COLUMNS


def month_usage(connection: sa.Connection, month: str) -> pd.DataFrame:
    """Every `usage` row of a month (YYYY-MM), with the tenant's slug and plan."""
    first = dt.date.fromisoformat(f"{month}-01")
    following = (first + dt.timedelta(days=32)).replace(day=1)
    query = (
        sa.select(
            usage.c.tenant_id,
            tenants.c.slug,
            tenants.c.plan,
            usage.c.day,
            usage.c.executions,
            usage.c.duration_ms_sum,
            usage.c.cpu_seconds,
            usage.c.memory_gb_hours,
        )
        .join(tenants, tenants.c.id == usage.c.tenant_id)
        .where(usage.c.day >= first, usage.c.day < following)
        .order_by(usage.c.tenant_id, usage.c.day)
    )
    result = connection.execute(query)
    frame = pd.DataFrame([tuple(row) for row in result], columns=list(result.keys()))
    frame["tenant_id"] = frame["tenant_id"].astype(str)
    return frame


def upsert_chargeback(
    connection: sa.Connection, month: str, rows: Iterable[dict[str, Any]], currency: str
) -> int:
    values = [{**row, "month": month, "currency": currency} for row in rows]
    if not values:
        return 0
    statement = insert(chargeback).values(values)
    fields = [*(name for name in RESULT_COLUMNS if name != "tenant_id"), "currency"]
    statement = statement.on_conflict_do_update(
        constraint="uq_chargeback_tenant_month",
        set_={**{name: statement.excluded[name] for name in fields}, "computed_at": sa.func.now()},
    )
    connection.execute(statement)
    return len(values)
