"""Chargeback automation: the chargeback of a month runs once the month is over."""

import dagster as dg

from rp9_pipelines.launches import KIND_TAG

# The asset (`assets.py`) is selected by key, so that no module of `defs/` imports another.
chargeback_job = dg.define_asset_job(
    "monthly_chargeback",
    selection=[dg.AssetKey("tenant_chargeback")],
    tags={KIND_TAG: "chargeback"},
    executor_def=dg.in_process_executor,
)

chargeback_schedule = dg.build_schedule_from_partitioned_job(
    chargeback_job,
    name="monthly_chargeback_schedule",
    hour_of_day=3,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[chargeback_job], schedules=[chargeback_schedule])
