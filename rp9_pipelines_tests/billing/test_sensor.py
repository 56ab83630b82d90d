"""The sensor that follows usage with meter runs: one run per new usage materialisation, for
the same (day, tenant) partition, tagged with the tenant, never twice (cursor and run key)."""

import dagster as dg

from rp9_pipelines.defs.billing.stripe import USAGE_ASSET, stripe_meter_after_usage
from rp9_pipelines.defs.partitions import tenant_day_key
from rp9_pipelines.launches import TENANT_TAG


def usage_materialised(instance: dg.DagsterInstance, day: str, slug: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=USAGE_ASSET, partition=tenant_day_key(day, slug))
    )


def tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = stripe_meter_after_usage(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def test_each_usage_materialisation_requests_one_meter_run_for_its_partition() -> None:
    with dg.instance_for_test() as instance:
        assert isinstance(tick(instance, None), dg.SkipReason)
        usage_materialised(instance, "2026-11-20", "acme")
        usage_materialised(instance, "2026-11-20", "globex-2")
        first = tick(instance, None)
        assert isinstance(first, dg.SensorResult)
        requests = first.run_requests or []
        assert [(r.partition_key, r.tags[TENANT_TAG]) for r in requests] == [
            (tenant_day_key("2026-11-20", "acme"), "acme"),
            (tenant_day_key("2026-11-20", "globex-2"), "globex-2"),
        ]
        assert len({r.run_key for r in requests}) == 2

        # Nothing new since the cursor; then a re-materialisation asks again (a correction).
        assert isinstance(tick(instance, first.cursor), dg.SkipReason)
        usage_materialised(instance, "2026-11-20", "acme")
        second = tick(instance, first.cursor)
        assert isinstance(second, dg.SensorResult)
        again = second.run_requests or []
        assert [r.partition_key for r in again] == [tenant_day_key("2026-11-20", "acme")]
        assert again[0].run_key not in {r.run_key for r in requests}
