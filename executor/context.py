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
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg

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
#: Seconds a database that refused the login for good (gone, no CONNECT, datallowconn false)
#: is remembered as refusing, unless a reachability check (``status.databases``) reaches it
#: first: meanwhile its records end and its detections are dropped without a new connection.
REFUSAL_MEMORY = 600.0
#: Where a new connection to another database landed, and whether that is a template
#: (``datistemplate``, whatever its name): one round trip before anything is run there.
_LANDED = (b"SELECT pg_catalog.current_database(), "
           b"(SELECT d.datistemplate FROM pg_catalog.pg_database AS d "
           b"WHERE d.datname = pg_catalog.current_database())")


class DatabaseRefused(Exception):
    """A database other than the home one cannot be acted in, for good or for a while: it
    does not exist, does not allow connections, the role may not connect, its name cannot be
    given to libpq, it is a template, or the connection landed in another database. Nothing
    was run there."""

    def __init__(self, database: str, reason: str) -> None:
        super().__init__(reason)
        self.database = database
        self.reason = reason


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
        #: Databases that refused the login for good: name -> (why, when, monotonic).
        self._refused: dict[str, tuple[str, float]] = {}

    async def connect(self, database: str | None = None, *, remembered: bool = True
                      ) -> db.Conn:
        """A new autocommit connection to ``database`` of the executor's server, with the
        executor's login (``dbname`` replaced); None: the home database (the login's own,
        through the connect function the engine was given). A record's connections are
        opened with its ``spec.database`` (None for the home database).

        Another database is refused (:class:`DatabaseRefused`, nothing connected) when its
        name is not one libpq can be given whole (a NUL, over 63 bytes), when it refused the
        login for good within :data:`REFUSAL_MEMORY` (unless ``remembered`` is False: the
        reachability check asks anew), when the server says it refuses the login for good
        (``executor.dbcheck``-style diagnosis on the home connection: gone, datallowconn
        false, no CONNECT privilege, a template) or when the new connection's
        ``current_database()`` is not exactly ``database`` or is a template (``datistemplate``:
        what is changed there is copied into every database created from it; asked in the
        same statement). A failure the catalog does not
        explain (a network cut) raises the connection error as before (a wait, retried)."""
        if database is None:
            return await self._connect_home()
        problem = settings.database_name_problem(database)
        if problem is not None:
            raise DatabaseRefused(database, f"refused database name: {problem}")
        if remembered:
            known = self.refusal(database)
            if known is not None:
                raise DatabaseRefused(database, known)
        executor = self.config.executor
        if executor is None:
            raise ValueError("no executor block: no login for another database")
        login = dataclasses.replace(executor.database.login(), dbname=database)
        try:
            conn = await db.connect(login, APPLICATION_NAME)
        except (psycopg.Error, OSError) as exc:
            reason = await self._diagnose(database)
            if reason is None:
                raise
            self.remember_refusal(database, f"{reason}: {db.safe_error(exc)}"[:1000])
            raise DatabaseRefused(database, reason) from exc
        try:
            cursor = await conn.execute(_LANDED)
            row = await cursor.fetchone()
        except BaseException:
            await conn.close()
            raise
        if row is None or row[0] != database:
            await conn.close()
            reason = (f"connected to database {_shown(row[0] if row else None)} when asking "
                      f"for {_shown(database)}; nothing is run there")
            self.remember_refusal(database, reason)
            raise DatabaseRefused(database, reason)
        if row[1]:
            await conn.close()
            reason = (f"database {_shown(database)} is a template: changes would be copied "
                      "into every database created from it; nothing is run there")
            self.remember_refusal(database, reason)
            raise DatabaseRefused(database, reason)
        return conn

    async def _diagnose(self, database: str) -> str | None:
        """Why ``database`` refuses the login for good (asked on a home connection), or None:
        nothing in the catalog explains it, or the home database cannot say either."""
        try:
            conn = await self._connect_home()
        except (psycopg.Error, OSError):
            return None
        try:
            cursor = await conn.execute(db.DATABASE_REFUSAL, (database,))
            return db.refusal_of(database, await cursor.fetchone())
        except psycopg.Error:
            return None
        finally:
            await conn.close()

    def refusal(self, database: str | None) -> str | None:
        """Why ``database`` refused the login for good, while remembered; None otherwise."""
        if database is None:
            return None
        known = self._refused.get(database)
        if known is None:
            return None
        if time.monotonic() - known[1] > REFUSAL_MEMORY:
            del self._refused[database]
            return None
        return known[0]

    def remember_refusal(self, database: str, reason: str) -> None:
        """Remember that ``database`` refused the login for good (at most 256 of them)."""
        if len(self._refused) >= 256 and database not in self._refused:
            self._refused.pop(next(iter(self._refused)))
        self._refused[database] = (reason, time.monotonic())

    def forget_refusal(self, database: str) -> None:
        """``database`` answered (a reachability check): act there again."""
        self._refused.pop(database, None)

    def forget_refusals(self) -> None:
        """Another server (a changed login): nothing learnt of the old one holds."""
        self._refused.clear()

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


def _shown(value: object, most: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def unexpected(exc: Exception) -> str:
    """The message of a Remediation ended by an error nobody planned for (a bug, bad input)."""
    return f"unexpected error, nothing more was done: {type(exc).__name__}: " \
           f"{db.safe_error(exc)}"
