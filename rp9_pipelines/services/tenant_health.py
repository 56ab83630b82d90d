"""Each tenant's backups and restore drills as Dagster shows them: the two assets partitioned
by tenant, and the policy checks of each tenant's partition (domain/policy.py). The backup and
drill jobs record each verified backup and passed drill here; `tenant_policy_checks`
(defs/tenant_health/) judges the whole fleet hourly."""

import datetime as dt
from typing import Any

import dagster as dg

from rp9_pipelines.catalog.fleet import TenantState, fleet
from rp9_pipelines.defs.partitions import ensure_tenant_keys
from rp9_pipelines.domain.policy import BACKUP_MAX_AGE, DRILL_MAX_AGE, Judgement, within
from rp9_pipelines.resources.catalog import CatalogResource

BACKUPS = dg.AssetKey("tenant_backups")
DRILLS = dg.AssetKey("tenant_restore_drills")
BACKUP_CHECK = "verified_backup_within_26h"
DRILL_CHECK = "passed_drill_within_92d"


def _backup(t: TenantState, now: dt.datetime) -> Judgement:
    return within(t.last_verified_backup, t.created_at, now, BACKUP_MAX_AGE, "verified backup")


def _drill(t: TenantState, now: dt.datetime) -> Judgement:
    return within(t.last_passed_drill, t.created_at, now, DRILL_MAX_AGE, "passed drill")


POLICIES = ((BACKUPS, BACKUP_CHECK, _backup), (DRILLS, DRILL_CHECK, _drill))


def evaluations(states: list[TenantState], now: dt.datetime) -> list[dg.AssetCheckEvaluation]:
    """Both policies' verdict for each tenant, as check evaluations of its partition."""
    found = []
    for t in states:
        for asset, check, policy in POLICIES:
            judgement = policy(t, now)
            metadata: dict[str, Any] = {
                "tenant_id": str(t.id),
                "detail": judgement.detail,
            }
            if judgement.age_hours is not None:
                metadata["age_hours"] = round(judgement.age_hours, 2)
            found.append(
                dg.AssetCheckEvaluation(
                    asset_key=asset,
                    check_name=check,
                    passed=judgement.passed,
                    partition=t.slug,
                    metadata=metadata,
                    description=judgement.detail,
                )
            )
    return found


def judge(context: dg.OpExecutionContext, catalog: CatalogResource, slugs: set[str] | None) -> int:
    """Logs the policy checks of `slugs` (None: every tenant); how many were judged."""
    now = dt.datetime.now(dt.UTC)
    with catalog.begin() as connection:
        states = fleet(connection, now, slugs)
    ensure_tenant_keys(context.instance, [t.slug for t in states])
    for evaluation in evaluations(states, now):
        # Typed for materialisations only; Dagster stores a check evaluation all the same.
        context.log_event(evaluation)  # type: ignore[arg-type]
    return len(states)


def record(
    context: dg.OpExecutionContext,
    catalog: CatalogResource,
    asset: dg.AssetKey,
    slug: str,
    **metadata: Any,
) -> None:
    """A verified backup or passed drill of `slug`: its partition materialised and judged."""
    ensure_tenant_keys(context.instance, [slug])
    context.log_event(dg.AssetMaterialization(asset_key=asset, partition=slug, metadata=metadata))
    judge(context, catalog, {slug})
