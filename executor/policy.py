"""Policy: what the executor may do with a detection, decided from the monitor's spec alone.

Pure functions, no I/O: the effective mode of the action's risk class decides the first state
of the Remediation (Recommended for advice, Observed in observe mode, PendingApproval in
approval mode, Approved in auto mode); :func:`no_longer_allowed` ends an approved action the
mode no longer allows; :func:`may_start` then gates the start of an approved action on the
hourly limit (counted from Remediation records, so it holds across replicas and
restarts) and, for ddl, on the maintenance window. Protected sessions are checked against the
database at the moment of acting (``executor/sessions.py``), not here.
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from collections.abc import Iterable

from startupmonkey.models import durations, monitor
from startupmonkey.models.enums import ActionId, Mode, RemediationState, RiskClass, risk_of

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FIRST_STATE = {
    Mode.OBSERVE: RemediationState.OBSERVED,
    Mode.APPROVAL: RemediationState.PENDING_APPROVAL,
    Mode.AUTO: RemediationState.APPROVED,
}


@dataclasses.dataclass(frozen=True)
class Gate:
    """Whether an approved action may start now, and why not."""

    ok: bool
    reason: str = ""


def first_state(spec: monitor.DatabaseMonitorSpec, action: ActionId) -> RemediationState:
    """The state a new Remediation for ``action`` starts in."""
    risk = risk_of(action)
    if risk is RiskClass.ADVICE:
        return RemediationState.RECOMMENDED
    return _FIRST_STATE[spec.mode_for(risk)]


#: How the message of a Remediation ended because the monitor's mode changed after it was
#: approved by policy begins; admission does not cool its key down for it (nothing was tried).
MODE_CHANGED = "not run: the mode changed"


def no_longer_allowed(spec: monitor.DatabaseMonitorSpec, risk: RiskClass,
                      approved_by_person: bool) -> tuple[RemediationState, str] | None:
    """Where a Remediation approved by policy (auto mode) goes instead of running when the
    monitor's mode no longer approves by policy (an auto-mode approval may wait hours for the
    hourly limit or the maintenance window): observe mode -> Observed; approval mode ->
    Rejected (its key is not cooled down: the next detection asks for approval). A person's
    approval is never undone by a mode change (reject it to stop it): replicas reload the
    config at different moments, and one still on the old mode must not discard it. None: it
    may run."""
    mode = spec.mode_for(risk)
    if approved_by_person or mode is Mode.AUTO:
        return None
    if mode is Mode.OBSERVE:
        return RemediationState.OBSERVED, (
            f"{MODE_CHANGED}: {risk.value} actions are in observe mode now, and this one was "
            "approved by policy in auto mode; nothing ran")
    return RemediationState.REJECTED, (
        f"{MODE_CHANGED}: {risk.value} actions need a person's approval now, and this one "
        "was approved by policy in auto mode; nothing ran, and the next detection asks "
        "for approval")


def approval_deadline(spec: monitor.DatabaseMonitorSpec,
                      created: datetime.datetime) -> datetime.datetime:
    """When a PendingApproval Remediation created at ``created`` expires."""
    return created + datetime.timedelta(seconds=durations.parse_duration(spec.approval.expiry))


def actions_in_last_hour(starts: Iterable[datetime.datetime], now: datetime.datetime) -> int:
    """How many of the recorded action start times fall in the rolling hour before ``now``."""
    since = now - datetime.timedelta(hours=1)
    return sum(1 for start in starts if since < start <= now)


def in_window(window: monitor.MaintenanceWindow, now: datetime.datetime) -> bool:
    """True when ``now`` falls inside the maintenance window (which may cross midnight)."""
    local = now.astimezone(zoneinfo.ZoneInfo(window.time_zone))
    hour, minute = (int(part) for part in window.start.split(":"))
    length = datetime.timedelta(seconds=durations.parse_duration(window.duration))
    for days_back in (0, 1):
        day = local.date() - datetime.timedelta(days=days_back)
        if _WEEKDAYS[day.weekday()] not in window.days:
            continue
        opens = datetime.datetime.combine(day, datetime.time(hour, minute), local.tzinfo)
        if opens <= local < opens + length:
            return True
    return False


#: Evidence that marks an ANALYZE restoring statistics a crash or a reset lost
#: (analyser/detectors/tables.py); as stored on a record, a string.
STATISTICS_LOST = "statistics_lost"


def restores_statistics(evidence: dict[str, str]) -> bool:
    """Whether a Remediation is an ANALYZE restoring statistics a crash or a reset lost."""
    return evidence.get(STATISTICS_LOST) == "True"


def budget(evidence: dict[str, str]) -> str:
    """Which hourly budget a Remediation's start counts in: ANALYZEs restoring lost statistics
    have one of their own (after a crash every table of a database may need one, and they must
    not hold back, for hours, the actions a crash makes urgent), everything else shares one."""
    return "restore" if restores_statistics(evidence) else "actions"


def may_start(spec: monitor.DatabaseMonitorSpec, action: ActionId,
              recent_starts: Iterable[datetime.datetime], now: datetime.datetime) -> Gate:
    """Whether an approved ``action`` may start at ``now`` (``recent_starts``: the starts of
    its budget, :func:`budget`)."""
    limit = spec.limits.max_actions_per_hour
    started = actions_in_last_hour(recent_starts, now)
    if started >= limit:
        return Gate(False, f"hourly limit reached: {started} actions started in the last hour "
                           f"(limits.maxActionsPerHour is {limit})")
    window = spec.maintenance_window
    if risk_of(action) is RiskClass.DDL and window is not None and not in_window(window, now):
        return Gate(False, f"outside the maintenance window ({window.start} {window.time_zone} "
                           f"for {window.duration} on {','.join(window.days)})")
    return Gate(True)


def timeouts_for(spec: monitor.DatabaseMonitorSpec, risk: RiskClass) -> monitor.StatementTimeouts:
    """lock_timeout and statement_timeout of a risk class (advice runs nothing: session's)."""
    source = RiskClass.SESSION if risk is RiskClass.ADVICE else risk
    timeouts: monitor.StatementTimeouts = getattr(spec.limits.timeouts, source.value)
    return timeouts
