"""The operator's Prometheus metrics and readiness (served by ``startupmonkey.observability``).

The operator serves ``/metrics``, ``/healthz`` and ``/readyz`` on its observability port, like
every component (``STARTUPMONKEY_OBSERVABILITY_PORT``; kopf's own liveness endpoint stays on
``--liveness-port``). Readiness is the AND of two dependencies:

- ``kubernetes-api``: the operator's last call to the API server got an answer it may use. A
  check lists one DatabaseMonitor of each watched scope every :data:`API_CHECK_INTERVAL`, so
  an idle operator still notices a lost API server or a revoked permission; every real call in
  between reports too (a 5xx or no answer at all: not ready; 4xx other than 401/403 are
  ordinary answers, e.g. a 404 for a child not created yet).
- ``kopf``: kopf has finished its startup handlers and started watching (its ready flag), and
  is not shutting down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from startupmonkey import observability
from startupmonkey.operator import kube

log = logging.getLogger(__name__)
API = "kubernetes-api"
KOPF = "kopf"
#: Seconds between readiness checks of the API server.
API_CHECK_INTERVAL = 10.0
PHASES = ("Ready", "Pending", "Degraded", "Error", "Suspended", "Terminating")
#: What started a reconcile (the ``handler`` label; never a monitor's name: labels stay
#: bounded at any number of monitors): kopf's create/update/resume (``spec``), the drift
#: repair sweep (``resync``), the status clock (``clock``: a report going stale, a Secret
#: problem re-checked), an event of the monitor or of a child, a notification target's
#: health, the finalizer's drain. Anything else is counted as ``other``.
HANDLERS = ("spec", "resync", "clock", "monitor-event", "child-event", "notify", "drain")
OTHER = "other"
#: Buckets of API requests per reconcile: a status reconcile makes about 3, a repair of a
#: monitor with managed NATS about 25.
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
Key = tuple[str, str]


class _Phases(Collector):
    """``startupmonkey_operator_monitors{phase}``: the monitors by their last computed phase."""

    def __init__(self, phases: dict[Key, str]) -> None:
        self.phases = phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("startupmonkey_operator_monitors",
                                   "DatabaseMonitors by the phase the operator last computed",
                                   labels=["phase"])
        counts = dict.fromkeys(PHASES, 0)
        for phase in list(self.phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """Counters and gauges of one operator process, on the given registry."""

    def __init__(self, registry: prometheus_client.CollectorRegistry,
                 health: observability.Health | None = None) -> None:
        self.health = health
        self.reconciles = prometheus_client.Counter(
            "startupmonkey_operator_reconciles_total",
            "Reconciles of a monitor by kind (repair: children applied; status: conditions "
            "only) and outcome (ok, apply_failed, gone, error)", ["kind", "outcome"],
            registry=registry)
        self.reconcile_seconds = prometheus_client.Histogram(
            "startupmonkey_operator_reconcile_duration_seconds",
            "Duration of one reconcile of a monitor", ["kind"], registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.handler_seconds = prometheus_client.Histogram(
            "startupmonkey_operator_handler_reconcile_duration_seconds",
            "Duration of one reconcile of a monitor by what started it (handler: spec, "
            "resync, clock, monitor-event, child-event, notify, drain), the wait for the "
            "monitor's lock and a repair slot included", ["handler"], registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.handler_requests = prometheus_client.Histogram(
            "startupmonkey_operator_handler_reconcile_api_requests",
            "Kubernetes API requests made by one reconcile of a monitor, by what started it "
            "(its _sum is the handler's total requests; kopf's own requests excluded)",
            ["handler"], registry=registry, buckets=REQUEST_BUCKETS)
        self.coalesced = prometheus_client.Counter(
            "startupmonkey_operator_reconciles_coalesced_total",
            "Status reconciles not run because one of the same monitor was already waiting "
            "(it reads the world after the trigger anyway), by handler", ["handler"],
            registry=registry)
        self.api_requests = prometheus_client.Counter(
            "startupmonkey_operator_api_requests_total",
            "Requests of the operator to the Kubernetes API (kopf's watches excluded) by "
            "method and HTTP status code (\"none\": no answer)", ["method", "code"],
            registry=registry)
        self.pruned = prometheus_client.Counter(
            "startupmonkey_operator_remediations_pruned_total",
            "Finished Remediations deleted by the retention policy", registry=registry)
        self.notifications = prometheus_client.Counter(
            "startupmonkey_operator_notifications_total",
            "Notification outcomes per target: delivered (a 2xx, recorded), retried (an "
            "attempt failed, another follows), failed (given up after the last attempt), "
            "record_failed (delivered, but the record could not be written)",
            ["namespace", "monitor", "target", "outcome"], registry=registry)
        self.notification_failing = prometheus_client.Gauge(
            "startupmonkey_operator_notification_failing",
            "1 while a notification target's last attempt failed, else 0",
            ["namespace", "monitor", "target"], registry=registry)
        self.phases: dict[Key, str] = {}
        registry.register(_Phases(self.phases))

    def reconciled(self, repair: bool, outcome: str, seconds: float, handler: str = OTHER,
                   requests: int | None = None) -> None:
        """One :func:`reconcile.converge` finished: ``seconds`` long, ``requests`` API
        requests made, started by ``handler`` (one of :data:`HANDLERS`)."""
        kind = "repair" if repair else "status"
        self.reconciles.labels(kind, outcome).inc()
        self.reconcile_seconds.labels(kind).observe(seconds)
        handler = handler if handler in HANDLERS else OTHER
        self.handler_seconds.labels(handler).observe(seconds)
        if requests is not None:
            self.handler_requests.labels(handler).observe(requests)

    def skipped(self, handler: str) -> None:
        """A status reconcile coalesced into one already waiting."""
        self.coalesced.labels(handler if handler in HANDLERS else OTHER).inc()

    def notified(self, namespace: str, monitor: str, target: str, outcome: str) -> None:
        """One outcome of a notification (``operator/notify.py``)."""
        self.notifications.labels(namespace, monitor, target, outcome).inc()
        self.notification_failing.labels(namespace, monitor, target).set(
            0 if outcome == "delivered" else 1)

    def api_answered(self, method: str, status: int | None, detail: str = "") -> None:
        """Every request of :class:`kube.Api`: counted, and the API's health follows it."""
        self.api_requests.labels(method, "none" if status is None else str(status)).inc()
        if self.health is None:
            return
        if status is None or status >= 500:
            self.health.set(API, False, detail or f"{method} answered {status}")
        elif status in (401, 403):
            self.health.set(API, False, f"{method} refused ({status}): {detail}"[:300])
        else:
            self.health.set(API, True, "answering")


async def check_api(api: kube.Api, namespaces: list[str]) -> None:
    """List one DatabaseMonitor per watched scope: reachable, authenticated and allowed."""
    scopes: list[str | None] = list(namespaces) or [None]
    for namespace in scopes:
        await api.request("GET", kube.MONITOR.path(namespace), query=[("limit", "1")])


async def keep_checking_api(api: kube.Api, namespaces: list[str],
                            interval: float = API_CHECK_INTERVAL) -> None:
    """Check the API server forever (until cancelled); the outcome reaches the health through
    :meth:`OperatorMetrics.api_answered`."""
    while True:
        try:
            await check_api(api, namespaces)
        except kube.ApiError:
            pass  # reported by api_answered
        except Exception as exc:  # no answer: reported too; keep checking
            log.debug("the API server check failed: %s", exc)
        await asyncio.sleep(interval)


async def follow_kopf(health: observability.Health, ready: asyncio.Event,
                      namespaces: list[str]) -> None:
    """``kopf`` becomes ready when kopf raises its ready flag (startup handlers done)."""
    await ready.wait()
    scope = ", ".join(namespaces) or "all namespaces"
    health.set(KOPF, True, f"started; watching {scope}")

