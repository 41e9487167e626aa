"""The one level-based reconcile: make a monitor's children match its spec, then its status
match the world.

:func:`converge` is what every trigger calls (kopf's create/update/resume handlers, the drift
repair timer, a deleted child, a Deployment status change, an executor report, the status
timer), serialised per monitor by a lock, always starting from a fresh read of the monitor:
repeated or concurrent triggers are harmless. With ``repair`` it server-side-applies every
child (idempotent: an unchanged child is not rewritten), generates the NATS credentials once,
and removes managed-NATS children when an external bus is configured; then it recomputes the
operator's status keys and merge-patches them only when they changed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import secrets
import time
import typing
from typing import Any

import kopf

from startupmonkey import kubetime
from startupmonkey.operator import children, credentials, kube, monitor, nats, render, status
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import metrics as op_metrics
from startupmonkey.operator import notify as notify_mod

log = logging.getLogger(__name__)
Key = tuple[str, str]


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

    def forget(self, key: Key) -> None:
        """Drop what we kept about a monitor that is gone."""
        self.apply_problems.pop(key, None)
        self.seen.pop(key, None)
        if self.metrics is not None:
            self.metrics.phases.pop(key, None)
        if self.notifier is not None:
            self.notifier.forget_monitor(key)
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            del self.locks[key]


async def ensure_nats_secret(ctx: Context, view: monitor.View) -> str:
    """Create the generated NATS Secret once, keep its passwords, re-render its server config
    when JetStream changes. Returns its resourceVersion, hashed onto the pod templates of NATS
    and its clients: changed credentials or server config roll them."""
    name = view.nats_secret_name
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
    existing = await ctx.api.get(kube.SECRET, view.namespace, name)
    if existing is not None and monitor.owner_of(existing) != view.key:
        log.warning("Secret %s/%s exists and is not controlled by this monitor: the watcher "
                    "login is not copied there", view.namespace, name)
        return
    wanted = nats.watcher_secret(view, creds)
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
    existing = await ctx.api.get(kube.SECRET, view.namespace, name)
    fresh = {render.INGEST_TOKEN_KEY: secrets.token_urlsafe(32)}
    if existing is None:
        created = await ctx.api.create({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": view.metadata(name, "ingest"), "stringData": fresh})
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
        await ctx.api.apply(obj)


async def _apply(ctx: Context, view: monitor.View) -> credentials.Problem | None:
    if view.spec is None:
        return None
    try:
        await apply_children(ctx, view)
    except kube.ApiError as exc:
        log.warning("applying the children of %s/%s failed: %s", *view.key, exc)
        return credentials.Problem(status.READY, status.APPLY_FAILED,
                                   f"could not apply the data plane: {exc}"[:1024])
    return None


async def converge(ctx: Context, namespace: str, name: str, *, repair: bool
                   ) -> credentials.Problem | None:
    """Bring one monitor's children (when ``repair``) and status in line; returns the apply
    problem, if any (kopf handlers turn it into a retry)."""
    key = (namespace, name)
    started, outcome = time.monotonic(), "error"
    try:
        async with ctx.locks[key]:
            body = await ctx.api.get(kube.MONITOR, namespace, name)
            if body is None:
                ctx.forget(key)
                outcome = "gone"
                return None
            view = monitor.parse(body)
            observed = view.observed_generation
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
        if ctx.metrics is not None:
            ctx.metrics.reconciled(repair, outcome, time.monotonic() - started)


async def observe(ctx: Context, view: monitor.View, observed: int | None) -> status.Inputs:
    """Read what the status is computed from."""
    secrets: list[credentials.Problem] = []
    deployments: dict[str, dict[str, Any]] = {}
    if view.spec is not None:
        secrets = await credentials.check(ctx.api, view)
        selector = f"{monitor.LABEL_MONITOR}={view.name},{monitor.LABEL_MANAGED_BY}=" \
                   f"{monitor.MANAGED_BY}"
        for dep in await ctx.api.list(kube.DEPLOYMENT, view.namespace, selector):
            if monitor.owner_of(dep) == view.key:
                deployments[dep["metadata"]["labels"].get(monitor.LABEL_COMPONENT, "")] = dep
    notifications = await ctx.notifier.seen(view) if ctx.notifier is not None else None
    return status.Inputs(view=view, deployments=deployments, secret_problems=secrets,
                         apply_problem=ctx.apply_problems.get(view.key),
                         observed_generation=observed, now=kubetime.utcnow(),
                         notifications=notifications)


async def refresh(ctx: Context, view: monitor.View, observed: int | None) -> None:
    """Recompute the operator's status keys; patch and post Events only on a change."""
    patch = status.compute(await observe(ctx, view, observed))
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


async def scale_down_sources(ctx: Context, namespace: str, name: str) -> None:
    """While a deleted monitor drains: stop collecting and detecting, keep the executor."""
    async with ctx.locks[(namespace, name)]:
        for component in (monitor.Component.COLLECTOR, monitor.Component.ANALYSER):
            await ctx.api.merge_patch(kube.DEPLOYMENT, namespace, f"{name}-{component}",
                                      {"spec": {"replicas": 0}})
