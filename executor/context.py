"""What the engine's parts share: the configuration, the store, where state changes are
announced, how to reach the database, who this executor is (and its lease), its metrics, and
the one way a Remediation changes state (:meth:`Context.move`).

The parts (``executor/engine.py`` builds them): ``executor/admission.py`` turns detections into
Remediations, ``executor/runs.py`` runs the approved ones in the background and
``executor/housekeeping.py`` moves the rest along at every tick.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from startupmonkey import db, settings
from startupmonkey.executor import lease as executor_lease
from startupmonkey.executor import metrics, records
from startupmonkey.models.enums import RemediationState

log = logging.getLogger(__name__)
Connect = Callable[[], Awaitable[db.Conn]]
#: Clean failures (lock timeouts, cancels) of one Remediation retried at most this often.
MAX_ATTEMPTS = 5
#: Evidence key the executor adds to every record: when the analyser first saw the problem.
FIRST_SEEN = "detection_first_seen"


class EventSink(Protocol):
    """Where state changes are announced (NATS remediation events, Kubernetes Events)."""

    async def emit(self, record: records.Record) -> None:
        """Announce the record's current state."""


class Context:
    """The engine's configuration and collaborators, shared by its parts."""

    def __init__(self, config: settings.ComponentConfig, store: records.Store,
                 sink: EventSink, connect: Connect, identity: str,
                 engine_metrics: metrics.Metrics) -> None:
        self.config = config  # replaced on hot reload (Engine.reconfigure)
        self.store = store
        self.sink = sink
        self.connect = connect
        self.identity = identity
        self.metrics = engine_metrics
        #: This executor's lease (``executor/lease.py``), set by ``executor/main.py``; without
        #: one (a bare engine) nothing is judged by leases and claims need none.
        self.lease: executor_lease.Lease | None = None

    async def announce(self, record: records.Record) -> None:
        """Count the record's state and announce it; a sink that fails is logged only."""
        self.metrics.transitions.labels(record.state.value).inc()
        try:
            await self.sink.emit(record)
        except Exception as exc:
            log.warning("could not announce %s: %s", record.name, db.safe_error(exc))

    async def move(self, record: records.Record, expected: RemediationState,
                   state: RemediationState, message: str) -> bool:
        """Move ``record`` to ``state`` if the store still has it ``expected`` (compare and
        set), and announce it; False when another writer got there first."""
        record.move(state, message)
        try:
            await self.store.update(record, expected)
        except records.Conflict:
            return False
        await self.announce(record)
        return True


def unexpected(exc: Exception) -> str:
    """The message of a Remediation ended by an error nobody planned for (a bug, bad input)."""
    return f"unexpected error, nothing more was done: {type(exc).__name__}: " \
           f"{db.safe_error(exc)}"
