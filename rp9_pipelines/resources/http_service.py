import dagster as dg
import httpx

from rp9_pipelines.resources.health import Health, probe


class HttpServiceResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A service probed over HTTP (Traefik's ping, Prometheus's readiness)."""

    name: str
    base_url: str
    health_path: str
    timeout_s: float = 5.0

    def ping(self) -> Health:
        def check() -> str:
            response = httpx.get(
                self.base_url.rstrip("/") + self.health_path, timeout=self.timeout_s
            )
            response.raise_for_status()
            return f"HTTP {response.status_code}"

        return probe(self.name, check)
