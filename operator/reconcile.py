"""The one level-based reconcile: make a monitor's children match its spec, then its status
match the world.

:func:`converge` is what every trigger calls (kopf's create/update/resume handlers, the drift
repair timer, a deleted child, a Deployment status change, an executor report, the status
timer), serialised per monitor by a lock, always starting from a fresh read of the monitor:
repeated or concurrent triggers are harmless. With ``repair`` it server-side-applies every
child (idempotent: an unchanged child is not rewritten), generates the NATS credentials once,
and removes managed-NATS children when an external bus is configured; then it recomputes the
operator's status keys and merge-patches them only when they changed.

Scale (issue 19, item 5): the Deployments a status is computed from come from a cache kept
by the apply responses and kopf's watch of the Deployments (:func:`deployment_seen`), not
from a listing per reconcile (a label-selected LIST scans every Deployment of the namespace:
quadratic in the number of monitors); a monitor's cache is filled by one listing the first
time it is needed. A status reconcile is skipped when another of the same monitor is already
waiting for its lock (it reads the world after the trigger anyway). Every reconcile reports
its duration and API requests by what started it (``operator/metrics.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import time
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf

from startupmonkey import kubetime
from startupmonkey.models import durations
from startupmonkey.operator import children, credentials, kube, monitor, nats, render, status
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import metrics as op_metrics
from startupmonkey.operator import notify as notify_mod

log = logging.getLogger(__name__)
Key = tuple[str, str]
#: See :attr:`Context.repairs`.
REPAIR_CONCURRENCY = 32
#: What a status reads of a Deployment (the cache keeps only this).
_DEPLOYMENT_META = ("name", "namespace", "generation", "resourceVersion", "labels",
                    "ownerReferences")


@dataclasses.dataclass
class Context:
    """What every handler shares (kept in kopf's memo)."""

    settings: config_mod.OperatorSettings
    api: kube.Api
    locks: collections.defaultdict[Key, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock))
    #: The last apply failure per monitor (cleared by a successful apply).
    apply_problems: dict[Key, credentials.Problem] = dataclasses.field(default_factory=dict)
    #: What the status was last derived from, per monitor (skips no-op monitor events).
    seen: dict[Key, str] = dataclasses.field(default_factory=dict)
    background: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    #: The process's metrics (``/metrics``); None when nothing serves them.
    metrics: op_metrics.OperatorMetrics | None = None
    #: The notification senders (``operator/notify.py``): the status asks it each target's
    #: health; None when nothing sends (every target reads as healthy).
    notifier: notify_mod.Notifier | None = None
    #: Each monitor's Deployments by component, as last answered (apply) or watched; a
    #: monitor is in it only once a full picture was taken (a listing or an apply of all).
    deployments: dict[Key, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    #: Reconciles waiting for each monitor's lock (a status reconcile is skipped when any is).
    waiting: collections.Counter[Key] = dataclasses.field(default_factory=collections.Counter)
    #: When each monitor's status must be recomputed without an event (the status clock,
    #: below): :attr:`clock` seconds.
    due: dict[Key, float] = dataclasses.field(default_factory=dict)
    #: Monitors re-checked every statusInterval (a Secret problem: Secrets are not watched).
    rechecking: set[Key] = dataclasses.field(default_factory=set)
    #: Repairs (children applied) running at once, over every monitor: a few dozen keep
    #: :data:`kube.CONCURRENCY` requests in flight; hundreds at once only hold memory and
    #: make every monitor finish last (they would advance in lock-step).
    repairs: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(REPAIR_CONCURRENCY))
    #: Set when :attr:`due` gained an earlier time (wakes the clock).
    due_changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Tasks holding or waiting for each monitor's lock (:func:`_monitor_lock`): a lock is
    #: dropped only when none does, so no two tasks ever hold two locks of one monitor.
    lock_users: collections.Counter[Key] = dataclasses.field(
        default_factory=collections.Counter)
    #: Deployment watch events of monitors whose first listing is in flight (merged into the
    #: listing by resourceVersion when it answers: the listing may predate them).
    listing: dict[Key, list[tuple[dict[str, Any], bool]]] = dataclasses.field(
        default_factory=dict)
    #: The clock of :attr:`due` (monotonic seconds; a test moves its own).
    clock: Callable[[], float] = time.monotonic

    def schedule(self, key: Key, after: float | None) -> None:
        """Recompute ``key``'s status in ``after`` seconds (None: no need without an event)."""
        if after is None:
            self.due.pop(key, None)
            return
        when = self.clock() + max(after, 0.0)
        earlier = when < min(self.due.values(), default=float("inf"))
        self.due[key] = when
        if earlier:
            self.due_changed.set()

    def forget(self, key: Key) -> None:
        """Drop what we kept about a monitor that is gone."""
        self.apply_problems.pop(key, None)
        self.seen.pop(key, None)
        self.deployments.pop(key, None)
        self.due.pop(key, None)
        self.rechecking.discard(key)
        if self.metrics is not None:
            self.metrics.phases.pop(key, None)
        if self.notifier is not None:
            self.notifier.forget_monitor(key)
        if not self.lock_users[key]:  # else the last user drops it (_monitor_lock)
            self.locks.pop(key, None)


@contextlib.asynccontextmanager
async def _monitor_lock(ctx: Context, key: Key) -> AsyncIterator[None]:
    """Hold ``key``'s lock; the last user drops it once the monitor is forgotten (gone), so
    deleted monitors leave no lock behind (:meth:`Context.forget` runs while it is held)."""
    ctx.lock_users[key] += 1
    try:
        async with ctx.locks[key]:
            yield
    finally:
        ctx.lock_users[key] -= 1
        if ctx.lock_users[key] <= 0:
            del ctx.lock_users[key]
            if key not in ctx.seen:
                ctx.locks.pop(key, None)


def _new(view: monitor.View) -> bool:
    """Never reconciled yet (no observedGeneration): its generated Secrets are most likely
    missing, so they are created first and read only when that answers 409 (3 requests fewer
    per new monitor; a resync reads first, as the Secrets then exist)."""
    return view.observed_generation is None


async def ensure_nats_secret(ctx: Context, view: monitor.View) -> str:
    """Create the generated NATS Secret once, keep its passwords, re-render its server config
    when JetStream changes. Returns its resourceVersion, hashed onto the pod templates of NATS
    and its clients: changed credentials or server config roll them."""
    name = view.nats_secret_name
    if _new(view):  # create at once: a GET would only answer 404
        fresh = nats.generate_credentials()
        created = await ctx.api.create(nats.secret(view, fresh))
        if created is not None:
            await _apply_watcher_secret(ctx, view, fresh)
            return str(created["metadata"]["resourceVersion"])
    existing = await ctx.api.get(kube.SECRET, view.namespace, name)
    if existing is None:
        fresh = nats.generate_credentials()
        created = await ctx.api.create(nats.secret(view, fresh))
        if created is None:  # created by a concurrent writer: use it on the next trigger
            raise kube.ApiError(409, f"Secret {name} appeared while being created")
        await _apply_watcher_secret(ctx, view, fresh)
        return str(created["metadata"]["resourceVersion"])
    if monitor.owner_of(existing) != view.key:  # never rewrite someone else's Secret
        raise kube.ApiError(409, f"Secret {name} exists and is not controlled by this monitor")
    creds = nats.credentials_from(existing)
    patch: dict[str, str] = {}
    if creds is None:  # emptied by hand: new credentials for everyone
        creds = nats.generate_credentials()
        patch.update(creds)
    wanted = nats.server_config(view, creds)
    if patch or nats.conf_in(existing) != wanted:
        patch[nats.CONF_KEY] = wanted
        existing = await ctx.api.merge_patch(kube.SECRET, view.namespace, name,
                                             {"stringData": patch}) or existing
    await _apply_watcher_secret(ctx, view, creds)
    return str(existing["metadata"]["resourceVersion"])


async def _apply_watcher_secret(ctx: Context, view: monitor.View,
                                creds: dict[str, str]) -> None:
    """``<monitor>-nats-watcher``: the watcher's login alone, so a Role can hand a person
    ``startupmonkey events`` by naming this Secret without the analyser's and executor's
    logins (which may publish). Never written over someone else's Secret of that name."""
    name = nats.watcher_secret_name(view.name)
    wanted = nats.watcher_secret(view, creds)
    if _new(view) and await ctx.api.create(wanted) is not None:
        return  # created at once: a GET would only answer 404
    existing = await ctx.api.get(kube.SECRET, view.namespace, name)
    if existing is not None and monitor.owner_of(existing) != view.key:
        log.warning("Secret %s/%s exists and is not controlled by this monitor: the watcher "
                    "login is not copied there", view.namespace, name)
        return
    if existing is None:
        # Created, not applied: a forced apply would take over a Secret of that name made by
        # someone else between the read and the write (and garbage-collect it with us).
        if await ctx.api.create(wanted) is None:
            log.warning("Secret %s/%s appeared while being created: left as it is",
                        view.namespace, name)
    elif (existing.get("data") or {}) != wanted["data"]:
        await ctx.api.apply(wanted)


async def ensure_ingest_secret(ctx: Context, view: monitor.View) -> None:
    """Create the generated ingest-token Secret once (a new token when emptied by hand): the
    analyser takes streams only from the collector that shows it (docs/safety.md)."""
    name = view.ingest_secret_name
    fresh = {render.INGEST_TOKEN_KEY: secrets.token_urlsafe(32)}
    wanted = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": view.metadata(name, "ingest"), "stringData": fresh}
    if _new(view) and await ctx.api.create(wanted) is not None:
        return  # created at once: a GET would only answer 404
    existing = await ctx.api.get(kube.SECRET, view.namespace, name)
    if existing is None:
        created = await ctx.api.create(wanted)
        if created is None:  # created by a concurrent writer: fine, it is the same kind
            log.info("Secret %s/%s appeared while being created", view.namespace, name)
        return
    if monitor.owner_of(existing) != view.key:  # never rewrite someone else's Secret
        raise kube.ApiError(409, f"Secret {name} exists and is not controlled by this monitor")
    if render.INGEST_TOKEN_KEY not in (existing.get("data") or {}):
        await ctx.api.merge_patch(kube.SECRET, view.namespace, name, {"stringData": fresh})


async def remove_managed_nats(ctx: Context, view: monitor.View) -> None:
    """An external bus replaced the managed one: delete what we own of it (the generated
    Secret stays until the monitor goes: the operator may not delete Secrets)."""
    name = view.child_name(monitor.Component.NATS)
    for kind in (kube.DEPLOYMENT, kube.SERVICE, kube.NETWORKPOLICY, kube.SERVICEACCOUNT):
        child = await ctx.api.get(kind, view.namespace, name)
        if child is not None and monitor.owner_of(child) == view.key:
            await ctx.api.delete(kind, view.namespace, name)
            if kind is kube.DEPLOYMENT:
                ctx.deployments.get(view.key, {}).pop(str(monitor.Component.NATS), None)
            log.info("removed %s %s/%s (external event bus)", kind.kind, view.namespace, name)


async def apply_children(ctx: Context, view: monitor.View) -> None:
    """Create or converge every child of the monitor."""
    secret_version: str | None = None
    objects: list[dict[str, Any]] = []
    if view.managed_nats:
        secret_version = await ensure_nats_secret(ctx, view)
        objects += nats.objects(view, ctx.settings, secret_version)
    else:
        await remove_managed_nats(ctx, view)
    await ensure_ingest_secret(ctx, view)
    # Data-plane Deployments last: what they mount and run as exists first.
    objects += children.data_plane(view, ctx.settings, secret_version)
    for obj in objects:
        answer = await ctx.api.apply(obj)
        if obj["kind"] == "Deployment" and isinstance(answer, dict):
            # Kept at once, so the watch's echo of this apply is known and changes nothing.
            # Every declared Deployment is answered before the lock is released (a failure
            # drops the cache: the next status lists), so no status sees half a picture.
            _store(ctx.deployments.setdefault(view.key, {}), _slim(answer))


def _slim(dep: dict[str, Any]) -> dict[str, Any]:
    meta = dep.get("metadata") or {}
    slim: dict[str, Any] = {"metadata": {k: meta[k] for k in _DEPLOYMENT_META if k in meta},
                            "status": dep.get("status") or {}}
    if "replicas" in (dep.get("spec") or {}):
        slim["spec"] = {"replicas": dep["spec"]["replicas"]}
    return slim


def _version(dep: dict[str, Any]) -> int | None:
    try:
        return int(dep["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _newer(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """``new`` is a later state than ``old`` (resourceVersions of etcd are increasing
    integers; anything unreadable counts as newer, as an apply's answer or a watch event)."""
    if old is None:
        return True
    a, b = _version(new), _version(old)
    return a is None or b is None or a > b


def _component(dep: dict[str, Any]) -> str:
    return str((dep["metadata"].get("labels") or {}).get(monitor.LABEL_COMPONENT, ""))


def _store(cache: dict[str, dict[str, Any]], slim: dict[str, Any]) -> bool:
    """Keep ``slim`` unless an equal or later state is kept; True when what a status reads
    changed."""
    component = _component(slim)
    old = cache.get(component)
    if not _newer(slim, old):
        return False
    cache[component] = slim
    if old is None:
        return True
    strip = ("resourceVersion",)
    return {k: v for k, v in slim["metadata"].items() if k not in strip} != \
        {k: v for k, v in old["metadata"].items() if k not in strip} or \
        slim.get("spec") != old.get("spec") or slim["status"] != old["status"]


def _merge(cache: dict[str, dict[str, Any]], slim: dict[str, Any], deleted: bool) -> bool:
    """One watch event into a cache; True when what a status reads changed."""
    if deleted:
        old = cache.get(_component(slim))
        gone, kept = _version(slim), _version(old) if old is not None else None
        if old is None or (gone is not None and kept is not None and gone < kept):
            return False  # not cached, or a later Deployment of that name is
        del cache[_component(slim)]
        return True
    return _store(cache, slim)


def deployment_seen(ctx: Context, dep: dict[str, Any], deleted: bool) -> bool:
    """A watch event of one of our Deployments: update the cache of its monitor (only of a
    monitor whose cache is complete; the others list on their next status; while that
    listing is in flight the event is kept and merged into its answer). True when what the
    monitor's status reads changed."""
    owner = monitor.owner_of(dep)
    if owner is None:
        return False
    cache = ctx.deployments.get(owner)
    if cache is None:
        pending = ctx.listing.get(owner)
        if pending is not None:
            pending.append((_slim(dep), deleted))
        return True  # not cached: the status reconcile lists
    return _merge(cache, _slim(dep), deleted)


async def _apply(ctx: Context, view: monitor.View) -> credentials.Problem | None:
    if view.spec is None:
        return None
    try:
        await apply_children(ctx, view)
    except kube.ApiError as exc:
        ctx.deployments.pop(view.key, None)
        log.warning("applying the children of %s/%s failed: %s", *view.key, exc)
        return credentials.Problem(status.READY, status.APPLY_FAILED,
                                   f"could not apply the data plane: {exc}"[:1024])
    except BaseException:  # no answer, cancelled: the cache may be half filled
        ctx.deployments.pop(view.key, None)
        raise
    return None


async def converge(ctx: Context, namespace: str, name: str, *, repair: bool,
                   handler: str = op_metrics.OTHER) -> credentials.Problem | None:
    """Bring one monitor's children (when ``repair``) and status in line; returns the apply
    problem, if any (kopf handlers turn it into a retry). ``handler``: what started it (a
    metrics label). A status-only reconcile returns at once when another reconcile of the
    monitor is already waiting for the lock: that one reads everything afresh after this
    trigger."""
    key = (namespace, name)
    if not repair and ctx.waiting[key] > 0:
        if ctx.metrics is not None:
            ctx.metrics.skipped(handler)
        return ctx.apply_problems.get(key)
    started, outcome = time.monotonic(), "error"
    counted, token = kube.counting()
    waiting = False
    try:
        # A repair takes its turn (a slot of :attr:`Context.repairs`) before the monitor's
        # lock, so a repair queued for a slot never holds up the status reconciles of its
        # monitor; it reads the monitor once it holds both, so it applies what it says then.
        async with ctx.repairs if repair else contextlib.nullcontext():
            ctx.waiting[key] += 1
            waiting = True
            async with _monitor_lock(ctx, key):
                ctx.waiting[key] -= 1
                waiting = False
                body = await ctx.api.get(kube.MONITOR, namespace, name)
                if body is None:
                    ctx.forget(key)
                    outcome = "gone"
                    return None
                view = monitor.parse(body)
                observed = view.observed_generation
                if repair:
                    # A repair starts from a fresh picture of the Deployments: the apply
                    # answers, or a listing when nothing is applied (deleting, invalid spec).
                    # A Deployment deleted while the watch was down (its re-listing reports
                    # no deletion) is so forgotten within one drift-repair sweep at most.
                    ctx.deployments.pop(key, None)
                if repair and not view.deleting and view.spec is not None:
                    problem = await _apply(ctx, view)
                    if problem is None:
                        ctx.apply_problems.pop(key, None)
                        observed = view.generation
                    else:
                        ctx.apply_problems[key] = problem
                await refresh(ctx, view, observed)
                found = ctx.apply_problems.get(key)
                outcome = "ok" if found is None else "apply_failed"
                return found
    finally:
        if waiting:
            ctx.waiting[key] -= 1
        if ctx.waiting[key] <= 0:
            del ctx.waiting[key]
        kube.stop_counting(token)
        if ctx.metrics is not None:
            ctx.metrics.reconciled(repair, outcome, time.monotonic() - started, handler,
                                   counted[0])


async def observe(ctx: Context, view: monitor.View, observed: int | None) -> status.Inputs:
    """Read what the status is computed from."""
    secrets: list[credentials.Problem] = []
    deployments: dict[str, dict[str, Any]] = {}
    if view.spec is not None:
        secrets = await credentials.check(ctx.api, view)
        cache = ctx.deployments.get(view.key)
        if cache is None:  # the first status of this monitor in this process: list once
            selector = f"{monitor.LABEL_MONITOR}={view.name},{monitor.LABEL_MANAGED_BY}=" \
                       f"{monitor.MANAGED_BY}"
            # Watch events during the listing are kept: its answer may be older than them.
            pending = ctx.listing[view.key] = []
            try:
                listed = await ctx.api.list(kube.DEPLOYMENT, view.namespace, selector)
            finally:
                del ctx.listing[view.key]
            cache = {}
            for dep in listed:
                if monitor.owner_of(dep) == view.key:
                    _store(cache, _slim(dep))
            for slim, deleted in pending:  # the later state wins (resourceVersion)
                _merge(cache, slim, deleted)
            ctx.deployments[view.key] = cache
        deployments = dict(cache)
    notifications = await ctx.notifier.seen(view) if ctx.notifier is not None else None
    return status.Inputs(view=view, deployments=deployments, secret_problems=secrets,
                         apply_problem=ctx.apply_problems.get(view.key),
                         observed_generation=observed, now=kubetime.utcnow(),
                         notifications=notifications)


async def refresh(ctx: Context, view: monitor.View, observed: int | None) -> None:
    """Recompute the operator's status keys; patch and post Events only on a change."""
    inputs = await observe(ctx, view, observed)
    patch = status.compute(inputs)
    ctx.schedule(view.key, status.recheck_after(inputs, _status_interval(ctx)))
    if inputs.secret_problems:
        ctx.rechecking.add(view.key)
    else:
        ctx.rechecking.discard(view.key)
    if ctx.metrics is not None:
        ctx.metrics.phases[view.key] = str(patch.get("phase", ""))
    if not status.changed(view.status, patch):
        return
    await ctx.api.merge_patch(kube.MONITOR, view.namespace, view.name, {"status": patch},
                              subresource="status")
    body = kopf.Body(typing.cast(kopf.RawBody, view.body))
    for cond in status.new_problems(view.status, patch):
        kopf.warn(body, reason=cond.reason, message=f"{cond.type}: {cond.message}"[:1024])
    if status.became_ready(view.status, patch):
        kopf.info(body, reason="Ready", message="the data plane is available and the database "
                  "reachable")


def _status_interval(ctx: Context) -> float:
    return durations.parse_duration(ctx.settings.watching.status_interval)


async def scale_down_sources(ctx: Context, namespace: str, name: str) -> None:
    """While a deleted monitor drains: stop collecting and detecting, keep the executor."""
    async with _monitor_lock(ctx, (namespace, name)):
        for component in (monitor.Component.COLLECTOR, monitor.Component.ANALYSER):
            patched = await ctx.api.merge_patch(kube.DEPLOYMENT, namespace,
                                                f"{name}-{component}", {"spec": {"replicas": 0}})
            cache = ctx.deployments.get((namespace, name))
            if patched is not None and cache is not None:
                _store(cache, _slim(patched))


# ---- what runs without being told --------------------------------------------------------
# What the operator does without being told: two operator-wide tasks, not timers per monitor.
#
# Before issue 19 (item 5) every monitor had two kopf timers: its status recomputed every
# ``watching.statusInterval`` (30 s: a monitor read, the Secret checks and a label-selected
# listing of Deployments, ~33 reconciles a second at 1,000 monitors) and its children
# re-applied every ``watching.resyncInterval`` (5 m: ~22 requests each, ~3.3 a second). Now:
#
# - the **status clock** (:func:`run_clock`) recomputes a monitor's status only when something
#   that no watch reports is due (``status.recheck_after``): the executor's report going stale,
#   and a missing or unreadable Secret re-checked every ``statusInterval`` (the operator may get
#   Secrets, not watch them). Deployments, the monitor and notification health are events.
# - the **drift-repair sweep** (:func:`run_resync`) re-applies every monitor's children once per
#   ``resyncInterval`` in turn, spread evenly over it, but never more than
#   :data:`RESYNC_MAX_PER_SECOND` monitors a second: from 300 monitors on (at the default 5 m)
#   the period grows by a second per monitor instead of the API requests growing with them.
#   It also recomputes the status, from a fresh picture of the Deployments, so a missed event,
#   a Deployment deleted while the watch was down or a Secret deleted under a healthy monitor
#   is noticed within one sweep (the bound of the Deployment cache's staleness).

#: Drift repairs per second at most (each is ~20 API requests with managed NATS).
RESYNC_MAX_PER_SECOND = 1.0
#: Status reconciles of the clock run at once at most.
CLOCK_CONCURRENCY = 8
#: Longest sleep of the clock with nothing due (it wakes earlier when something is).
CLOCK_IDLE = 60.0


def resync_period(interval: float, monitors: int) -> float:
    """How long one sweep over ``monitors`` takes: ``interval``, or longer at the rate cap."""
    return max(interval, monitors / RESYNC_MAX_PER_SECOND)


async def run_resync(ctx: Context) -> None:
    """Repair every known monitor once per period, one at a time, evenly spread (forever)."""
    interval = durations.parse_duration(ctx.settings.watching.resync_interval)
    while True:
        keys = sorted(ctx.seen)
        if not keys:
            await asyncio.sleep(interval)
            continue
        step = resync_period(interval, len(keys)) / len(keys)
        for key in keys:
            await asyncio.sleep(step)
            if key not in ctx.seen:
                continue  # deleted meanwhile
            try:
                await converge(ctx, *key, repair=True, handler="resync")
            except Exception:  # the next sweep tries again; never stop sweeping
                log.exception("the drift repair of %s/%s failed", *key)


def due_now(ctx: Context, now: float) -> list[Key]:
    """The monitors whose status is due at ``now``. Each is put back on the clock one
    statusInterval later: its reconcile reschedules it when it completes (or unschedules it;
    a monitor found gone is forgotten), so a reconcile that fails or hangs is tried again."""
    keys = [key for key, when in ctx.due.items() if when <= now]
    retry = now + _status_interval(ctx)
    for key in keys:
        ctx.due[key] = retry
    return keys


async def run_clock(ctx: Context) -> None:
    """Recompute each monitor's status when it is due (forever); the reconcile schedules the
    next time itself. Each due monitor runs on its own (at most :data:`CLOCK_CONCURRENCY` at
    once): one waiting long for its lock (a slow repair) holds up no other; one still running
    when due again is not started twice."""
    limit = asyncio.Semaphore(CLOCK_CONCURRENCY)
    running: dict[Key, asyncio.Task[None]] = {}

    async def one(key: Key) -> None:
        try:
            async with limit:
                await converge(ctx, *key, repair=False, handler="clock")
        except Exception:  # due again one statusInterval later (due_now)
            log.exception("the status of %s/%s could not be recomputed", *key)
        finally:
            running.pop(key, None)

    try:
        while True:
            now = ctx.clock()
            for key in due_now(ctx, now):
                if key not in running:
                    running[key] = asyncio.create_task(one(key), name=f"status-clock {key}")
            ctx.due_changed.clear()
            wait = min(ctx.due.values(), default=now + CLOCK_IDLE) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.due_changed.wait(), timeout=max(wait, 0.0))
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
