import dagster as dg

from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.http_service import HttpServiceResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.resources.vault import VaultResource


@dg.op
def probe_platform_services(
    context: dg.OpExecutionContext,
    catalog: CatalogResource,
    docker_runtime: DockerRuntimeResource,
    redis: RedisResource,
    vault: VaultResource,
    s3: S3Resource,
    traefik: HttpServiceResource,
    prometheus: HttpServiceResource,
    stripe: StripeResource,
    supabase: SupabaseResource,
) -> dict[str, bool]:
    """Probe every system the control plane depends on; fail the run if any is down."""
    resources = (catalog, docker_runtime, redis, vault, s3, traefik, prometheus, stripe, supabase)
    answers = [r.ping() for r in resources]
    for health in answers:
        state = "up" if health.ok else "DOWN"
        context.log.info(f"{health.service}: {state} ({health.detail}, {health.latency_ms} ms)")
    down = [h.service for h in answers if not h.ok]
    if down:
        raise dg.Failure(
            description=f"platform services down: {', '.join(down)}",
            metadata={h.service: h.detail for h in answers},
        )
    return {h.service: h.ok for h in answers}


@dg.job(tags={KIND_TAG: "platform"})
def platform_health() -> None:
    """Probe Postgres, Docker, Redis, Vault, S3, Traefik, Prometheus, Stripe and Supabase."""
    probe_platform_services()


platform_health_schedule = dg.ScheduleDefinition(
    name="platform_health_every_5_minutes",
    job=platform_health,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[platform_health], schedules=[platform_health_schedule])
