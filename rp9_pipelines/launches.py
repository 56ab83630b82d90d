"""Every run launch, typed: which job, its run config and its tags, built in one place for the API,
the sensors and the schedules alike. Tag names are defined here and nowhere else.

A `Launch` becomes a `dg.RunRequest` (sensors, schedules) or a GraphQL launch (the API's
`DagsterClient.launch`); either way the job sees the same config and the queue the same tags.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

# One running job per tenant: every run that changes a tenant carries its slug and id.
TENANT_TAG = "rp9/tenant"
TENANT_ID_TAG = "rp9/tenant_id"
# What a run is about (the queue limits backups, drills and enforcement by kind).
KIND_TAG = "rp9/kind"
# Who asked: "api", "autoscaler", a schedule's or sensor's name.
REQUESTED_BY_TAG = "rp9/requested_by"
# The API request that launched a run (`api/dagster_client.py`): a launch that timed out, or the
# retry of a request that died, finds its run by this tag instead of launching a second one.
REQUEST_ID_TAG = "rp9/request_id"
# The `autoscaling_events` row a scale run carries out.
AUTOSCALING_EVENT_TAG = "rp9/autoscaling_event"
BACKUP_KIND_TAG = "rp9/backup_kind"
# A drill restores into a sandbox: it is tagged with the tenant's slug under its own key, so it
# never waits behind (nor holds up) the tenant's own changes.
DRILL_TENANT_TAG = "rp9/drill_tenant"
# The fleet rollout an upgrade run belongs to (`upgrade_rollout`): one run per tenant.
ROLLOUT_TAG = "rp9/rollout"

API = "api"
AUTOSCALER = "autoscaler"

BACKUP_KIND = "backup"
RESTORE_DRILL_KIND = "restore_drill"
ENFORCEMENT_KIND = "enforcement"

TenantJob = Literal[
    "provision_tenant", "scale_tenant", "suspend_tenant", "resume_tenant", "delete_tenant"
]
# The first op of each tenant job: the one that takes the job's config.
TENANT_JOB_OPS: dict[str, str] = {
    "provision_tenant": "register_secrets",
    "scale_tenant": "apply_scale",
    "suspend_tenant": "stop_stack",
    "resume_tenant": "restart_stack",
    "delete_tenant": "remove_tenant",
    "backup_tenant": "backup_database",
}


@dataclass(frozen=True)
class Launch:
    job: str
    run_config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def run_request(
        self, run_key: str | None = None, partition_key: str | None = None
    ) -> dg.RunRequest:
        return dg.RunRequest(
            run_key=run_key,
            job_name=self.job,
            run_config=self.run_config,
            tags=self.tags,
            partition_key=partition_key,
        )


def _op_config(op: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"ops": {op: {"config": config}}}


def tenant_tags(tenant_id: str, slug: str, requested_by: str) -> dict[str, str]:
    return {TENANT_TAG: slug, TENANT_ID_TAG: tenant_id, REQUESTED_BY_TAG: requested_by}


def tenant_job(
    job: str, tenant_id: str, slug: str, requested_by: str = API, **config: Any
) -> Launch:
    """Any tenant job (`TENANT_JOB_OPS`), with its first op's config."""
    return Launch(
        job,
        _op_config(TENANT_JOB_OPS[job], {"tenant_id": tenant_id, **config}),
        tenant_tags(tenant_id, slug, requested_by),
    )


def promotion(
    job: Literal["promote_tenant", "roll_back_promotion", "remove_shared_schema"],
    promotion_id: str,
    tenant_id: str,
    slug: str,
    requested_by: str = API,
) -> Launch:
    """A promotion's run (`defs/promotion/jobs.py`), one per tenant at a time like any change."""
    first = {
        "promote_tenant": "prepare_dedicated",
        "roll_back_promotion": "return_to_shared",
        "remove_shared_schema": "drop_shared_schema",
    }[job]
    return Launch(
        job,
        _op_config(first, {"promotion_id": promotion_id}),
        tenant_tags(tenant_id, slug, requested_by),
    )


def upgrade(
    job: Literal["upgrade_tenant", "roll_back_upgrade"],
    upgrade_id: str,
    tenant_id: str,
    slug: str,
    requested_by: str = API,
    rollout: str | None = None,
    fail_probe: bool = False,
) -> Launch:
    """An upgrade's run (`defs/upgrades/jobs.py`), one per tenant at a time like any change."""
    first = {"upgrade_tenant": "rehearse_upgrade", "roll_back_upgrade": "restore_previous"}[job]
    config: dict[str, Any] = {"upgrade_id": upgrade_id}
    if fail_probe:
        config["fail_probe"] = True
    tags = tenant_tags(tenant_id, slug, requested_by)
    if rollout:
        tags[ROLLOUT_TAG] = rollout
    return Launch(job, _op_config(first, config), tags)


def rollout(rollout_id: str, config: dict[str, Any], requested_by: str = API) -> Launch:
    """A fleet rollout (`upgrade_rollout`): it launches one `upgrade_tenant` run per tenant."""
    return Launch(
        "upgrade_rollout",
        _op_config("roll_out", {"rollout_id": rollout_id, **config}),
        {REQUESTED_BY_TAG: requested_by, ROLLOUT_TAG: rollout_id},
    )


def autoscale(tenant_id: str, slug: str, workers: int, event_id: str) -> Launch:
    launch = tenant_job("scale_tenant", tenant_id, slug, AUTOSCALER, workers=workers)
    return Launch(launch.job, launch.run_config, {**launch.tags, AUTOSCALING_EVENT_TAG: event_id})


def backup(tenant_id: str, slug: str, kind: str, requested_by: str) -> Launch:
    launch = tenant_job("backup_tenant", tenant_id, slug, requested_by, kind=kind)
    return Launch(launch.job, launch.run_config, {**launch.tags, BACKUP_KIND_TAG: kind})


def restore_drill(
    tenant_id: str, slug: str, requested_by: str, backup_id: str | None = None
) -> Launch:
    config: dict[str, Any] = {"tenant_id": tenant_id}
    if backup_id is not None:
        config["backup_id"] = backup_id
    return Launch(
        "restore_drill",
        _op_config("run_restore_drill", config),
        {DRILL_TENANT_TAG: slug, TENANT_ID_TAG: tenant_id, REQUESTED_BY_TAG: requested_by},
    )


def platform_backup(kind: str, requested_by: str) -> Launch:
    return Launch(
        "backup_platform",
        _op_config("back_up_platform", {"kind": kind}),
        {REQUESTED_BY_TAG: requested_by},
    )


def platform_dr_drill(drill_id: str, requested_by: str, tenants: list[str] | None = None) -> Launch:
    """The drill's id is chosen by whoever launches it, so the API can answer with it."""
    return Launch(
        "platform_dr_drill",
        _op_config("run_platform_dr_drill", {"drill_id": drill_id, "tenants": tenants or []}),
        {REQUESTED_BY_TAG: requested_by},
    )


def enforcement(
    tenants: list[str] | None, requested_by: str, as_of: dt.datetime | None = None
) -> Launch:
    config: dict[str, Any] = {"tenants": tenants or []}
    if as_of is not None:
        config["as_of"] = as_of.isoformat()
    return Launch(
        "enforce_limits", _op_config("enforce_quotas", config), {REQUESTED_BY_TAG: requested_by}
    )


def usage_daily(requested_by: str) -> Launch:
    """Measure one tenant-day's usage (the run's partition says which)."""
    return Launch("usage_daily", {}, {REQUESTED_BY_TAG: requested_by})


def stripe_meter(slug: str) -> Launch:
    """Report one tenant-day's usage to Stripe (the run's partition says which day)."""
    return Launch("report_usage_to_stripe", {}, {TENANT_TAG: slug})


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def tenants_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Ids of tenants with any run queued or running (one query for the whole fleet)."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
    return {run.tags[TENANT_ID_TAG] for run in runs if TENANT_ID_TAG in run.tags}
