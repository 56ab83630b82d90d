from collections.abc import Sequence
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


@dataclass(frozen=True)
class QueueSnapshot:
    """What the autoscaler reads of a tenant's Bull queue."""

    waiting: int
    active: int
    # Age of the job at the head of the wait list (the next one a worker takes), by Redis time.
    oldest_wait_s: float | None


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
                "ACL",
                "SETUSER",
                username,
                "reset",
                "on",
                f">{password}",
                f"~{prefix}:*",
                f"&{prefix}:*",
                "+@all",
                "-@admin",
                "-@dangerous",
                "+info",
                "+client|setname",
                "+client|getname",
                "+client|id",
            )
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

    def queue_snapshots(self, bull_prefixes: Sequence[str]) -> dict[str, QueueSnapshot]:
        """Every given queue in two pipelined round trips, whatever their number: depth, running
        jobs, and the enqueue time of the job at the head (`timestamp` of its hash, written by
        the producer). Bull's workers take from the tail of `wait`, so `LINDEX -1` is the oldest
        job of the highest priority, which for n8n's single-priority webhooks is the oldest."""
        with self.client() as client:
            with client.pipeline(transaction=False) as pipe:
                pipe.time()
                for prefix in bull_prefixes:
                    pipe.llen(f"{prefix}:jobs:wait")
                    pipe.llen(f"{prefix}:jobs:active")
                    pipe.lindex(f"{prefix}:jobs:wait", -1)
                first = pipe.execute()
            seconds, micros = first[0]
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            counts = {
                prefix: (int(first[1 + 3 * i]), int(first[2 + 3 * i]), first[3 + 3 * i])
                for i, prefix in enumerate(bull_prefixes)
            }
            heads = [(p, head.decode()) for p, (_, _, head) in counts.items() if head is not None]
            with client.pipeline(transaction=False) as pipe:
                for prefix, job_id in heads:
                    pipe.hget(f"{prefix}:jobs:{job_id}", "timestamp")
                stamps = dict(zip([p for p, _ in heads], pipe.execute(), strict=True))
        snapshots = {}
        for prefix, (waiting, active, _) in counts.items():
            stamp = stamps.get(prefix)
            # A head taken by a worker between the two round trips has no age to report.
            age = max(0.0, (now_ms - int(stamp)) / 1000) if stamp is not None else None
            snapshots[prefix] = QueueSnapshot(waiting, active, age)
        return snapshots
