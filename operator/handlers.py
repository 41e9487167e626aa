"""kopf registration: which events reach the reconciler, and kopf's own settings.

Every handler is thin: it parses kopf's loose kwargs at the edge and calls
:func:`startupmonkey.operator.reconcile.converge` (children and status), the drain of
``startupmonkey.operator.deletion``, or starts the retention sweep. Status follows the world,
not only spec edits (kopf's diff ignores ``status`` and watches nothing else by default):
events of the owned Deployments, deletions of any owned child (put back at once), changes of
the executor-owned status, plus a short status timer and a slow drift-repair timer.

kopf keeps its progress and diff base in annotations under ``startupmonkey.dev`` and never
writes handler results into status; the finalizer is ``startupmonkey.dev/drain``; peering is
standalone (run one operator replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable
from typing import Any

import kopf

from startupmonkey import kubetime
from startupmonkey.models import durations
from startupmonkey.models import monitor as monitor_models
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import deletion, kube, monitor, reconcile, retention, status, webhook

log = logging.getLogger(__name__)
MONITOR = (monitor_models.GROUP, monitor_models.VERSION, monitor_models.PLURAL)
REMEDIATION = (monitor_models.GROUP, monitor_models.VERSION, "remediations")
#: The kinds of children the operator watches (Secrets it may only get: the timer repairs them).
CHILDREN = (("apps", "v1", "deployments"), ("", "v1", "configmaps"), ("", "v1", "services"),
            ("", "v1", "serviceaccounts"), ("networking.k8s.io", "v1", "networkpolicies"),
            ("rbac.authorization.k8s.io", "v1", "roles"),
            ("rbac.authorization.k8s.io", "v1", "rolebindings"))
MANAGED = f"{monitor.LABEL_MANAGED_BY}={monitor.MANAGED_BY}"
PREFIX = "startupmonkey.dev"
APPLY_RETRY_DELAY = 15.0


def context(memo: Any) -> reconcile.Context:
    """The shared context kept in kopf's memo."""
    ctx = memo["context"]
    assert isinstance(ctx, reconcile.Context)
    return ctx


def _key(body: Any) -> tuple[str, str]:
    meta = body["metadata"]
    return str(meta["namespace"]), str(meta["name"])


async def startup(memo: kopf.Memo, **_: Any) -> None:
    """Start the Remediation retention sweep."""
    ctx = context(memo)
    pruned = ctx.metrics.pruned.inc if ctx.metrics is not None else None
    task = asyncio.create_task(retention.run(ctx.api, ctx.settings.watching.namespaces,
                                             ctx.settings.retention, pruned), name="retention")
    ctx.background.append(task)


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the background tasks and the notification workers."""
    ctx = context(memo)
    if ctx.notifier is not None:
        await ctx.notifier.stop()
    for task in ctx.background:
        task.cancel()
    for task in ctx.background:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctx.background.clear()


async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """create / update / resume: apply the children, then the status."""
    problem = await reconcile.converge(context(memo), *_key(body), repair=True)
    if problem is not None:
        raise kopf.TemporaryError(problem.message, delay=APPLY_RETRY_DELAY)


async def _unless_stopped(stopped: kopf.DaemonStopped, work: Awaitable[Any]) -> None:
    """A timer's work, cancelled as soon as kopf stops the timer (exit, deletion), so kopf
    never has to leave a running timer orphaned."""
    job = asyncio.ensure_future(work)
    halt = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({job, halt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, halt):
            task.cancel()
        await asyncio.gather(job, halt, return_exceptions=True)
    if not job.cancelled():
        job.result()  # re-raise a failure for kopf to log


async def resync(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """The slow drift-repair timer: re-apply everything even if no event was seen."""
    if not body["metadata"].get("deletionTimestamp"):
        await _unless_stopped(kwargs["stopped"], reconcile.converge(
            context(memo), *_key(body), repair=True))


async def status_tick(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """The short status timer (time-dependent conditions, missed events)."""
    await _unless_stopped(kwargs["stopped"], reconcile.converge(
        context(memo), *_key(body), repair=False))


def _fingerprint(body: kopf.Body) -> str:
    report = status.database_report(dict(body.get("status") or {}))
    # checkedAt changes every tick; staleness is the timer's job.
    database = report.model_dump(mode="json", exclude={"checked_at"}) if report else None
    return json.dumps([body["metadata"].get("generation"), database,
                       body["metadata"].get("deletionTimestamp")], sort_keys=True, default=str)


async def monitor_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                        **_: Any) -> None:
    """Any change of the monitor, the executor's status reports included."""
    ctx = context(memo)
    key = _key(body)
    if event["type"] == "DELETED":
        ctx.forget(key)
        return
    fingerprint = _fingerprint(body)
    if event["type"] is None or ctx.seen.get(key) == fingerprint:
        ctx.seen[key] = fingerprint
        return  # the initial listing (resume handles it) or nothing we derive from changed
    ctx.seen[key] = fingerprint
    await reconcile.converge(ctx, *key, repair=False)


async def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                      resource: kopf.Resource, **_: Any) -> None:
    """A deleted child is put back at once; a Deployment change moves the conditions."""
    owner = monitor.owner_of(dict(body))
    if owner is None or event["type"] is None:
        return
    if event["type"] == "DELETED":
        log.info("%s %s/%s was deleted: reconciling its monitor", resource.kind, *_key(body))
        await reconcile.converge(context(memo), *owner, repair=True)
    elif resource.plural == "deployments":
        await reconcile.converge(context(memo), *owner, repair=False)


async def remediation_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                            **_: Any) -> None:
    """Any Remediation event, the listing after a (re)start included: queue the
    notifications due (``operator/notify.py``); sending happens in the targets' own tasks."""
    notifier = context(memo).notifier
    if notifier is None:
        return
    if event["type"] == "DELETED":
        notifier.forget(dict(body))
        return
    try:
        await notifier.remediation_changed(dict(body))
    except (kube.ApiError, OSError) as exc:  # the next event or the restart's listing retries
        log.warning("notifications of Remediation %s/%s not judged: %s", *_key(body), exc)


async def drain(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The finalizer: wait (bounded) for in-flight work, then let garbage collection go."""
    ctx = context(memo)
    namespace, name = _key(body)
    now = kubetime.utcnow()
    settings = ctx.settings.deletion
    decision = deletion.decide(deletion.in_flight(dict(body)),
                               deletion.deleted_at(dict(body), now), now,
                               durations.parse_duration(settings.grace_period),
                               durations.parse_duration(settings.poll_interval))
    await reconcile.scale_down_sources(ctx, namespace, name)
    await reconcile.converge(ctx, namespace, name, repair=False)
    if decision.wait:
        raise kopf.TemporaryError(decision.message, delay=decision.delay)
    if decision.timed_out:
        kopf.warn(body, reason="DrainTimedOut", message=decision.message)
    else:
        kopf.info(body, reason="Drained", message=decision.message)
    ctx.forget((namespace, name))


def registry(settings: config_mod.OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler, registered on a registry of our own (no import-time side effects)."""
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(kopf.login_via_client)
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    for cause in (kopf.on.resume, kopf.on.create, kopf.on.update):
        cause(*MONITOR, registry=reg, id="reconcile")(spec_changed)
    kopf.on.delete(*MONITOR, registry=reg, id="drain")(drain)
    kopf.on.event(*MONITOR, registry=reg, id="status-events")(monitor_event)
    kopf.on.event(*REMEDIATION, registry=reg, id="notify")(remediation_event)
    resync_every = durations.parse_duration(settings.watching.resync_interval)
    kopf.timer(*MONITOR, registry=reg, id="resync", interval=resync_every,
               initial_delay=resync_every)(resync)
    kopf.timer(*MONITOR, registry=reg, id="status",
               interval=durations.parse_duration(settings.watching.status_interval))(status_tick)
    for group, version, plural in CHILDREN:
        kopf.on.event(group, version, plural, registry=reg, id=f"child-{plural}",
                      labels={monitor.LABEL_MANAGED_BY: monitor.MANAGED_BY,
                              monitor.LABEL_MONITOR: kopf.PRESENT})(child_event)
    if settings.webhook.enabled:
        webhook.register(reg)  # who approved a Remediation (operator/webhook.py)
    return reg


KOPF_CONNECT_TIMEOUT = 10.0
KOPF_REQUEST_TIMEOUT = 60.0


def kopf_settings(settings: config_mod.OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings: storage under startupmonkey.dev, our finalizer, watch timeouts."""
    ks = kopf.OperatorSettings()
    ks.persistence.finalizer = deletion.FINALIZER
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    ks.posting.reporting_component = monitor.MANAGED_BY
    ks.posting.reporting_instance = socket.gethostname()
    ks.peering.standalone = True
    ks.scanning.disabled = True  # no list/watch of CRDs and namespaces needed (least privilege)
    ks.background.instant_exit_timeout = 1.0  # timers cancel their work when stopped
    ks.watching.inactivity_timeout = durations.parse_duration(
        settings.watching.inactivity_timeout)
    ks.watching.server_timeout = int(durations.parse_duration(settings.watching.server_timeout))
    ks.watching.client_timeout = ks.watching.server_timeout + 60
    # kopf's own API calls (patches, events, finalizers): bounded like ours, so a hung API
    # server delays a handler and its retry instead of holding it for kopf's default 5 minutes
    # with no connect timeout at all (the watch streams have their own timeouts above).
    ks.networking.connect_timeout = KOPF_CONNECT_TIMEOUT
    ks.networking.request_timeout = KOPF_REQUEST_TIMEOUT
    for group, version, plural in CHILDREN:
        ks.watching.label_selectors[group, version, plural] = MANAGED
    if settings.webhook.enabled:
        ks.admission.server = webhook.server(settings.webhook)
        ks.admission.managed = None  # we apply the configuration ourselves (webhook.py)
    return ks

