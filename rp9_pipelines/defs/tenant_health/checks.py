"""Each tenant's backups and restore drills in the Dagster UI: two assets partitioned by tenant
(a verified backup or a passed drill materialises the tenant's partition, from the backup and
drill jobs) and a policy check on each, per tenant: judged hourly for the whole fleet by
`tenant_policy_checks`, and at once after each backup and drill."""

import datetime as dt

import dagster as dg
from pydantic import Field

from rp9_pipelines.catalog.fleet import fleet
from rp9_pipelines.defs.partitions import tenant_partitions
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.services.tenant_health import (
    BACKUP_CHECK,
    BACKUPS,
    DRILL_CHECK,
    DRILLS,
    POLICIES,
    judge,
)

GROUP = "tenant_health"

tenant_backups = dg.AssetSpec(
    BACKUPS,
    partitions_def=tenant_partitions,
    group_name=GROUP,
    description="A tenant's verified backups in S3 (stored, read back, sha256 matched); each "
    "`ok` backup materialises the tenant's partition.",
)
tenant_restore_drills = dg.AssetSpec(
    DRILLS,
    deps=[BACKUPS],
    partitions_def=tenant_partitions,
    group_name=GROUP,
    description="A tenant's restore drills (a backup restored into a sandbox and checked); each "
    "passed drill materialises the tenant's partition.",
)


class PolicyRequest(dg.Config):
    # Slugs to judge; empty: every tenant.
    tenants: list[str] = Field(default_factory=list)


@dg.op
def judge_tenant_policies(
    context: dg.OpExecutionContext, config: PolicyRequest, catalog: CatalogResource
) -> int:
    """Each tenant's backup and drill policy, as checks of its partitions."""
    judged = judge(context, catalog, set(config.tenants) or None)
    context.log.info(f"judged the backup and drill policies of {judged} tenants")
    return judged


@dg.job(tags={KIND_TAG: "tenant_policy_checks"}, executor_def=dg.in_process_executor)
def tenant_policy_checks() -> None:
    """Whether each tenant's newest verified backup and passed drill are within policy."""
    judge_tenant_policies()


tenant_policy_schedule = dg.ScheduleDefinition(
    name="tenant_policy_checks_hourly",
    job=tenant_policy_checks,
    cron_schedule="15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def _one_tenant(asset: dg.AssetKey, name: str, description: str) -> dg.AssetChecksDefinition:
    """The check of one tenant's partition, as the UI's "Execute" runs it."""
    policy = {check: p for _, check, p in POLICIES}[name]

    @dg.asset_check(
        asset=asset, name=name, description=description, partitions_def=tenant_partitions
    )
    def check(
        context: dg.AssetCheckExecutionContext, catalog: CatalogResource
    ) -> dg.AssetCheckResult:
        now = dt.datetime.now(dt.UTC)
        with catalog.begin() as connection:
            states = fleet(connection, now, {context.partition_key})
        if not states:
            return dg.AssetCheckResult(passed=False, description="no such tenant in the catalog")
        judgement = policy(states[0], now)
        return dg.AssetCheckResult(passed=judgement.passed, description=judgement.detail)

    return check


backup_check = _one_tenant(
    BACKUPS, BACKUP_CHECK, "The tenant's newest verified backup is at most 26 h old."
)
drill_check = _one_tenant(
    DRILLS, DRILL_CHECK, "The tenant's newest passed restore drill is at most 92 days old."
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[tenant_backups, tenant_restore_drills],
        asset_checks=[backup_check, drill_check],
        jobs=[tenant_policy_checks],
        schedules=[tenant_policy_schedule],
    )
