"""The executor's view of one Remediation, and the store that keeps them durable.

A :class:`Record` is a Remediation object (spec, status, labels, annotations) plus the store's
concurrency token. A :class:`Store` persists records: the Kubernetes store keeps them as
Remediation objects (``executor/kube.py``), the JSONL store as an append-only audit log for the
standalone runner (``executor/journal.py``). Both give the two guarantees the engine builds on:
``create`` fails for a name that exists (two replicas, one record), and ``update`` is a
compare-and-set on the state (two replicas, one runner).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from startupmonkey import kubetime, summary
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models import remediation
from startupmonkey.models.enums import OPEN_STATES, RemediationState

#: Set through the executor API (or ``kubectl annotate``) to reject a pending Remediation:
#: "<who>: <reason>". The executor applies it (PendingApproval -> Rejected) on its next tick, so
#: approvers never need write access to the status.
ANNOTATION_REJECT = remediation.LABEL_PREFIX + "reject-requested"


#: Now, timezone-aware UTC, at the second (as Kubernetes stores times): ``kubetime.utcnow``,
#: named here too for the executor modules that take their clock from the records.
utcnow = kubetime.utcnow


@dataclasses.dataclass
class Record:
    """One Remediation as the executor handles it."""

    name: str
    namespace: str
    spec: remediation.RemediationSpec
    status: remediation.RemediationStatus
    created: datetime.datetime
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    version: str | None = None  # the store's concurrency token (resourceVersion)

    @property
    def state(self) -> RemediationState:
        """The current state."""
        return self.status.state

    @property
    def open(self) -> bool:
        """Still has work ahead."""
        return self.state in OPEN_STATES

    @property
    def active(self) -> bool:
        """Something for the executor to do: work ahead, or a rollback requested of a change
        that was kept (what the housekeeping tick looks at)."""
        return self.open or (self.state is RemediationState.SUCCEEDED
                             and remediation.ANNOTATION_ROLLBACK in self.annotations)

    def labels(self) -> dict[str, str]:
        """The labels of docs/design.md#remediation: monitor, detector, action, state, and
        for a database other than the home one the database
        (:func:`~startupmonkey.models.remediation.database_label`)."""
        labels = {
            remediation.LABEL_MONITOR: self.spec.monitor,
            remediation.LABEL_DETECTOR: self.spec.detector.value,
            remediation.LABEL_ACTION: self.spec.action.value,
            remediation.LABEL_STATE: self.state.token,
        }
        if self.spec.database is not None:
            labels[remediation.LABEL_DATABASE] = remediation.database_label(self.spec.database)
        return labels

    def move(self, state: RemediationState, message: str,
             now: datetime.datetime | None = None) -> None:
        """Record a transition in the status and its history (bounded)."""
        when = now or utcnow()
        self.status.state = state
        self.status.message = message[:4096]
        self.status.history.append(remediation.StateChange(state=state, time=when,
                                                           message=message[:1024]))
        del self.status.history[:-64]
        self.summarise()

    def summarise(self) -> None:
        """Write ``status.summary`` and ``status.benefit`` from the numbers as they are now
        (``startupmonkey/summary.py``): every transition does, so both stores (Remediation
        objects, the JSONL audit log) carry them and ``kubectl get rem -o wide`` shows them."""
        described = summary.describe(self.spec.action, self.status)
        self.status.summary = described.text or None
        self.status.benefit = described.benefit or None

    def approval_time_used(self, now: datetime.datetime) -> float | None:
        """The share of its approval time a Remediation waiting for approval has used (from
        when it entered PendingApproval to ``spec.approvalExpiresAt``), None without a
        deadline; the executor's approval_time_used_ratio gauge and its alert read it."""
        expires = self.spec.approval_expires_at
        if expires is None:
            return None
        since = next((step.time for step in reversed(self.status.history)
                      if step.state is RemediationState.PENDING_APPROVAL), self.created)
        total = (expires - since).total_seconds()
        if total <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - since).total_seconds() / total))

    def started_at(self) -> datetime.datetime | None:
        """When the action started running (the first Running step), if it did."""
        for step in self.status.history:
            if step.state is RemediationState.RUNNING:
                return step.time
        return None

    def body(self) -> dict[str, Any]:
        """The Kubernetes object body."""
        return {
            "apiVersion": "startupmonkey.dev/v1alpha1",
            "kind": remediation.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "creationTimestamp": kubetime.format(self.created),
                         "labels": self.labels(), "annotations": dict(self.annotations)},
            "spec": self.spec.dump(),
            "status": self.status.dump(),
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Record:
        """Parse a Kubernetes object body (or a journal line)."""
        meta = body.get("metadata", {})
        created = meta.get("creationTimestamp")
        return cls(
            name=meta["name"], namespace=meta.get("namespace", "default"),
            spec=remediation.RemediationSpec.model_validate(body["spec"]),
            status=remediation.RemediationStatus.model_validate(body.get("status") or {}),
            created=kubetime.parse(created) if created else utcnow(),
            annotations=dict(meta.get("annotations") or {}),
            version=meta.get("resourceVersion"),
        )


class Conflict(Exception):
    """Someone else changed the record first."""


class Store(Protocol):
    """Durable Remediation records of one monitor."""

    #: Only the executor writes the request annotations (approved-by, reject, rollback), so
    #: they can be believed as written: true of the JSONL store, whose only writer is the
    #: executor's own API; not of Kubernetes, where anyone with ``patch`` can write them
    #: unless an admission policy or webhook guards them (``executor.approverVerified``).
    vouches_for_annotations: bool

    async def create(self, record: Record) -> bool:
        """Persist a new record; False when the name already exists."""

    async def get(self, name: str) -> Record | None:
        """The current record, or None."""

    async def list(self, *, key: str | None = None, active: bool = False) -> list[Record]:
        """The records of this monitor: every one, or only those of detection ``key``, or
        only the :attr:`Record.active` ones (stores index them, so intake and ticks do not
        grow with the history)."""

    async def update(self, record: Record, expected: RemediationState) -> None:
        """Write ``record``'s status if the stored state is still ``expected``; else Conflict."""

    async def report_database(self, status: dict[str, Any],
                              databases: Sequence[dict[str, Any]] | None = None) -> None:
        """Record ``status.database`` (the wire form of monitor.DatabaseStatus) and, when
        given, ``status.databases`` (wire forms of monitor.DatabaseReach)."""

    async def approve(self, name: str, approver: str) -> None:
        """Set ``spec.approved`` (false -> true) and who did it."""

    async def request_rollback(self, name: str, requester: str, reason: str) -> None:
        """Ask the executor to revert a kept change (an annotation the engine acts on)."""

    async def request_reject(self, name: str, requester: str, reason: str) -> None:
        """Ask the executor to reject a pending Remediation (an annotation the engine acts
        on)."""


def remediation_counts(items: list[Record]) -> monitor_models.RemediationCounts:
    """``status.remediations`` of the monitor, computed from its Remediations: what the
    Kubernetes store writes after every change, and what the standalone API's DescribeMonitor
    answers (one function, so both count alike)."""
    by_state = collections.Counter(r.state for r in items)
    counts = monitor_models.RemediationCounts(
        # Every state, zeros included: a merge patch never removes a stale key otherwise.
        by_state={state: by_state.get(state, 0) for state in RemediationState},
        active=sum(1 for r in items if r.state in OPEN_STATES),
        succeeded=by_state.get(RemediationState.SUCCEEDED, 0),
        pending_approval=by_state.get(RemediationState.PENDING_APPROVAL, 0),
        in_flight=sum(1 for r in items if r.state in (RemediationState.RUNNING,
                                                      RemediationState.VERIFYING)))
    latest = max(items, key=lambda r: _last_change(r), default=None)
    if latest is not None:
        target = latest.spec.target
        where = f"{target.schema_}.{target.table}" if target.table else (
            f"pid {target.pid}" if target.pid else latest.spec.detector.value)
        counts.last_action = f"{latest.spec.action.value} {where} ({latest.state.value})"
        counts.last_action_time = _last_change(latest)
        counts.last_action_id = latest.spec.action
    return counts


def _last_change(record: Record) -> datetime.datetime:
    return record.status.history[-1].time if record.status.history else record.created


def api_errors() -> tuple[type[BaseException], ...]:
    """The Kubernetes API's errors when this process talks to it (it loaded
    ``startupmonkey.kubeapi``, as the Kubernetes store does), else none: a standalone
    executor never imports the Kubernetes client (about 16 MB resident; issue 19)."""
    kubeapi = sys.modules.get("startupmonkey.kubeapi")
    return tuple(kubeapi.ERRORS) if kubeapi is not None else ()
