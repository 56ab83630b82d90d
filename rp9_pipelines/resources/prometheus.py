from dataclasses import dataclass

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from rp9_pipelines.resources.http_service import HttpServiceResource

# n8n records an execution's duration in the process that learns it finished: main, in queue
# mode (`n8n_workflow_execution_duration_seconds`, default buckets up to 600 s).
DURATION = "n8n_workflow_execution_duration_seconds"


@dataclass(frozen=True)
class ExecutionRates:
    """A tenant's finished executions over a window, as Prometheus saw them."""

    per_minute: float
    latency_p95_s: float | None


@dataclass(frozen=True)
class QueueGauges:
    """n8n main's own view of its Bull queue, refreshed every 20 s
    (`N8N_METRICS_INCLUDE_QUEUE_METRICS`)."""

    waiting: float
    active: float


class PrometheusResource(HttpServiceResource):
    """The platform's Prometheus, which scrapes every tenant's n8n (`tenant` label): probed for
    health, and queried for the whole fleet at once. An empty URL means not configured."""

    name: str = "prometheus"
    health_path: str = "/-/ready"

    @property
    def configured(self) -> bool:
        return bool(self.base_url.strip())

    def _client(self) -> PrometheusConnect:
        # One quick retry: the library's default (3, exponential backoff) would stall a sensor
        # tick for seconds when Prometheus is down, where the caller has a fallback.
        retry = Retry(total=1, backoff_factor=0.1, status_forcelist=[502, 503, 504])
        return PrometheusConnect(
            url=self.base_url.rstrip("/"), timeout=max(1, int(self.timeout_s)), retry=retry
        )

    def by_tenant(self, promql: str) -> dict[str, float]:
        """An instant query whose result carries a `tenant` label → value per tenant."""
        result = self._client().custom_query(promql)
        values: dict[str, float] = {}
        for series in result:
            tenant = series.get("metric", {}).get("tenant")
            value = float(series["value"][1])
            if tenant and value == value:  # NaN when a rate had no samples
                values[tenant] = value
        return values

    def execution_rates(self, window_s: int) -> dict[str, ExecutionRates]:
        """Executions per minute and latency p95 of every tenant, in two queries."""
        window = f"{int(window_s)}s"
        counts = self.by_tenant(f"sum by (tenant) (increase({DURATION}_count[{window}]))")
        p95 = self.by_tenant(
            f"histogram_quantile(0.95, sum by (tenant, le) (rate({DURATION}_bucket[{window}])))"
        )
        return {
            tenant: ExecutionRates(per_minute=count * 60 / window_s, latency_p95_s=p95.get(tenant))
            for tenant, count in counts.items()
        }

    def queue_gauges(self) -> dict[str, QueueGauges]:
        waiting = self.by_tenant("sum by (tenant) (n8n_scaling_mode_queue_jobs_waiting)")
        active = self.by_tenant("sum by (tenant) (n8n_scaling_mode_queue_jobs_active)")
        return {t: QueueGauges(waiting[t], active.get(t, 0.0)) for t in waiting}
