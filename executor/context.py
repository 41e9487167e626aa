"""What the engine's parts share: the configuration, the store, where state changes are
announced, how to reach the database, who this executor is (and its lease), its metrics, and
the one way a Remediation changes state (:meth:`Context.move`).

The parts (``executor/engine.py`` builds them): ``executor/admission.py`` turns detections into
Remediations, ``executor/runs.py`` runs the approved ones in the background and
``executor/housekeeping.py`` moves the rest along at every tick.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from startupmonkey import db, settings
from startupmonkey.executor import lease as executor_lease
from startupmonkey.executor import metrics, records
from startupmonkey.models.enums import RemediationState

log = logging.getLogger(__name__)
#: Opens a new autocommit connection to the executor's home database (its login database).
Connect = Callable[[], Awaitable[db.Conn]]
#: The ``application_name`` of the executor's connections.
APPLICATION_NAME = "startupmonkey-executor"
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
        self._connect_home = connect
        self.identity = identity
        self.metrics = engine_metrics
        #: This executor's lease (``executor/lease.py``), set by ``executor/main.py``; without
        #: one (a bare engine) nothing is judged by leases and claims need none.
        self.lease: executor_lease.Lease | None = None
        #: The home database as PostgreSQL names it (``current_database()``), learnt anew on
        #: each connection admission opens; None until then.
        self.home_database: str | None = None

    async def connect(self, database: str | None = None) -> db.Conn:
        """A new autocommit connection to ``database`` of the executor's server, with the
        executor's login (``dbname`` replaced); None: the home database (the login's own,
        through the connect function the engine was given). A record's connections are
        opened with its ``spec.database`` (None for the home database)."""
        if database is None:
            return await self._connect_home()
        executor = self.config.executor
        if executor is None:
            raise ValueError("no executor block: no login for another database")
        login = dataclasses.replace(executor.database.login(), dbname=database)
        return await db.connect(login, APPLICATION_NAME)

    def acts_in(self, database: str | None) -> bool:
        """Whether the configuration in force lets the executor act in ``database`` (None,
        the home database: always)."""
        if database is None:
            return True
        executor = self.config.executor
        return executor is not None and executor.covers(database)

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
