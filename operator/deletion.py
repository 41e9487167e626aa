"""Deleting a monitor: hold the finalizer while its executor has work in flight, bounded.

docs/design.md#deleting-a-monitor: the operator's finalizer stays on a deleted DatabaseMonitor
until its executor reports nothing in flight (``status.remediations.inFlight``: Running or
Verifying, e.g. an index build that must finish or be cancelled and cleaned up), or until the
grace period (an operator setting, down to seconds) has passed since the deletion request.
Meanwhile the collector and analyser are scaled to zero, so no new detection arrives while the
executor finishes. Then kopf removes the finalizer and garbage collection removes every child;
Remediations are not owned and stay for the retention period.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from startupmonkey import kubetime
from startupmonkey.models import monitor as models

FINALIZER = "startupmonkey.dev/drain"


@dataclasses.dataclass(frozen=True)
class Decision:
    """Wait (and look again after ``delay`` seconds) or let the deletion proceed."""

    wait: bool
    delay: float
    timed_out: bool
    message: str


def in_flight(body: dict[str, Any]) -> int:
    """The executor's count of Running and Verifying Remediations (0 when never reported)."""
    counts = models.DatabaseMonitorStatus.parse(body.get("status")).remediations
    return counts.in_flight if counts is not None else 0


def deleted_at(body: dict[str, Any], now: datetime.datetime) -> datetime.datetime:
    """When the deletion was requested (now if unknown)."""
    stamp = (body.get("metadata") or {}).get("deletionTimestamp")
    if not isinstance(stamp, str):
        return now
    return kubetime.parse(stamp)


def decide(busy: int, since: datetime.datetime, now: datetime.datetime, grace: float,
           poll: float) -> Decision:
    """The drain rule, as a pure function."""
    elapsed = (now - since).total_seconds()
    if busy <= 0:
        return Decision(False, 0.0, False, "nothing in flight; removing the data plane")
    if elapsed >= grace:
        return Decision(False, 0.0, True,
                        f"{busy} remediation(s) still in flight after {elapsed:.0f}s (grace "
                        f"period {grace:.0f}s); removing the data plane anyway: an interrupted "
                        "index build leaves an INVALID index that the next executor of this "
                        "database drops")
    remaining = grace - elapsed
    return Decision(True, max(0.5, min(poll, remaining)), False,
                    f"waiting for {busy} in-flight remediation(s) to finish "
                    f"({remaining:.0f}s of the grace period left)")
