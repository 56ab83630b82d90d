from dataclasses import dataclass

import dagster as dg
import redis

from rp9_pipelines.resources.health import Health, probe


@dataclass(frozen=True)
class QueueCounts:
    """A tenant's Bull queue (`<prefix>:jobs:*`) right now."""

    waiting: int
    active: int
    delayed: int


class RedisResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The shared Redis that carries every tenant's Bull queue. Each tenant has an ACL user
    that can touch only its own key prefix and pub/sub channels."""

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

    def ensure_tenant_user(self, username: str, password: str, prefix: str) -> None:
        """Create or reset the tenant's ACL user, and persist the ACL file."""
        with self.client() as client:
            client.execute_command(
                "ACL", "SETUSER", username, "reset", "on", f">{password}",
                f"~{prefix}:*", f"&{prefix}:*", "+@all", "-@admin", "-@dangerous",
                "+info", "+client|setname", "+client|getname", "+client|id",
            )  # fmt: skip
            client.execute_command("ACL", "SAVE")

    def drop_tenant(self, username: str, prefix: str) -> None:
        with self.client() as client:
            client.execute_command("ACL", "DELUSER", username)
            client.execute_command("ACL", "SAVE")
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.unlink(key)

    def queue_counts(self, bull_prefix: str) -> QueueCounts:
        with self.client() as client, client.pipeline(transaction=False) as pipe:
            pipe.llen(f"{bull_prefix}:jobs:wait")
            pipe.llen(f"{bull_prefix}:jobs:active")
            pipe.zcard(f"{bull_prefix}:jobs:delayed")
            waiting, active, delayed = pipe.execute()
        return QueueCounts(int(waiting), int(active), int(delayed))
