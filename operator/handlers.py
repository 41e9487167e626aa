"""kopf registration: which events reach the reconciler, and kopf's own settings.

Every handler is thin: it parses kopf's loose kwargs at the edge and calls
:func:`startupmonkey.operator.reconcile.converge` (children and status), the drain of
``startupmonkey.operator.deletion``, or starts the retention sweep. Status follows the world,
not only spec edits (kopf's diff ignores ``status`` and watches nothing else by default):
events of the owned Deployments, deletions of any owned child (put back at once), changes of
the executor-owned status. No timer per monitor (issue 19, item 5): one status clock for what
no watch reports (a report going stale, a missing Secret) and one paced drift-repair sweep
(``operator/reconcile.py``).

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
#: The kinds of children the operator watches (Secrets it may only get: the sweep repairs them).
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
    """Start the Remediation retention sweep, the status clock and the drift-repair sweep."""
    ctx = context(memo)
    pruned = ctx.metrics.pruned.inc if ctx.metrics is not None else None
    ctx.background += [
        asyncio.create_task(retention.run(ctx.api, ctx.settings.watching.namespaces,
                                          ctx.settings.retention, pruned), name="retention"),
        asyncio.create_task(reconcile.run_clock(ctx), name="status-clock"),
        asyncio.create_task(reconcile.run_resync(ctx), name="resync")]


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
    ctx = context(memo)
    key = _key(body)
    ctx.seen.setdefault(key, "")  # known to the drift-repair sweep from now on
    problem = await reconcile.converge(ctx, *key, repair=True, handler="spec")
    if problem is not None:
        raise kopf.TemporaryError(problem.message, delay=APPLY_RETRY_DELAY)


def _fingerprint(body: kopf.Body, stale_in: float | None) -> str:
    current = dict(body.get("status") or {})
    report = status.database_report(current)
    # checkedAt changes every report: only whether it is stale counts here (the status clock
    # marks it stale when it is due), and whether the stored condition already says so.
    database = report.model_dump(mode="json", exclude={"checked_at"}) if report else None
    stored = {c.get("type"): c.get("reason") for c in current.get("conditions") or []
              if isinstance(c, dict)}
    return json.dumps([body["metadata"].get("generation"), database,
                       body["metadata"].get("deletionTimestamp"),
                       stale_in is not None and stale_in <= 0,
                       stored.get(status.DATABASE_REACHABLE) == status.STALE],
                      sort_keys=True, default=str)


async def monitor_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                        **_: Any) -> None:
    """Any change of the monitor, the executor's status reports included."""
    ctx = context(memo)
    key = _key(body)
    if event["type"] == "DELETED":
        ctx.forget(key)
        return
    stale_in = status.stale_in(monitor.parse(dict(body)), kubetime.utcnow())
    fingerprint = _fingerprint(body, stale_in)
    if not ctx.seen.get(key) and event["type"] in (None, "ADDED"):
        # First seen: the listing at start (resume reconciles it) or a new monitor (create
        # does). A listing later (kopf re-lists after a watch gap, every object with type
        # None) is compared like any event: the report may have changed during the gap.
        ctx.seen[key] = fingerprint
        return
    if ctx.seen.get(key) == fingerprint:
        ctx.seen[key] = fingerprint
        if key in ctx.due and key not in ctx.rechecking and \
                stale_in is not None and stale_in > 0:
            # A fresh report only moves the staleness deadline: no reconcile needed.
            ctx.schedule(key, stale_in + status.STALE_MARGIN)
        return  # nothing we derive the status from changed
    ctx.seen[key] = fingerprint
    await reconcile.converge(ctx, *key, repair=False, handler="monitor-event")


async def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                      resource: kopf.Resource, **_: Any) -> None:
    """A deleted child is put back at once; a Deployment change moves the conditions (the
    Deployment cache of ``reconcile`` follows every Deployment event, the listings after a
    watch restarts included; our own applies' echoes change nothing there)."""
    owner = monitor.owner_of(dict(body))
    if owner is None:
        return
    ctx = context(memo)
    changed = False
    if resource.plural == "deployments":
        changed = reconcile.deployment_seen(ctx, dict(body), event["type"] == "DELETED")
    if event["type"] is None:
        if changed and owner in ctx.deployments:
            await reconcile.converge(ctx, *owner, repair=False, handler="child-event")
        return
    if event["type"] == "DELETED":
        log.info("%s %s/%s was deleted: reconciling its monitor", resource.kind, *_key(body))
        await reconcile.converge(ctx, *owner, repair=True, handler="child-event")
    elif changed:
        await reconcile.converge(ctx, *owner, repair=False, handler="child-event")


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
    await reconcile.converge(ctx, namespace, name, repair=False, handler="drain")
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
    ks.background.instant_exit_timeout = 1.0  # no daemons or timers of ours to wait for
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

