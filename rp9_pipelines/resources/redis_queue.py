import dagster as dg
import redis

from rp9_pipelines.resources.health import Health, probe


class RedisResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The shared Redis that carries every tenant's Bull queue (per-tenant key prefixes)."""

    redis_url: str
    timeout_s: float = 5.0

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.redis_url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
        )

    def ping(self) -> Health:
        def check() -> str:
            with self.client() as client:
                return f"Redis {client.info('server')['redis_version']}"

        return probe("redis", check)
