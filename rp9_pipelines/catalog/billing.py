"""Catalog queries for billing: the ids of the platform's Stripe objects by lookup key
(`stripe_objects`), the ledger of what each tenant's day was reported as to Stripe and Supabase
(`usage_reports`), tenants' customers, and the day's usage to report."""

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog.tables import plans, stripe_objects, tenants, usage, usage_reports
from rp9_pipelines.domain.billing import LedgerEntry, LedgerStatus

Destination = Literal["stripe", "supabase"]
STRIPE: Destination = "stripe"
SUPABASE: Destination = "supabase"

# The ids of the platform's Stripe objects -------------------------------------------------


def stripe_ids(connection: sa.Connection, kind: str, lookup_keys: Iterable[str]) -> dict[str, str]:
    """Stripe ids of the platform's objects of `kind`, by lookup key (those known)."""
    keys = sorted(set(lookup_keys))
    if not keys:
        return {}
    rows = connection.execute(
        sa.select(stripe_objects.c.lookup_key, stripe_objects.c.stripe_id).where(
            stripe_objects.c.kind == kind, stripe_objects.c.lookup_key.in_(keys)
        )
    )
    return {str(key): str(stripe_id) for key, stripe_id in rows}


def stripe_id(connection: sa.Connection, kind: str, lookup_key: str) -> str | None:
    return stripe_ids(connection, kind, [lookup_key]).get(lookup_key)


def remember(connection: sa.Connection, kind: str, lookup_key: str, ident: str) -> None:
    statement = insert(stripe_objects).values(kind=kind, lookup_key=lookup_key, stripe_id=ident)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["kind", "lookup_key"], set_={"stripe_id": statement.excluded.stripe_id}
        )
    )


def lookup_keys_of(connection: sa.Connection, kind: str, ids: list[str]) -> dict[str, str]:
    """Stripe id → lookup key, for the given ids that the platform created."""
    query = sa.select(stripe_objects.c.stripe_id, stripe_objects.c.lookup_key).where(
        stripe_objects.c.kind == kind, stripe_objects.c.stripe_id.in_(ids)
    )
    return {row.stripe_id: row.lookup_key for row in connection.execute(query)}


# Plans and customers ----------------------------------------------------------------------


def plan_rows(connection: sa.Connection) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in connection.execute(sa.select(plans))]


def set_plan_stripe_ids(
    connection: sa.Connection, plan: str, product_id: str, price_id: str
) -> None:
    connection.execute(
        sa.update(plans)
        .where(plans.c.name == plan)
        .values(stripe_product_id=product_id, stripe_price_id=price_id)
    )


def customer_of(connection: sa.Connection, tenant_id: uuid.UUID) -> str | None:
    query = sa.select(tenants.c.stripe_customer_id).where(tenants.c.id == tenant_id)
    value: str | None = connection.execute(query).scalar()
    return value


def set_customer(connection: sa.Connection, tenant_id: uuid.UUID, customer_id: str) -> None:
    connection.execute(
        sa.update(tenants)
        .where(tenants.c.id == tenant_id, tenants.c.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer_id, updated_at=sa.func.now())
    )


def tenant_by_customer(connection: sa.Connection, customer_id: str) -> sa.Row[Any] | None:
    query = sa.select(tenants).where(tenants.c.stripe_customer_id == customer_id)
    return connection.execute(query).first()


def customers_by_slug(connection: sa.Connection) -> dict[str, str]:
    """The Stripe customer of each tenant that is not deleted, by slug (in slug order)."""
    query = sa.select(tenants.c.slug, tenants.c.stripe_customer_id).where(
        tenants.c.stripe_customer_id.is_not(None), tenants.c.status != "deleted"
    )
    return {slug: str(c) for slug, c in connection.execute(query.order_by(tenants.c.slug))}


def executions_on(connection: sa.Connection, tenant_id: uuid.UUID, day: dt.date) -> int | None:
    """The day's executions from `usage`; None when the day was never collected."""
    query = sa.select(usage.c.executions).where(usage.c.tenant_id == tenant_id, usage.c.day == day)
    value = connection.execute(query).scalar()
    return None if value is None else int(value)


# The ledger (`usage_reports`): written `pending` before each delivery, marked after it ------


def ledger(
    connection: sa.Connection, destination: Destination, tenant_id: uuid.UUID, day: dt.date
) -> list[LedgerEntry]:
    """What the tenant's day was reported as to `destination`, oldest first."""
    query = (
        sa.select(usage_reports)
        .where(
            usage_reports.c.tenant_id == tenant_id,
            usage_reports.c.day == day,
            usage_reports.c.destination == destination,
        )
        .order_by(usage_reports.c.created_at, usage_reports.c.identifier)
    )
    return [
        LedgerEntry(
            row.identifier, row.metric, int(row.quantity), row.status, row.sent_at, row.error
        )
        for row in connection.execute(query)
    ]


def write_pending(
    connection: sa.Connection,
    destination: Destination,
    tenant_id: uuid.UUID,
    day: dt.date,
    metric: str,
    identifier: str,
    quantity: int,
) -> None:
    """Before the delivery: a crash after it leaves the report in doubt, never forgotten.

    A Stripe meter event cannot change once sent, so an identifier written once keeps its
    entry; a Supabase delivery upserts the tenant's day, so its entry is reset to the figures
    about to be sent."""
    statement = insert(usage_reports).values(
        tenant_id=tenant_id,
        day=day,
        destination=destination,
        metric=metric,
        identifier=identifier,
        quantity=quantity,
        status="pending",
    )
    if destination == SUPABASE:
        statement = statement.on_conflict_do_update(
            constraint="uq_usage_reports_identifier",
            set_={"quantity": statement.excluded.quantity, "status": "pending", "error": None},
        )
    else:
        statement = statement.on_conflict_do_nothing(constraint="uq_usage_reports_identifier")
    connection.execute(statement)


def mark(
    connection: sa.Connection,
    destination: Destination,
    identifier: str,
    status: LedgerStatus,
    error: str | None = None,
    *,
    receipt_known: bool = True,
) -> None:
    """After the delivery: `sent` or `failed` (with why). `sent_at` is when the destination
    received the report; unknown (NULL) when Stripe answered that it already held it, which
    keeps the event out of any later cancellation."""
    values: dict[str, Any] = {"status": status, "error": None if error is None else error[:2000]}
    if status == "sent":
        values["sent_at"] = sa.func.now() if receipt_known else None
    connection.execute(
        sa.update(usage_reports)
        .where(usage_reports.c.destination == destination, usage_reports.c.identifier == identifier)
        .values(**values)
    )
