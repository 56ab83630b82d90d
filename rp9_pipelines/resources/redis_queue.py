from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import dagster as dg
import redis
from redis.exceptions import RedisError

from rp9_pipelines.resources.health import Health, probe

# What a tenant's ACL user may run: the commands n8n 2.x and Bull 4 send, directly or from their
# Lua scripts (Redis checks the commands a script calls against the caller's ACL too), and
# nothing else. Derived from the sources of the pinned versions (bull 4.16.4 `lib/*.js` and
# `lib/commands/*.lua`; n8n's `scaling/`, `services/cache/`, `modules/instance-registry/`,
# `scaling/leader-election-client.js`) and checked with MONITOR while tenants provision, run
# executions, scale and stop. Left out on purpose:
# - KEYS, SCAN, RANDOMKEY: key patterns do not filter them, they list every tenant's key names
#   (Bull's `empty()` and `removeJobs()`, the only users, are never called by n8n);
# - INFO: server-wide figures; n8n turns ioredis' ready check off and Bull ignores the failure
#   of its version check;
# - CLIENT other than SETNAME (Bull names its blocking connection; LIST and KILL see and drop
#   other tenants' connections), SELECT other than the platform's database;
# - SCRIPT, FUNCTION, FCALL, PUBSUB, CONFIG, ACL, DEBUG, MONITOR, SLOWLOG, FLUSH*, and every
#   other administrative or server-wide command.
# AUTH and QUIT are listed for clarity: Redis lets any connection run them.
TENANT_COMMANDS = (
    # connection and transactions
    "auth", "ping", "quit", "client|setname", "multi", "exec", "discard",
    # scripts: Bull's (EVALSHA, EVAL when the script cache is cold) and n8n's
    "eval", "evalsha",
    # pub/sub, on the tenant's channels only
    "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe",
    # keys and strings
    "exists", "type", "del", "rename", "expire", "pttl",
    "get", "set", "psetex", "mget", "mset", "incr",
    # hashes: Bull's jobs, n8n's cache
    "hget", "hmget", "hgetall", "hset", "hmset", "hdel", "hincrby", "hexists", "hkeys", "hvals",
    # lists: Bull's wait, active and paused
    "llen", "lindex", "lrange", "lpush", "rpush", "linsert", "lset", "lrem", "ltrim",
    "rpoplpush", "brpoplpush",
    # sets: Bull's stalled set, n8n's instance registry
    "sadd", "srem", "smembers", "sismember", "scard",
    # sorted sets: Bull's priority, delayed, completed and failed sets
    "zadd", "zrem", "zscore", "zcard", "zcount", "zrange", "zrangebyscore", "zrevrange",
    "zrevrangebyscore", "zremrangebyrank", "zremrangebyscore",
)  # fmt: skip


def tenant_acl(password: str, prefix: str, db: int, *, enabled: bool) -> list[str]:
    """The `ACL SETUSER` rules of a tenant's user: `reset` first, so whatever the user could do
    before (an older, broader rule set) is gone, then its password, its key and channel
    patterns, and the allowed commands."""
    return [
        "reset",
        "on" if enabled else "off",
        f">{password}",
        f"~{prefix}:*",
        f"&{prefix}:*",
        f"+select|{db}",
        *(f"+{command}" for command in TENANT_COMMANDS),
    ]


# A tenant's queue as the autoscaler reads it, on the server: depth, running jobs, and the enqueue
# time of the job at the head. Its keys belong to the tenant, so their shape is not trusted: a
# wrong type fails this tenant's script alone, and a head that is not a job id or a job with a
# malformed timestamp is refused before any large value reaches the platform.
_SNAPSHOT_SCRIPT = """
local waiting = redis.call('LLEN', KEYS[1])
local active = redis.call('LLEN', KEYS[2])
local head = redis.call('LINDEX', KEYS[1], -1)
if not head then return {waiting, active} end
if string.len(head) > 64 then return redis.error_reply('the head of its wait list is no job id') end
local job = ARGV[1] .. head
local kind = redis.call('TYPE', job)['ok']
if kind == 'none' then return {waiting, active} end
if kind ~= 'hash' then return redis.error_reply('its head job is no hash') end
if redis.call('HSTRLEN', job, 'timestamp') > 20 then
  return redis.error_reply('its head job has no timestamp')
end
return {waiting, active, redis.call('HGET', job, 'timestamp')}
"""


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
    # Why the queue could not be read (its keys are not what Bull writes); the figures are 0.
    error: str | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


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

    def database(self) -> int:
        """The database number of `redis_url`, the one tenants' n8n use too."""
        return int(urlsplit(self.redis_url).path.lstrip("/") or 0)

    def ensure_tenant_user(
        self, username: str, password: str, prefix: str, *, enabled: bool | None = None
    ) -> None:
        """Create or reset the tenant's ACL user to the current rules (`tenant_acl`), and
        persist the ACL file. `enabled=None` keeps an existing user on or off as it is (a
        repair does not resume a suspended tenant); a new user is on."""
        with self.client() as client:
            if enabled is None:
                user = client.acl_getuser(username)
                enabled = True if user is None else bool(user["enabled"])
            rules = tenant_acl(password, prefix, self.database(), enabled=enabled)
            client.execute_command("ACL", "SETUSER", username, *rules)
            client.execute_command("ACL", "SAVE")

    def set_tenant_user_enabled(self, user: str, enabled: bool) -> None:
        """Turn a tenant's ACL user on or off, persisted in the ACL file. Off also drops the
        connections it has open, so its containers lose Redis at once, not at their next
        login. Turning off a user that does not exist does nothing; turning it on fails."""
        with self.client() as client:
            if client.acl_getuser(user) is None:
                if enabled:
                    raise LookupError(f"Redis has no user {user!r}: provision the tenant first")
                return
            client.execute_command("ACL", "SETUSER", user, "on" if enabled else "off")
            client.execute_command("ACL", "SAVE")
            if not enabled:
                client.execute_command("CLIENT", "KILL", "USER", user)

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
        """Every given queue in two round trips whatever their number (is the script cached,
        then one pipeline of it): depth, running jobs, and the enqueue time of the job at the
        head (`timestamp` of its hash, written by the producer). Bull's workers take
        from the tail of `wait`, so `LINDEX -1` is the oldest job of the highest priority,
        which for n8n's single-priority webhooks is the oldest.

        A queue whose keys are malformed (a tenant can write its own keys as it likes) is
        returned unreadable, with the reason, and the others are read as usual."""
        with self.client() as client:
            script = client.register_script(_SNAPSHOT_SCRIPT)
            with client.pipeline(transaction=False) as pipe:
                pipe.time()
                for prefix in bull_prefixes:
                    keys = [f"{prefix}:jobs:wait", f"{prefix}:jobs:active"]
                    script(keys=keys, args=[f"{prefix}:jobs:"], client=pipe)
                replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return {
            prefix: _snapshot(reply, now_ms)
            for prefix, reply in zip(bull_prefixes, replies[1:], strict=True)
        }


def _snapshot(reply: object, now_ms: int) -> QueueSnapshot:
    if isinstance(reply, RedisError):
        return QueueSnapshot(0, 0, None, error=str(reply))
    assert isinstance(reply, list), reply
    waiting, active, *head = reply
    stamp = head[0] if head else None
    if stamp is None:
        return QueueSnapshot(int(waiting), int(active), None)
    try:
        enqueued_ms = int(stamp)
    except ValueError:
        return QueueSnapshot(0, 0, None, error="its head job's timestamp is not a number")
    return QueueSnapshot(int(waiting), int(active), max(0.0, (now_ms - enqueued_ms) / 1000))
