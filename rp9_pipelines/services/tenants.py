"""The shells that make a tenant's stack match the catalog: gather, decide (domain.stack), act."""

import contextlib
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import sqlalchemy as sa
from docker.errors import NotFound

from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.autoscaling import scale_down_refusal, worker_concurrency
from rp9_pipelines.domain.backups import PURGE_GRACE
from rp9_pipelines.domain.lifecycle import Refused, TenantJob, Verdict, verdict
from rp9_pipelines.domain.stack import (
    LABEL_COLOR,
    OWNER_PASSWORD_HASH_FILE,
    SECRET_FILES,
    ContainerSpec,
    TenantStack,
    desired_containers,
    plan_reconcile,
    startup_cpu,
)
from rp9_pipelines.domain.template import TEMPLATE_SECRET_FILES, builder_container, template_schema
from rp9_pipelines.domain.tenants import (
    InvalidRequest,
    Tier,
    check_custom_domain,
    check_resources,
    check_slug,
    check_workers,
    effective_limits,
    role_limits,
)
from rp9_pipelines.launches import Launch, tenant_job
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.stack import StackResources
from rp9_pipelines.resources.tenant_db import Template

Log = Callable[[str], None]


def owner_email(r: StackResources, tenant: Tenant) -> str:
    return f"owner@{tenant.slug}.{r.platform.base_domain}"


def load(r: StackResources, tenant_id: str) -> Tenant:
    with r.catalog.begin() as connection:
        return catalog.require_tenant(connection, tenant_id)


@contextlib.contextmanager
def acting_on(r: StackResources, ref: str, job: TenantJob) -> Iterator[tuple[Tenant, Verdict]]:
    """The tenant as it is now, under its lock, with what `job` may do to it: a run re-reads
    the tenant it was launched for, which may have changed while the run was queued. Refuses
    (`Refused`, nothing changed) what the state does not allow."""
    tenant_id = load(r, ref).id
    with catalog.tenant_lock(r.catalog.engine, tenant_id):
        tenant = load(r, str(tenant_id))
        allowed = verdict(job, tenant.status)
        if allowed == "refuse":
            raise Refused(job, tenant.slug, tenant.status)
        yield tenant, allowed


def set_status(r: StackResources, tenant: Tenant, **values: object) -> None:
    with r.catalog.begin() as connection:
        catalog.update_tenant(connection, tenant.id, **values)


def prepare_secrets(r: StackResources, tenant: Tenant) -> None:
    """Vault is the source of truth; the files are what the containers mount. A tenant's secrets
    are generated once, when it is created; afterwards a run that does not find them stops here,
    before anything is written (`SecretsMissing`)."""
    names = tenant.names
    if tenant.secrets_issued_at is None:
        values = r.vault.issue(names.vault_path, owner_email(r, tenant))
        set_status(r, tenant, secrets_issued_at=dt.datetime.now(dt.UTC))
    else:
        values = r.vault.require(names.vault_path)
    # File names are the Vault keys.
    files = {name: values[name] for name in [*SECRET_FILES.values(), OWNER_PASSWORD_HASH_FILE]}
    r.secret_files.write(tenant.slug, files)
    r.redis.ensure_tenant_user(names.redis_user, values["redis_password"], names.redis_prefix)


def prepare_database(r: StackResources, tenant: Tenant, log: Log) -> bool:
    """The tenant's role and schema or database, a copy of the n8n version's pre-migrated
    template when it is new; returns whether n8n's migrations are already applied."""
    values = r.vault.read(tenant.names.vault_path)
    if not values:
        raise LookupError(f"no secrets for {tenant.slug}: run the secrets step first")
    template = ensure_template(r, log)
    with r.catalog.begin() as connection:
        limits = role_limits(catalog.limits_for(connection, tenant.id))
    return r.tenant_db.ensure(tenant.names, values["db_password"], template, limits)


def apply_role_limits(r: StackResources, tenant: Tenant) -> None:
    """The tenant's database role gets its (new) plan's connection limit and timeout."""
    with r.catalog.begin() as connection:
        limits = role_limits(catalog.limits_for(connection, tenant.id))
    r.tenant_db.set_limits(tenant.names, limits)


def ensure_template(r: StackResources, log: Log) -> Template:
    """Build the pre-migrated schema of this n8n version once (one builder at a time): boot a
    throwaway n8n on an empty schema until it is healthy, then seal what it left."""
    schema = template_schema(r.platform.n8n_version)
    with r.tenant_db.template_lock(schema):
        if not r.tenant_db.template_ready(schema):
            started = time.monotonic()
            log(f"building the n8n {r.platform.n8n_version} template schema {schema}")
            spec = builder_container(schema, r.platform.stack_config())
            files = {name: secrets.token_hex(24) for name in TEMPLATE_SECRET_FILES.values()}
            r.tenant_db.prepare_template(schema, files["db_password"])
            secrets_dir = r.secret_files.write(spec.name, files)
            try:
                r.docker_runtime.create(spec, r.platform.image, secrets_dir)
                wait_healthy(r, [spec.name])
            finally:
                r.docker_runtime.remove(spec.name, graceful=True)
                r.secret_files.remove(spec.name)
            r.tenant_db.seal_template(schema)
            log(f"template {schema} ready in {time.monotonic() - started:.1f} s")
        return r.tenant_db.template(schema)


def desired(r: StackResources, tenant: Tenant, connection: sa.Connection) -> list[ContainerSpec]:
    limits = catalog.limits_for(connection, tenant.id)
    stack = TenantStack(
        names=tenant.names,
        owner_email=owner_email(r, tenant),
        custom_domain=tenant.custom_domain,
        workers=tenant.workers,
        cpu=limits.cpu,
        memory_mb=limits.memory_mb,
        worker_concurrency=worker_concurrency(limits.concurrency),
        concurrency=limits.concurrency,
        plan=tenant.plan,
        color=tenant.color,
        region=tenant.region,
    )
    return desired_containers(stack, r.platform.stack_config())


def start(r: StackResources, tenant: Tenant, log: Log) -> list[str]:
    """Converge main and workers: together on a migrated schema, else main first (it runs the
    migrations) and the workers once it is healthy."""
    if r.tenant_db.migrated(tenant.names):
        return converge(r, tenant, log, roles={"main", "worker"})
    log("schema not migrated yet: main first, workers after it")
    changes = converge(r, tenant, log, roles={"main"})
    return changes + converge(r, tenant, log, roles={"worker"})


def converge(
    r: StackResources,
    tenant: Tenant,
    log: Log,
    *,
    roles: set[str],
    background_workers: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> list[str]:
    """Make the containers of `roles` match the catalog; returns what changed. With
    `background_workers`, workers joining a serving main boot at `BACKGROUND_CPU_SHARES` (the
    default weight once healthy and `meanwhile` is done): after a cutover the main works
    through a released backlog, and the workers' boot and the executions it queued wait for it.

    On a schema n8n has not migrated yet, converge main alone first (`start`): two n8n processes
    booting at once on a fresh database both run the migrations and one of them fails.
    """
    r.docker_runtime.ensure_network(tenant.names.network, tenant.slug)
    with r.catalog.begin() as connection:
        specs = [s for s in desired(r, tenant, connection) if s.role in roles]
    every = r.docker_runtime.observe(tenant.slug)
    observed = [o for o in every if o.role in roles]
    plan = plan_reconcile(specs, observed)
    # Workers joining a stack whose main serves traffic boot at their plan's CPU: a boost would
    # take the cores the serving main needs (on two cores, p99 went from 0.05 s to 9 s).
    main_serving = any(o.role == "main" and o.running for o in every) and not any(
        s.role == "main" for s in plan.create + plan.recreate + plan.start
    )
    done: list[str] = []
    secrets_dir = r.secret_files.path(tenant.slug)
    for name in plan.remove:
        log(f"draining and removing {name}")
        r.docker_runtime.remove(name, graceful=True)
        with r.catalog.begin() as connection:
            catalog.set_instances_state(connection, tenant.id, "removed", [name])
        done.append(f"removed {name}")

    def boot_cpu(spec: ContainerSpec) -> float:  # the engine is asked once, when needed
        if main_serving and spec.role != "main":
            return spec.cpu
        return startup_cpu(spec.cpu, r.platform.startup_cpu, r.docker_runtime.host_cpus())

    joining = plan.create + plan.recreate + plan.start
    boosted = [s for s in joining if boot_cpu(s) != s.cpu]
    behind: list[ContainerSpec] = []
    if background_workers and main_serving:
        behind = [s for s in joining if s.role == "worker"]

    def shares(spec: ContainerSpec) -> int | None:
        return BACKGROUND_CPU_SHARES if spec in behind else None

    try:
        for spec in plan.create + plan.recreate:
            verb = "recreating" if spec in plan.recreate else "creating"
            log(f"{verb} {spec.name} ({spec.cpu} CPU, {spec.memory_mb} MiB)")
            if spec in plan.recreate:
                r.docker_runtime.remove(spec.name, graceful=True)
            container_id = r.docker_runtime.create(
                spec,
                r.platform.image_for(tenant.n8n_version),
                secrets_dir,
                cpu=boot_cpu(spec),
                cpu_shares=shares(spec),
            )
            _record(r, tenant, spec, container_id, "running")
            done.append(f"{verb} {spec.name}")
        for spec in plan.update_limits:
            log(f"updating limits of {spec.name} to {spec.cpu} CPU, {spec.memory_mb} MiB")
            r.docker_runtime.update_limits(spec.name, spec.cpu, spec.memory_mb)
            _record(r, tenant, spec, None, "running")
            done.append(f"resized {spec.name}")
        for spec in plan.start:
            log(f"starting {spec.name}")
            r.docker_runtime.start(spec.name)
            if spec in boosted or spec in behind:
                r.docker_runtime.update_limits(
                    spec.name,
                    boot_cpu(spec),
                    spec.memory_mb,
                    cpu_shares=shares(spec),
                    temporary=True,
                )
            with r.catalog.begin() as connection:
                catalog.set_instances_state(connection, tenant.id, "running", [spec.name])
            done.append(f"started {spec.name}")
        wait_healthy(r, [s.name for s in specs])
        record_nodes(r, tenant)
        if meanwhile is not None:
            meanwhile()
    finally:
        # Healthy or not, a boosted container goes back to its plan's CPU (one not created, or
        # gone by now, is found by the next converge, which compares the limits too).
        for spec in boosted:
            with contextlib.suppress(NotFound):
                r.docker_runtime.update_limits(spec.name, spec.cpu, spec.memory_mb)
        for spec in behind:
            with contextlib.suppress(NotFound):
                r.docker_runtime.update_limits(
                    spec.name, spec.cpu, spec.memory_mb, cpu_shares=DEFAULT_CPU_SHARES
                )
        if boosted:
            log(f"startup CPU boost over for {', '.join(s.name for s in boosted)}")
    return done


def record_nodes(r: StackResources, tenant: Tenant) -> None:
    """Which node runs each of the tenant's instances now (a Swarm's; none on one engine)."""
    placed = {s.name: s.node for s in r.docker_runtime.states(tenant.slug) if s.node}
    if placed:
        with r.catalog.begin() as connection:
            catalog.set_instance_nodes(connection, placed)


def _record(
    r: StackResources, tenant: Tenant, spec: ContainerSpec, container_id: str | None, state: str
) -> None:
    with r.catalog.begin() as connection:
        catalog.record_instance(
            connection,
            tenant,
            name=spec.name,
            role=spec.role,
            color=spec.labels[LABEL_COLOR],
            container_id=container_id,
            image=r.platform.image_for(tenant.n8n_version),
            cpu=spec.cpu,
            memory_mb=spec.memory_mb,
            state=state,
        )


# The weight of a main booting beside the serving one: it gets only the CPU nothing else wants
# (at the default 1024, on two cores, its boot made the serving main shed requests).
BACKGROUND_CPU_SHARES = 2
DEFAULT_CPU_SHARES = 1024


def boot_main(r: StackResources, tenant: Tenant, log: Log) -> str:
    """Create and start the main `tenant` would have (a cutover's other side: another tier or
    color than the catalog's, beside the serving one) at its plan's CPU and in the background
    (`BACKGROUND_CPU_SHARES`), without waiting for it; its name. The next `converge` of that
    tenant, once the catalog names it so, keeps it."""
    r.docker_runtime.ensure_network(tenant.names.network, tenant.slug)
    with r.catalog.begin() as connection:
        spec = next(s for s in desired(r, tenant, connection) if s.role == "main")
    log(f"booting {spec.name} ({spec.cpu} CPU, {spec.memory_mb} MiB) beside the serving main")
    container_id = r.docker_runtime.create(
        spec,
        r.platform.image_for(tenant.n8n_version),
        r.secret_files.path(tenant.slug),
        cpu_shares=BACKGROUND_CPU_SHARES,
    )
    _record(r, tenant, spec, container_id, "running")
    return spec.name


def boost(r: StackResources, tenant: Tenant, name: str) -> None:
    """A container of `tenant` booted in the background, now first: the startup CPU at the
    default weight (the next converge sets its plan's CPU again)."""
    state = next((o for o in r.docker_runtime.observe(tenant.slug) if o.name == name), None)
    if state is not None:
        cpu = startup_cpu(state.cpu, r.platform.startup_cpu, r.docker_runtime.host_cpus())
        r.docker_runtime.update_limits(
            name, cpu, state.memory_mb, cpu_shares=DEFAULT_CPU_SHARES, temporary=True
        )


def wait_healthy(r: StackResources, names: list[str]) -> None:
    """Wait for Docker's health check (n8n's /healthz/readiness) on every named container."""
    deadline = time.monotonic() + r.platform.ready_timeout_s
    pending = set(names)
    while pending:
        for name in sorted(pending):
            state = r.docker_runtime.state(name)
            if state is None or state.status in {"exited", "dead"}:
                logs = r.docker_runtime.logs(name, tail=30) if state else ""
                raise RuntimeError(f"{name} is not running ({state and state.status}):\n{logs}")
            if state.health == "healthy":
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(
                f"not healthy after {r.platform.ready_timeout_s} s: {sorted(pending)}"
            )
        if pending:
            time.sleep(0.2)


def stop_all(r: StackResources, tenant: Tenant, log: Log) -> None:
    """Workers first (they finish their executions), then main."""
    states = r.docker_runtime.states(tenant.slug)
    for state in sorted(states, key=lambda s: s.role != "worker"):
        log(f"stopping {state.name}")
        r.docker_runtime.stop(state.name)
    with r.catalog.begin() as connection:
        catalog.set_instances_state(connection, tenant.id, "stopped")


def suspend(r: StackResources, tenant: Tenant, reason: str, log: Log) -> None:
    """Stop the stack and mark the tenant suspended, recording who suspended it (enforcement
    resumes only what enforcement suspended). The reason is written first, so a suspension cut
    short is still known for what it was."""
    set_status(r, tenant, suspension_reason=reason)
    stop_all(r, tenant, log)
    # Its credentials stop working too: nothing of a suspended tenant runs, inside or outside
    # its containers.
    set_access(r, tenant, enabled=False)
    set_status(r, tenant, status="suspended", suspension_reason=reason)


def resume(r: StackResources, tenant: Tenant, log: Log) -> list[str]:
    """Start a suspended tenant's stack again on its data; it is active, for no reason, once
    every container is healthy."""
    prepare_secrets(r, tenant)
    set_access(r, tenant, enabled=True)
    changes = start(r, tenant, log)
    set_status(r, tenant, status="active", suspension_reason=None, last_error=None)
    return changes


def expire_backups_of_purged(r: StackResources, tenant: Tenant) -> dt.datetime:
    """Record the purge; the tenant's backups (the last copy of its data) expire after the
    grace period, and retention then deletes them all. When they go."""
    now = dt.datetime.now(dt.UTC)
    until = now + PURGE_GRACE
    with r.catalog.begin() as connection:
        catalog.update_tenant(connection, tenant.id, purged_at=now)
        backup_catalog.expire_purged(connection, tenant.id, until)
    return until


def set_access(r: StackResources, tenant: Tenant, *, enabled: bool) -> None:
    """Turn the tenant's database login and Redis user on or off (off also drops their open
    sessions)."""
    r.tenant_db.set_login(tenant.names, enabled)
    r.redis.set_tenant_user_enabled(tenant.names.redis_user, enabled)


def remove_all(r: StackResources, tenant: Tenant, log: Log) -> None:
    for state in sorted(r.docker_runtime.states(tenant.slug), key=lambda s: s.role != "worker"):
        log(f"removing {state.name}")
        r.docker_runtime.remove(state.name, graceful=True)
    r.docker_runtime.remove_network(tenant.names.network)
    with r.catalog.begin() as connection:
        catalog.set_instances_state(connection, tenant.id, "removed")


# What the API asks of tenants: check a request against the catalog, record it, launch its run.

# Launches a run, returns its id (the API's `DagsterClient.launch`).
Launcher = Callable[[Launch], str]


class Conflict(Exception):
    """A request the catalog's current state refuses (a slug taken, a tenant in the wrong
    state), with a stable machine-readable code: `InvalidRequest`'s sibling."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Tenants(Protocol):
    """The catalog as creating and changing tenants reads and writes it (`CatalogTenants`)."""

    def get(self, ref: str) -> Tenant | None:
        """By UUID or slug, deleted ones included."""

    def plan_limits(self, plan: str) -> dict[str, Any] | None: ...

    def add(self, values: dict[str, Any], plan_limits: dict[str, Any]) -> Tenant:
        """Insert a tenant with its plan's quotas; `Conflict` if its slug or domain is taken."""
        ...

    def forget(self, tenant_id: uuid.UUID) -> None:
        """Undo `add`, when nothing was launched for the tenant."""


@dataclass(frozen=True)
class CatalogTenants:
    engine: sa.Engine

    def get(self, ref: str) -> Tenant | None:
        with self.engine.connect() as connection:
            return catalog.get_tenant(connection, ref)

    def plan_limits(self, plan: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            return catalog.plan_limits(connection, plan)

    def add(self, values: dict[str, Any], plan_limits: dict[str, Any]) -> Tenant:
        slug, domain = values["slug"], values.get("custom_domain")
        with self.engine.begin() as connection:
            if catalog.slug_taken(connection, slug):
                raise Conflict("slug_taken", f"slug {slug!r} is already taken")
            if domain and catalog.domain_taken(connection, domain):
                raise Conflict("domain_taken", f"{domain!r} is already routed")
            try:
                tenant_id = catalog.insert_tenant(connection, values)
            except sa.exc.IntegrityError:  # the same slug, inserted since slug_taken
                raise Conflict("slug_taken", f"slug {slug!r} is already taken") from None
            catalog.set_quota(connection, tenant_id, "plan", plan_limits)
            return catalog.require_tenant(connection, tenant_id)

    def forget(self, tenant_id: uuid.UUID) -> None:
        with self.engine.begin() as connection:
            catalog.forget_tenant(connection, tenant_id)


@dataclass(frozen=True)
class InFlight:
    """A tenant's executions now (its Bull queue) and the slots each of its workers has."""

    running: int
    waiting: int
    slots_per_worker: int
    error: str | None = None  # the queue could not be read


class Queues(Protocol):
    """How busy a tenant is now, for changes that take capacity away (`RedisQueues`)."""

    def in_flight(self, tenant: Tenant) -> InFlight: ...


@dataclass(frozen=True)
class RedisQueues:
    engine: sa.Engine
    redis: RedisResource

    def in_flight(self, tenant: Tenant) -> InFlight:
        with self.engine.connect() as connection:
            limits = catalog.limits_for(connection, tenant.id)
        prefix, slots = tenant.names.bull_prefix, worker_concurrency(limits.concurrency)
        try:
            queue = self.redis.queue_snapshots([prefix])[prefix]
        except redis.RedisError as error:
            return InFlight(0, 0, slots, f"Redis: {error}")
        return InFlight(queue.active, queue.waiting, slots, queue.error)


@dataclass(frozen=True)
class NewTenant:
    slug: str
    name: str
    plan: str = "starter"
    tier: Tier = "shared"
    workers: int | None = None  # None: the plan's minimum
    custom_domain: str | None = None
    region: str = "eu-1"
    requires_dedicated: bool = False


def create_tenant(
    tenants: Tenants, launch: Launcher, new: NewTenant, base_domain: str, n8n_version: str
) -> tuple[Tenant, str]:
    """Check the request, record the tenant with its plan's quotas, launch its provisioning;
    the tenant and the run's id. No run, no tenant: if the launch fails, the row goes too."""
    check_slug(new.slug)
    check_custom_domain(new.custom_domain, base_domain)
    if new.requires_dedicated and new.tier != "dedicated":
        raise InvalidRequest(
            "compliance_requires_dedicated", "requires_dedicated needs tier 'dedicated'"
        )
    plan = tenants.plan_limits(new.plan)
    if plan is None:
        raise InvalidRequest("unknown_plan", f"no plan named {new.plan!r}")
    limits = effective_limits({"plan": plan})
    workers = limits.min_workers if new.workers is None else new.workers
    check_workers(workers, limits, new.plan)
    values = {
        "slug": new.slug,
        "name": new.name,
        "plan": new.plan,
        "tier": new.tier,
        "region": new.region,
        "custom_domain": new.custom_domain,
        "workers": workers,
        "n8n_version": n8n_version,
        "compliance": {"requires_dedicated": new.requires_dedicated},
    }
    tenant = tenants.add(values, plan)
    try:
        run_id = launch(tenant_job("provision_tenant", str(tenant.id), tenant.slug))
    except Exception:
        tenants.forget(tenant.id)
        raise
    return tenant, run_id


@dataclass(frozen=True)
class Action:
    """A change to an existing tenant, and the states it is allowed from."""

    name: str
    allowed: frozenset[str]


PROVISION = Action("provision", frozenset({"provisioning", "failed", "active"}))
SUSPEND = Action("suspend", frozenset({"active", "failed"}))
RESUME = Action("resume", frozenset({"suspended", "failed"}))
BACKUP = Action("backup", frozenset({"active", "suspended"}))
SCALE = Action("scale", frozenset({"active", "failed"}))
DELETE = Action("delete", frozenset({"provisioning", "active", "suspended", "failed", "deleted"}))


def change_tenant(
    launch: Launcher,
    tenant: Tenant,
    action: Action,
    run: Launch,
    check: Callable[[], None] | None = None,
) -> str:
    """Launch `run` if the tenant's state allows `action`, then the request's own `check`,
    pass; the run's id."""
    if tenant.status not in action.allowed:
        raise Conflict("invalid_state", f"cannot {action.name} a tenant that is {tenant.status}")
    if check is not None:
        check()
    return launch(run)


@dataclass(frozen=True)
class Scale:
    """What a scale request changes (None: unchanged)."""

    plan: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    workers: int | None = None


def check_scale(
    tenants: Tenants,
    tenant: Tenant,
    scale: Scale,
    queues: Queues | None = None,
    force: bool = False,
) -> None:
    """A known plan, sane resources, workers within the (new) plan's range, something to do;
    and, unless `force`, no scale-down while the executions in flight need the workers it
    would remove (`Conflict` `capacity_in_use`, with the figures)."""
    if scale.plan is not None and tenants.plan_limits(scale.plan) is None:
        raise InvalidRequest("unknown_plan", f"no plan named {scale.plan!r}")
    check_resources(scale.cpu, scale.memory_mb)
    if scale.workers is not None or scale.plan is not None:
        plan = scale.plan or tenant.plan
        limits = effective_limits({"plan": tenants.plan_limits(plan) or {}})
        check_workers(tenant.workers if scale.workers is None else scale.workers, limits, plan)
    if scale == Scale():
        raise InvalidRequest("nothing_to_change", "give plan, cpu, memory_mb or workers")
    fewer = scale.workers is not None and scale.workers < tenant.workers
    if fewer and queues is not None and not force:
        assert scale.workers is not None
        load = queues.in_flight(tenant)
        if load.error is not None:
            raise Conflict(
                "queue_unreadable", f"cannot tell how busy the tenant is ({load.error}): pass force"
            )
        why = scale_down_refusal(scale.workers, load.slots_per_worker, load.running, load.waiting)
        if why is not None:
            raise Conflict("capacity_in_use", why)
