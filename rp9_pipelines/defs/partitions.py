"""The partitions usage and chargeback share: one key per (UTC day, tenant slug), and one per
month."""

import datetime as dt

import dagster as dg

TENANTS_PARTITION = "tenants"
DAY_DIMENSION, TENANT_DIMENSION = "day", "tenant"
FIRST_DAY = "2026-01-01"

tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS_PARTITION)
# end_offset=1: today's partition exists too (the day so far), so the running day can be
# measured on demand; the daily schedule materialises each day again once it is over.
day_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, end_offset=1)
tenant_day_partitions = dg.MultiPartitionsDefinition(
    {DAY_DIMENSION: day_partitions, TENANT_DIMENSION: tenant_partitions}
)
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=FIRST_DAY)


def tenant_day_key(day: str, slug: str) -> dg.MultiPartitionKey:
    """The partition key of one tenant's day (`day` as YYYY-MM-DD)."""
    return dg.MultiPartitionKey({DAY_DIMENSION: day, TENANT_DIMENSION: slug})


def tenant_day(context: dg.AssetExecutionContext) -> tuple[str, dt.date]:
    """The (tenant slug, day) of the partition being materialised."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        raise dg.Failure(f"expected a (day, tenant) partition, got {key!r}")
    keys = key.keys_by_dimension
    return keys[TENANT_DIMENSION], dt.date.fromisoformat(keys[DAY_DIMENSION])


def missing_tenant_keys(instance: dg.DagsterInstance, slugs: list[str]) -> list[str]:
    """Those of `slugs` that have no `tenants` partition key yet."""
    known = set(instance.get_dynamic_partitions(TENANTS_PARTITION))
    return sorted(set(slugs) - known)


def ensure_tenant_keys(instance: dg.DagsterInstance, slugs: list[str]) -> None:
    """Every one of `slugs` has its `tenants` partition key (what the sensor
    `register_tenant_partitions` does within a minute, now)."""
    missing = missing_tenant_keys(instance, slugs)
    if missing:
        instance.add_dynamic_partitions(TENANTS_PARTITION, missing)
