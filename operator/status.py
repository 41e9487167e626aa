"""The operator's keys of a monitor's status: conditions, observedGeneration and phase.

Pure functions of what the world looks like (the monitor, its Deployments, the Secret checks,
the last apply, the executor's ``status.database``), so every trigger (a spec change, a
Deployment event, an executor report, a timer) computes the same answer. Conditions follow the
``metav1.Condition`` shape; ``lastTransitionTime`` moves only when a condition's status does,
and a patch is sent only when something changed. The operator writes ONLY these three keys
(merge patches), never ``status.database`` or ``status.remediations`` (the executor's).

Condition types and reasons live here, beside the code that sets them
(docs/design.md#conventions, 5).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any
from urllib.parse import urlsplit

from startupmonkey import kubetime, notify
from startupmonkey.models import durations
from startupmonkey.models import monitor as models
from startupmonkey.operator import credentials, monitor

Component = monitor.Component

READY = "Ready"
COLLECTOR_AVAILABLE = "CollectorAvailable"
ANALYSER_AVAILABLE = "AnalyserAvailable"
EXECUTOR_AVAILABLE = "ExecutorAvailable"
EVENT_BUS_AVAILABLE = "EventBusAvailable"
DATABASE_REACHABLE = "DatabaseReachable"
#: Informational (not part of Ready): sessions of the watched database log in as a superuser,
#: so a remediation on them would be refused (issue 17, item 4).
SUPERUSER_SESSIONS = "SuperuserSessions"
#: Informational (not part of Ready), only with spec.notifications: each target's last
#: delivery succeeded (issue 20, item 1).
NOTIFICATIONS_DELIVERED = "NotificationsDelivered"
TYPES = (READY, COLLECTOR_AVAILABLE, ANALYSER_AVAILABLE, EXECUTOR_AVAILABLE,
         EVENT_BUS_AVAILABLE, DATABASE_REACHABLE, SUPERUSER_SESSIONS)
COMPONENT_TYPES = {Component.COLLECTOR: COLLECTOR_AVAILABLE,
                   Component.ANALYSER: ANALYSER_AVAILABLE,
                   Component.EXECUTOR: EXECUTOR_AVAILABLE}

# Reasons.
ALL_AVAILABLE = "AllAvailable"
AVAILABLE = "Available"
UNAVAILABLE = "Unavailable"
PROGRESSING = "Progressing"
ROLLOUT_STUCK = "ProgressDeadlineExceeded"
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
SCALED_TO_ZERO = "ScaledToZero"
SUSPENDED = "Suspended"
TERMINATING = "Terminating"
EXTERNAL = "External"
REACHABLE = "Reachable"
UNREACHABLE = "Unreachable"
NOT_REPORTED = "NotReported"
STALE = "Stale"
INVALID_SPEC = "InvalidSpec"
SUPERUSER_LOGINS = "SuperuserLogins"
NO_SUPERUSER_LOGINS = "NoSuperuserLogins"
NOT_CHECKED = "NotChecked"
APPLY_FAILED = "ApplyFailed"
DELIVERED = "Delivered"
#: Why a notification target fails (the notifier's words: startupmonkey/notify.py and
#: operator/notify.py).
NOTIFY_REASONS = frozenset({notify.REASON_FAILED, notify.REASON_TIMEOUT, notify.REASON_REFUSED})
#: Reasons that need the user to act (an Event is posted when one appears).
ERROR_REASONS = frozenset({INVALID_SPEC, APPLY_FAILED, *credentials.REASONS, *NOTIFY_REASONS})
#: Reasons that usually resolve by themselves.
TRANSIENT_REASONS = frozenset({PROGRESSING, DEPLOYMENT_NOT_FOUND, NOT_REPORTED})

#: A database report older than this many intervals (and at least STALE_MIN_SECONDS) is stale.
STALE_INTERVALS = 10
STALE_MIN_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class Cond:
    """One condition before timestamps are attached."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def true(self) -> bool:
        return self.status == "True"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything the status is computed from."""

    view: monitor.View
    deployments: dict[str, dict[str, Any]]
    secret_problems: list[credentials.Problem]
    apply_problem: credentials.Problem | None
    observed_generation: int | None
    now: datetime.datetime
    #: Each notification target's last outcome (``Context.notifier``); None: nothing sends
    #: in this process (every target reads as healthy).
    notifications: dict[str, notify.Health] | None = None


def deployment_condition(kind: str, name: str, dep: dict[str, Any] | None) -> Cond:
    """Availability of one Deployment, as its controller last reported it."""
    if dep is None:
        return Cond(kind, "False", DEPLOYMENT_NOT_FOUND, f'Deployment "{name}" does not exist')
    wanted = int(dep.get("spec", {}).get("replicas", 1))
    st = dep.get("status") or {}
    available = int(st.get("availableReplicas") or 0)
    counts = f"{available}/{wanted} replicas available"
    if int(st.get("observedGeneration") or 0) < int(dep["metadata"].get("generation", 1)):
        return Cond(kind, "False", PROGRESSING, f"rollout of the latest spec not observed "
                    f"yet; {counts}")
    by_type = {c.get("type"): c for c in st.get("conditions") or []}
    if by_type.get("Available", {}).get("status") == "True" and available >= 1:
        return Cond(kind, "True", AVAILABLE, counts)
    progressing = by_type.get("Progressing", {})
    if progressing.get("status") == "False":
        return Cond(kind, "False", ROLLOUT_STUCK, f"{counts}; {progressing.get('message', '')}")
    if progressing.get("status") == "True" and \
            progressing.get("reason") != "NewReplicaSetAvailable":
        return Cond(kind, "False", PROGRESSING, counts)
    return Cond(kind, "False", UNAVAILABLE, counts)


def component_condition(inputs: Inputs, component: Component, kind: str) -> Cond:
    """Availability of one data-plane component (or NATS)."""
    view = inputs.view
    assert view.spec is not None
    if view.spec.suspend:
        return Cond(kind, "False", SUSPENDED, "spec.suspend is true: scaled to zero")
    if component is Component.EXECUTOR and view.spec.executor.replicas == 0:
        return Cond(kind, "False", SCALED_TO_ZERO, "spec.executor.replicas is 0: nothing acts")
    return deployment_condition(kind, view.child_name(component),
                                inputs.deployments.get(str(component)))


def _secret_problem(inputs: Inputs, kind: str) -> Cond | None:
    for problem in inputs.secret_problems:
        if problem.condition == kind:
            return Cond(kind, "False", problem.reason, problem.message)
    return None


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return url


def event_bus_condition(inputs: Inputs) -> Cond:
    """The managed NATS Deployment, or an external URL (the clients' readiness covers it)."""
    view = inputs.view
    assert view.spec is not None
    problem = _secret_problem(inputs, EVENT_BUS_AVAILABLE)
    if problem is not None:
        return problem
    if view.spec.event_bus.url:
        return Cond(EVENT_BUS_AVAILABLE, "True", EXTERNAL,
                    f"external NATS {_redacted(view.spec.event_bus.url)}; the analyser's and "
                    "executor's readiness include their connection to it")
    return component_condition(inputs, Component.NATS, EVENT_BUS_AVAILABLE)


def stale_after(view: monitor.View) -> float:
    """Seconds after which a database report no longer counts."""
    assert view.spec is not None
    interval = durations.parse_duration(view.spec.interval)
    return max(STALE_INTERVALS * interval, STALE_MIN_SECONDS)


def database_report(current: dict[str, Any]) -> models.DatabaseStatus | None:
    """The executor's ``status.database`` of a stored status, None when it has not reported
    (or what it wrote does not parse)."""
    report = models.DatabaseMonitorStatus.parse(current).database
    return report if report is not None and "reachable" in report.model_fields_set else None


def database_condition(inputs: Inputs) -> Cond:
    """From the executor's ``status.database`` (the operator never connects itself)."""
    problem = _secret_problem(inputs, DATABASE_REACHABLE)
    if problem is not None:
        return problem
    report = database_report(inputs.view.status)
    if report is None:
        return Cond(DATABASE_REACHABLE, "Unknown", NOT_REPORTED,
                    "the executor has not reported on the database yet")
    checked = report.checked_at
    limit = stale_after(inputs.view)
    if checked is not None and (inputs.now - checked).total_seconds() > limit:
        return Cond(DATABASE_REACHABLE, "Unknown", STALE,
                    f"the executor's last report is from {kubetime.format(checked)} "
                    f"(older than {durations.format_duration(limit)})")
    # The same words as `startupmonkey run` shows (DatabaseStatus.state_line).
    if not report.reachable:
        return Cond(DATABASE_REACHABLE, "False", UNREACHABLE, report.state_line()[:4096])
    return Cond(DATABASE_REACHABLE, "True", REACHABLE, report.state_line()[:4096])


def superuser_condition(inputs: Inputs) -> Cond:
    """Whether sessions of the watched database log in as a superuser, and what that means
    for remediations on them, from the executor's report (the operator never connects)."""
    view = inputs.view
    assert view.spec is not None
    report = database_report(view.status)
    if report is None or not report.reachable or "superuser_logins" not in \
            report.model_fields_set:
        return Cond(SUPERUSER_SESSIONS, "Unknown", NOT_CHECKED,
                    "the executor has not reported the database's sessions yet")
    if not report.superuser_logins:
        return Cond(SUPERUSER_SESSIONS, "False", NO_SUPERUSER_LOGINS,
                    "no session of the watched database logs in as a superuser")
    notice = report.superuser_notice(view.spec.protect.superusers)
    return Cond(SUPERUSER_SESSIONS, "True", SUPERUSER_LOGINS, notice or "")


def notifications_condition(inputs: Inputs) -> Cond | None:
    """Whether every notification target's last delivery succeeded (None without targets):
    False with the first failing target's reason and every failing target's words."""
    view = inputs.view
    assert view.spec is not None
    names = [t.name for t in view.spec.notifications]
    if not names:
        return None
    health = inputs.notifications or {}
    failing = [(n, health[n]) for n in names if n in health and not health[n].ok]
    if not failing:
        return Cond(NOTIFICATIONS_DELIVERED, "True", DELIVERED,
                    f"{len(names)} target(s); no delivery is failing")
    message = "; ".join(f"{n}: {h.message}" for n, h in failing)
    return Cond(NOTIFICATIONS_DELIVERED, "False", failing[0][1].reason or notify.REASON_FAILED,
                message[:4096])


def ready_condition(inputs: Inputs, parts: list[Cond]) -> Cond:
    """The summary: True only when every other condition is True."""
    view = inputs.view
    if view.deleting:
        return Cond(READY, "False", TERMINATING, "the monitor is being deleted; waiting for "
                    "in-flight remediations before the data plane is removed")
    if view.spec is not None and view.spec.suspend:
        return Cond(READY, "False", SUSPENDED, "spec.suspend is true: the data plane is "
                    "scaled to zero")
    if inputs.apply_problem is not None:
        return Cond(READY, "False", inputs.apply_problem.reason, inputs.apply_problem.message)
    failing = [c for c in parts if not c.true]
    if not failing:
        # The database's own words (its condition's message: "reachable: PostgreSQL 15.8,
        # primary; off on this server: ..."), so what is off is seen from Ready too.
        database = next((c.message for c in parts if c.type == DATABASE_REACHABLE),
                        "reachable")
        return Cond(READY, "True", ALL_AVAILABLE, "collector, analyser, executor and event bus "
                    f"available; database {database}"[:4096])
    root = next((c for c in failing if c.reason in ERROR_REASONS), failing[0])
    message = "; ".join(f"{c.type}: {c.message}" for c in failing)
    return Cond(READY, "False", root.reason, message[:4096])


def conditions(inputs: Inputs) -> list[Cond]:
    """Ready first, then one condition per part of the pipeline."""
    view = inputs.view
    if view.spec is None:
        message = f"the spec does not parse: {view.spec_error}"
        unknown = [Cond(t, "Unknown", INVALID_SPEC, message) for t in TYPES[1:]]
        return [Cond(READY, "False", INVALID_SPEC, message), *unknown]
    parts = [component_condition(inputs, c, t) for c, t in COMPONENT_TYPES.items()]
    parts += [event_bus_condition(inputs), database_condition(inputs)]
    notified = notifications_condition(inputs)
    return [ready_condition(inputs, parts), *parts, superuser_condition(inputs),
            *([notified] if notified is not None else [])]


def phase(view: monitor.View, conds: list[Cond]) -> str:
    """The one-word summary for the printer column."""
    ready = conds[0]
    if view.deleting:
        return "Terminating"
    if view.spec is not None and view.spec.suspend:
        return "Suspended"
    if ready.true:
        return "Ready"
    if ready.reason in ERROR_REASONS:
        return "Error"
    if any(c.reason in TRANSIENT_REASONS for c in conds):
        return "Pending"
    return "Degraded"


def with_times(old: list[models.Condition], new: list[Cond], generation: int | None,
               now: datetime.datetime) -> list[models.Condition]:
    """Conditions; lastTransitionTime kept from ``old`` while the status is the same."""
    previous = {c.type: c for c in old}
    out: list[models.Condition] = []
    for cond in new:
        before = previous.get(cond.type)
        since = before.last_transition_time if before is not None and \
            before.status == cond.status else now
        out.append(models.Condition(
            type=cond.type, status=cond.status, reason=cond.reason, message=cond.message,
            last_transition_time=since, observed_generation=generation))
    return out


def compute(inputs: Inputs) -> dict[str, Any]:
    """The operator's status keys (what a merge patch sends)."""
    conds = conditions(inputs)
    old = models.DatabaseMonitorStatus.parse(inputs.view.status).conditions
    return models.DatabaseMonitorStatus(
        conditions=with_times(old, conds, inputs.observed_generation, inputs.now),
        phase=phase(inputs.view, conds), observed_generation=inputs.observed_generation,
    ).patch()


#: Seconds after a report's staleness deadline before the clock looks (the report may be
#: written a moment late).
STALE_MARGIN = 1.0


def stale_in(view: monitor.View, now: datetime.datetime) -> float | None:
    """Seconds until the executor's report becomes stale (<= 0: it is), None without a
    report with a time (nothing then changes with time alone)."""
    if view.spec is None:
        return None
    report = database_report(view.status)
    if report is None or report.checked_at is None:
        return None
    return stale_after(view) - (now - report.checked_at).total_seconds()


def recheck_after(inputs: Inputs, status_interval: float) -> float | None:
    """When the status must be recomputed although no event came (the status clock): at the
    moment the executor's report goes stale, and every ``status_interval`` while a Secret is
    missing or unreadable (the operator may only get Secrets, not watch them). None: only
    events change this status."""
    view = inputs.view
    if view.spec is None or view.deleting:
        return None
    after: list[float] = []
    if inputs.secret_problems:
        after.append(status_interval)
    remaining = stale_in(view, inputs.now)
    if remaining is not None and remaining > 0:
        after.append(remaining + STALE_MARGIN)
    return min(after, default=None)


def changed(current: dict[str, Any], patch: dict[str, Any]) -> bool:
    """True when sending ``patch`` would change the stored status."""
    return any(current.get(key) != value for key, value in patch.items())


def _conditions(status: dict[str, Any]) -> dict[str, models.Condition]:
    return {c.type: c for c in models.DatabaseMonitorStatus.parse(status).conditions}


def new_problems(current: dict[str, Any], patch: dict[str, Any]) -> list[models.Condition]:
    """Conditions that just turned to an error reason (each deserves one Warning Event)."""
    before = {t: c.reason for t, c in _conditions(current).items()}
    after = list(_conditions(patch).values())
    return [c for c in after if c.type != READY and
            c.reason in ERROR_REASONS and before.get(c.type) != c.reason] + \
        [c for c in after if c.type == READY and
         c.reason in (INVALID_SPEC, APPLY_FAILED) and before.get(READY) != c.reason]


def became_ready(current: dict[str, Any], patch: dict[str, Any]) -> bool:
    """True when Ready just turned True."""
    before, now = _conditions(current).get(READY), _conditions(patch).get(READY)
    return now is not None and now.status == "True" and (before is None or
                                                         before.status != "True")
