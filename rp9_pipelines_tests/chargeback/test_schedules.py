"""Chargeback automation: the month's chargeback runs once the month is over and reads every
tenant day of that month."""

import dagster as dg
import pytest

from rp9_pipelines.definitions import defs
from rp9_pipelines.defs.partitions import TENANTS_PARTITION

pytestmark = pytest.mark.stack


def test_chargeback_runs_monthly() -> None:
    repository = defs().get_repository_def()
    chargeback = repository.get_schedule_def("monthly_chargeback_schedule")
    assert chargeback.job_name == "monthly_chargeback"
    assert chargeback.default_status == dg.DefaultScheduleStatus.RUNNING


def test_a_month_of_chargeback_reads_every_tenant_day_of_that_month() -> None:
    from dagster._core.definitions.partitions.context import partition_loading_context

    graph = defs().resolve_asset_graph()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme", "globex"])
        with partition_loading_context(dynamic_partitions_store=instance):
            parents = graph.get_parents_partitions(
                asset_key=dg.AssetKey("tenant_chargeback"), partition_key="2026-02-01"
            ).parent_partitions
    keys = {(p.asset_key.to_user_string(), str(p.partition_key)) for p in parents}
    days = [f"2026-02-{day:02d}" for day in range(1, 29)]
    assert keys == {("tenant_usage_daily", f"{d}|{t}") for d in days for t in ("acme", "globex")}
