"""The monitored database as the collector sees it: one connection, one round per interval.

:class:`DatabaseSource` owns the collector's single connection to the monitored database
(``application_name = startupmonkey-collector``, ``search_path = pg_catalog``), reconnects with
:class:`startupmonkey.db.Backoff` (exponential, jittered) and reports ``database`` readiness.
:meth:`DatabaseSource.collect` fills one snapshot: every section is one short transaction that
first sets its own ``statement_timeout`` (``set_config(..., true)``, i.e. ``SET LOCAL``) and
reads the server clock (the section's sample time), then runs its query from
:mod:`queries`. A section that fails is reported in ``collector.sections`` and is *missing*
from the snapshot; the others still go out. A connection lost in the middle of a round turns
the whole round into a "database unreachable" snapshot (``collector.connection_error``, no
section), because half a round is not worth the ambiguity.

pg_stat_statements is read every round while it holds few entries for this database, and
every few rounds when it holds thousands (:func:`statements_due`): its counters are
cumulative and the analyser takes rates over the samples that have the section, each over its
own sample time. A round that does not read it leaves SECTION_STATEMENTS out of
``collector.sections`` altogether (with ``statements_info`` and the statements), which the
protocol defines as "not collected this round" (not a failure: no metric, no health detail).

One collector may watch several databases of a server (:mod:`service`): one source each,
with a :class:`Role`. Only the *home* database's source reads the cluster-wide sections
(SESSIONS, REPLICATION_SLOTS, PREPARED_XACTS) and reports ``database`` readiness; the service
copies those sections into the other databases' snapshots of the round
(:func:`snapshot.copy_cluster_sections`), and each source's LOCK_WAITS then holds the lock
waits of its own database's backends.

Statement texts and the catalog are read here but not put into the snapshot: they go to the
:class:`state.TextStore` and :class:`state.CatalogStore`, and the stream attaches them once per
stream (see :mod:`stream`). Texts are fetched only for top statements whose text the collector
does not hold yet, and the full catalog only when its cheap server-side fingerprint changed
(or every :data:`CATALOG_REFRESH_SECONDS`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg import rows as pg_rows
from psycopg import sql

from startupmonkey import db, observability
from startupmonkey.collector import metrics as metrics_mod
from startupmonkey.collector import queries, snapshot, state
from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb

log = logging.getLogger(__name__)

APPLICATION_NAME = "startupmonkey-collector"
"""``application_name`` of the collector's connection (how a DBA recognises it)."""

MAX_STATEMENTS = 5000
"""At most this many pg_stat_statements entries (top by total time) per snapshot; the
default ``pg_stat_statements.max`` is 5000 for the whole cluster."""

CATALOG_REFRESH_SECONDS = 300.0
"""The full catalog is read at least this often even when its fingerprint did not change."""

SIZE_BATCH = 500
"""At most this many tables (with their indexes) get their sizes measured per round. Each
measured table costs a few file-system calls on the server (about 0.1 ms); this bounds that
part of a round to about 50 ms."""

SIZE_ROUNDS = 10
"""Sizes are measured in rotation so that every table is measured at least once every this
many rounds (while that needs no more than SIZE_BATCH per round): sizes change slowly, and
the detectors use them as evidence and as a minimum size, never as a rate."""

SIZE_MIN_BATCH = 100
"""Databases with at most this many tables are measured completely every round; larger ones
in rotation, ``max(SIZE_MIN_BATCH, ceil(tables / SIZE_ROUNDS))`` tables per round (at most
SIZE_BATCH), least recently measured first, the others carrying their last measurement."""

DATABASE_SIZE_SECONDS = 60.0
"""pg_database_size() walks the whole database directory: while sizes rotate (more than
SIZE_MIN_BATCH tables) it runs at most this often, and snapshots in between carry the last
value."""

STATEMENTS_EVERY_ROUND = 1000
"""pg_stat_statements is read every round while its last read returned at most this many
entries of the monitored database; above, every ``ceil(entries / STATEMENTS_EVERY_ROUND)``
rounds (at most :data:`MAX_STATEMENT_SKIP`). ``pg_stat_statements(false)`` costs the server
about 5 us per entry (25 ms at 5,000 entries)."""

MAX_STATEMENT_SKIP = 5
"""pg_stat_statements is read at least every this many rounds, however many entries it
holds (every 50 s at the default 10 s interval): the detectors' recent window is 300 s."""

Query = LiteralString | sql.Composed
Row = dict[str, Any]

_UNAVAILABLE_ERRORS = (pg_errors.InsufficientPrivilege, pg_errors.ObjectNotInPrerequisiteState,
                       pg_errors.UndefinedFunction, pg_errors.UndefinedTable,
                       pg_errors.FeatureNotSupported)


class ConnectionLost(Exception):
    """The connection broke during a round."""


class SizeRotation:
    """Which relations get sizes measured this round, and the last measurement of each.

    Small databases (up to :data:`SIZE_MIN_BATCH` tables) are measured completely every
    round. Larger ones are measured completely in the first round, then :meth:`batch_size`
    tables per round, least recently measured first, so that each is measured again within
    :data:`SIZE_ROUNDS` rounds (up to ``SIZE_BATCH * SIZE_ROUNDS`` tables; beyond, within
    ``ceil(tables / SIZE_BATCH)`` rounds); a table seen for the first time carries an
    estimate from ``pg_class.relpages`` until its turn comes (it is first in line).
    """

    def __init__(self, batch: int = SIZE_BATCH, rounds: int = SIZE_ROUNDS,
                 min_batch: int = SIZE_MIN_BATCH) -> None:
        self.batch = batch
        self.rounds = rounds
        self.min_batch = min(min_batch, batch)
        self.known: list[int] = []
        self.tables: dict[int, tuple[int, int]] = {}
        self.indexes: dict[int, int] = {}
        self._measured_at: dict[int, int] = {}
        self._round = 0
        self.database_size: int | None = None
        self._database_size_at = -DATABASE_SIZE_SECONDS

    def plan(self) -> dict[str, Any]:
        """Query parameters of this round: ``measure_all``, ``measure`` and ``measure_size``."""
        self._round += 1
        batch = self.batch_size(len(self.known))
        everything = not self.known or len(self.known) <= batch
        chosen: list[int] = []
        if not everything:
            chosen = sorted(self.known, key=lambda r: self._measured_at.get(r, -1))[:batch]
        due = time.monotonic() - self._database_size_at >= DATABASE_SIZE_SECONDS
        # An array literal as text: one parameter type whatever the oids, so one queryid.
        return {"measure_all": everything, "measure": "{" + ",".join(map(str, chosen)) + "}",
                "measure_size": everything or due or self.database_size is None}

    def batch_size(self, tables: int) -> int:
        """How many of ``tables`` to measure per round (all of them up to ``min_batch``)."""
        if tables <= self.min_batch:
            return max(tables, self.min_batch)
        return min(self.batch, max(self.min_batch, -(-tables // self.rounds)))

    def database(self, measured: int | None) -> int:
        """The database size to report: this round's, or the last one."""
        if measured is not None:
            self.database_size, self._database_size_at = int(measured), time.monotonic()
        return self.database_size or 0

    def table(self, row: Row) -> Row:
        """``row`` with table_bytes and indexes_bytes filled from a measurement."""
        relid = int(row["relid"])
        if row.get("table_bytes") is not None and row.get("indexes_bytes") is not None:
            self.tables[relid] = (int(row["table_bytes"]), int(row["indexes_bytes"]))
            self._measured_at[relid] = self._round
        table_bytes, indexes_bytes = self.tables.get(relid, (
            int(row.get("table_bytes_estimate") or 0),
            int(row.get("indexes_bytes_estimate") or 0)))
        return {**row, "table_bytes": table_bytes, "indexes_bytes": indexes_bytes}

    def index(self, row: Row) -> Row:
        """``row`` with size_bytes from a measurement (this round's or an earlier one)."""
        indexrelid = int(row["indexrelid"])
        if row.get("size_bytes") is not None:
            self.indexes[indexrelid] = int(row["size_bytes"])
        size = self.indexes.get(indexrelid, int(row.get("size_estimate") or 0))
        return {**row, "size_bytes": size}

    def seen(self, relids: list[int], indexrelids: list[int] | None) -> None:
        """The tables (and indexes) that exist now; forget the others."""
        self.known = relids
        alive = set(relids)
        for cache in (self.tables, self._measured_at):
            for relid in [r for r in cache if r not in alive]:
                del cache[relid]
        if indexrelids is not None:
            live_indexes = set(indexrelids)
            for indexrelid in [i for i in self.indexes if i not in live_indexes]:
                del self.indexes[indexrelid]


def statement_period(entries: int, every_round: int | None = None,
                     max_skip: int | None = None) -> int:
    """Rounds from one pg_stat_statements read to the next after a read of ``entries``: 1 up
    to ``every_round`` entries, then ``ceil(entries / every_round)``, at most ``max_skip``
    (defaults: :data:`STATEMENTS_EVERY_ROUND`, :data:`MAX_STATEMENT_SKIP`, read at call time)."""
    every = STATEMENTS_EVERY_ROUND if every_round is None else every_round
    most = MAX_STATEMENT_SKIP if max_skip is None else max_skip
    if entries <= every:
        return 1
    return max(1, min(most, -(-entries // max(every, 1))))


def statements_due(rounds_since_read: int | None, entries: int, every_round: int | None = None,
                   max_skip: int | None = None) -> bool:
    """Whether this round reads pg_stat_statements.

    ``rounds_since_read``: rounds since the last successful read, this one included (1 for
    the round right after it); None when a read is owed at once (first round, after a
    reconnect, after the previous read failed or revealed a reset). ``entries``: what that
    read returned. Pure: :class:`StatementSchedule` keeps the state.
    """
    if rounds_since_read is None:
        return True
    return rounds_since_read >= statement_period(entries, every_round, max_skip)


class StatementSchedule:
    """When the collector reads pg_stat_statements (:func:`statements_due`), and what the last
    read left for the rounds that skip it (its top queryids, the extension's schema)."""

    _NEVER: Any = object()

    def __init__(self) -> None:
        self._round = 0
        self._read_round: int | None = None
        self.entries = 0
        self._stats_reset: Any = self._NEVER
        self.top: tuple[int, ...] = ()
        self.schema: str | None = None

    def due(self) -> bool:
        """Called once per round that reaches the statements section."""
        self._round += 1
        since = None if self._read_round is None else self._round - self._read_round
        return statements_due(since, self.entries)

    def read(self, entries: int, stats_reset: Any, top: tuple[int, ...], schema: str) -> None:
        """A successful read: skip the next rounds by its size, unless it revealed a reset
        (``pg_stat_statements_info.stats_reset`` changed): then read again at once, so the new
        series gets its first rate one round later."""
        reset = self._stats_reset is not self._NEVER and stats_reset != self._stats_reset
        self._read_round = None if reset else self._round
        self.entries, self._stats_reset = entries, stats_reset
        self.top, self.schema = top, schema

    def owed(self) -> None:
        """Read at the next round (the read failed or was unavailable; a reconnect)."""
        self._read_round = None
        self.top, self.schema = (), None

    def forget(self) -> None:
        """After a reconnect, possibly to another server: read at once, no reset to compare."""
        self.owed()
        self._stats_reset = self._NEVER


@dataclasses.dataclass(frozen=True)
class RoundOptions:
    """Settings one round runs with (hot-reloadable)."""

    query_timeout_ms: int = 5000
    top_statements: int = 50


@dataclasses.dataclass(frozen=True)
class Role:
    """What a source reads besides its own database's sections."""

    home: bool = True
    """The home database (``database.dbname``): it alone reads the cluster-wide sections
    (SESSIONS, REPLICATION_SLOTS, PREPARED_XACTS, read once per round) and reports
    ``database`` readiness."""
    alone: bool = True
    """The only database watched: LOCK_WAITS holds every lock wait of the cluster. Otherwise
    those of this database's backends (where their relation names resolve), and the home's
    also those of backends connected to no database."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One statement of a section: metric name, SQL, parameters."""

    name: str
    query: Query
    params: Sequence[Any] | Mapping[str, Any] | None = None


@dataclasses.dataclass
class _Outcome:
    """Rows of each step of a section, and its sample time."""

    results: list[list[Row]]
    sampled_at: datetime.datetime
    duration: float


class DatabaseSource:
    """The one connection to the monitored database and the rounds run on it."""

    def __init__(self, login: db.Login, metrics: metrics_mod.Metrics,
                 health: observability.Health, texts: state.TextStore,
                 catalogs: state.CatalogStore, role: Role = Role()) -> None:
        self.login = login
        self.role = role
        self.metrics = metrics
        self.health = health
        self.texts = texts
        self.catalogs = catalogs
        self._conn: db.Conn | None = None
        self._backoff = db.Backoff()
        self._next_attempt = 0.0
        self._attempts = 0
        self._last_error = "not connected yet"
        self._logged_error: str | None = None
        self._identity: pb.DatabaseIdentity | None = None
        self.sizes = SizeRotation()
        self.statement_schedule = StatementSchedule()
        self._version = 0
        self.options = RoundOptions()

    @property
    def connected(self) -> bool:
        """True while a usable connection is open."""
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    async def set_login(self, login: db.Login) -> None:
        """A new login (hot reload): reconnect with it at the next round."""
        if login != self.login:
            self.login = login
            await self.close()
            self._next_attempt = 0.0

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # -- connection ---------------------------------------------------------------------------

    async def _connection(self) -> db.Conn | None:
        if self.connected:
            return self._conn
        await self.close()
        now = time.monotonic()
        if now < self._next_attempt:
            return None
        if self._attempts:
            self.metrics.reconnects.labels("database").inc()
        self._attempts += 1
        try:
            conn = await db.connect(self.login, APPLICATION_NAME)
            await conn.execute(queries.SESSION_SETUP)
        except (psycopg.Error, OSError) as exc:
            self._failed(f"cannot connect to {self.login.describe()}: {db.safe_error(exc)}")
            return None
        self._conn, self._version = conn, conn.info.server_version
        self._backoff.reset()
        self._logged_error = None
        self.catalogs.forget()  # possibly another server now: read the catalog afresh
        self.statement_schedule.forget()
        log.info("connected to the database", extra={
            "database": self.login.describe(), "server_version_num": self._version})
        return conn

    def _failed(self, message: str) -> None:
        self._last_error = message
        self._next_attempt = time.monotonic() + self._backoff.next_delay()
        if self.role.home:
            self.health.set("database", False, message)
        if message != self._logged_error:  # once per distinct error, not every round
            log.warning("database unavailable: %s", message)
            self._logged_error = message

    # -- one round ----------------------------------------------------------------------------

    async def collect(self, snap: pb.Snapshot, options: RoundOptions) -> tuple[int, ...]:
        """Fill ``snap`` with one round of sections; returns the top statements' queryids.

        Without a connection the snapshot says so (``collector.connection_error``), carries
        the last known database identity and the collector's own clock as ``collected_at``.
        """
        self.options = options
        conn = await self._connection()
        if conn is not None:
            body = pb.Snapshot()
            try:
                top = await _Round(self, conn, body).run()
            except ConnectionLost as exc:
                await self.close()
                self._failed(f"connection to {self.login.describe()} lost: {exc}")
            else:
                snap.MergeFrom(body)
                return top
        self._unreachable(snap)
        return ()

    def _unreachable(self, snap: pb.Snapshot) -> None:
        delay = max(0.0, self._next_attempt - time.monotonic())
        snap.collector.connection_error = (
            f"{self._last_error} (next attempt in {delay:.1f}s)" if delay else self._last_error)
        if self._identity is not None:
            snap.database.CopyFrom(self._identity)
        else:
            snap.database.dbname = self.login.dbname
        snap.collected_at.FromDatetime(datetime.datetime.now(datetime.UTC))
        if self.catalogs.latest is not None:
            snap.catalog_hash = self.catalogs.latest.catalog.hash

    async def run_steps(self, conn: db.Conn, steps: Sequence[Step],
                        isolation: LiteralString | None = None) -> _Outcome:
        """Run ``steps`` in one transaction under the round's statement_timeout.

        Raises psycopg errors as they come, except a broken connection: ConnectionLost.
        """
        started = time.monotonic()
        results: list[list[Row]] = []
        try:
            async with conn.transaction(), conn.cursor(row_factory=pg_rows.dict_row) as cur:
                if isolation is not None:
                    await cur.execute(isolation)
                await cur.execute(queries.SECTION_START, (str(self.options.query_timeout_ms),))
                head = await cur.fetchone()
                assert head is not None
                sampled_at: datetime.datetime = head["clock_timestamp"]
                for step in steps:
                    results.append(await self._step(cur, step))
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise ConnectionLost(db.safe_error(exc)) from None
            raise
        return _Outcome(results, sampled_at, time.monotonic() - started)

    async def _step(self, cur: psycopg.AsyncCursor[Row], step: Step) -> list[Row]:
        started = time.monotonic()
        try:
            await cur.execute(step.query, step.params)
            return await cur.fetchall()
        finally:
            self.metrics.query_seconds.labels(step.name).observe(time.monotonic() - started)

    @property
    def version(self) -> int:
        """server_version_num of the current connection."""
        return self._version

    def remember_identity(self, identity: pb.DatabaseIdentity) -> None:
        """The identity of the last successful round (sent along while unreachable)."""
        self._identity = identity

    def report_ready(self, detail: str) -> None:
        """``database`` readiness after a round that reached the database (the home one)."""
        if self.role.home:
            self.health.set("database", True, detail)

    async def database_names(self) -> list[str] | None:
        """The databases of the server one can connect to, oldest first
        (:data:`queries.DATABASES`), read on this source's connection; None when it cannot
        be read now (no connection, an error: logged)."""
        return await self._names(Step("databases", queries.DATABASES))

    async def template_names(self) -> list[str] | None:
        """The server's template databases (:data:`queries.TEMPLATES`), read on this
        source's connection; None when they cannot be read now (logged)."""
        return await self._names(Step("templates", queries.TEMPLATES))

    async def _names(self, step: Step) -> list[str] | None:
        conn = await self._connection()
        if conn is None:
            return None
        try:
            outcome = await self.run_steps(conn, [step])
        except (ConnectionLost, psycopg.Error) as exc:
            log.warning("cannot list the databases of the server: %s", db.safe_error(exc))
            return None
        return [str(row["datname"]) for row in outcome.results[0]]


def _state_of(exc: psycopg.Error, unavailable_ok: bool) -> int:
    if isinstance(exc, pg_errors.QueryCanceled):
        return pb.SECTION_STATE_TIMEOUT
    if unavailable_ok and isinstance(exc, _UNAVAILABLE_ERRORS):
        return pb.SECTION_STATE_UNAVAILABLE
    return pb.SECTION_STATE_ERROR


_STATE_LABELS: dict[int, str] = {pb.SECTION_STATE_TIMEOUT: "timeout",
                                 pb.SECTION_STATE_ERROR: "error",
                                 pb.SECTION_STATE_UNAVAILABLE: "unavailable"}


def _duration(seconds: float) -> Any:
    from google.protobuf import duration_pb2

    value = duration_pb2.Duration()
    value.FromTimedelta(datetime.timedelta(seconds=seconds))
    return value


class _Round:
    """One collection round on one connection, filling ``body`` section by section."""

    def __init__(self, source: DatabaseSource, conn: db.Conn,
                 body: pb.Snapshot) -> None:
        self.source = source
        self.conn = conn
        self.body = body
        self.version = source.version
        self.settings: dict[str, str] = {}
        self.statements_note = ""
        self.statements_read = False
        self.sizes_plan = source.sizes.plan()

    async def attempt(self, steps: Sequence[Step], *, unavailable_ok: bool = False,
                      isolation: LiteralString | None = None
                      ) -> _Outcome | tuple[int, str]:
        """Run one section's steps: their outcome, or (SectionState, message) on failure."""
        try:
            outcome = await self.source.run_steps(self.conn, steps, isolation)
        except psycopg.Error as exc:
            code = _state_of(exc, unavailable_ok)
            self.source.metrics.query_failures.labels(steps[-1].name, _STATE_LABELS[code]).inc()
            return code, db.safe_error(exc)
        if not self.body.HasField("collected_at"):
            self.body.collected_at.FromDatetime(outcome.sampled_at)
        return outcome

    async def section(self, section: int, steps: Sequence[Step], *, record_ok: bool = True,
                      isolation: LiteralString | None = None) -> _Outcome | None:
        """Run one section and record its status; None when it failed."""
        outcome = await self.attempt(steps, isolation=isolation)
        if isinstance(outcome, tuple):
            self.status(section, outcome[0], message=outcome[1])
            return None
        if record_ok:
            self.status(section, pb.SECTION_STATE_OK, sampled_at=outcome.sampled_at,
                        duration=outcome.duration, items=len(outcome.results[-1]))
        return outcome

    def status(self, section: int, code: int, *, sampled_at: datetime.datetime | None = None,
               duration: float | None = None, items: int = 0, message: str = "") -> None:
        """Add a SectionStatus."""
        entry = self.body.collector.sections.add(section=section, state=code, items=items,
                                                 message=message)
        if sampled_at is not None:
            entry.collected_at.FromDatetime(sampled_at)
        if duration is not None:
            entry.duration.CopyFrom(_duration(duration))

    async def run(self) -> tuple[int, ...]:
        """Every section in order; the top statements' queryids."""
        await self.database()
        await self.settings_section()
        await self.tables_and_indexes()
        await self.simple(pb.SECTION_INDEX_BUILDS, "index_builds", queries.INDEX_BUILDS,
                          snapshot.index_build, self.body.index_builds)
        top = await self.statements()
        role = self.source.role
        if role.home:
            await self.sessions()
        await self.lock_waits(role)
        if role.home:
            await self.simple(pb.SECTION_REPLICATION_SLOTS, "replication_slots",
                              queries.REPLICATION_SLOTS, snapshot.replication_slot,
                              self.body.replication_slots)
            await self.simple(pb.SECTION_PREPARED_XACTS, "prepared_xacts",
                              queries.PREPARED_XACTS, snapshot.prepared_xact,
                              self.body.prepared_xacts)
        await self.simple(pb.SECTION_VACUUM_PROGRESS, "vacuum_progress",
                          queries.vacuum_progress(self.version), snapshot.vacuum,
                          self.body.vacuum_progress)
        await self.catalog()
        detail = f"connected to {self.source.login.describe()}"
        if self.statements_note:
            detail += f"; pg_stat_statements unavailable: {self.statements_note}"
        self.source.report_ready(detail)
        return top

    async def simple(self, section: int, name: str, query: Query,
                     convert: Callable[[Row], Any], target: Any,
                     params: Any = None) -> list[Row] | None:
        """A section whose rows map one to one onto a repeated field; its rows."""
        outcome = await self.section(section, [Step(name, query, params)])
        if outcome is None:
            return None
        target.extend(convert(row) for row in outcome.results[0])
        return outcome.results[0]

    async def lock_waits(self, role: Role) -> None:
        """SECTION_LOCK_WAITS: the cluster's, or this database's backends' (:class:`Role`)."""
        params = None if role.alone else (role.home,)
        await self.simple(pb.SECTION_LOCK_WAITS, "lock_waits",
                          queries.lock_waits(self.version, of_database=not role.alone),
                          snapshot.lock_wait, self.body.lock_waits, params)

    async def tables_and_indexes(self) -> None:
        """SECTION_TABLES and SECTION_INDEXES, sizes measured in rotation (SizeRotation)."""
        sizes = self.source.sizes
        plan = self.sizes_plan
        tables = await self.simple(pb.SECTION_TABLES, "tables", queries.tables(self.version),
                                   lambda row: snapshot.table(sizes.table(row)),
                                   self.body.tables, plan)
        indexes = await self.simple(pb.SECTION_INDEXES, "indexes",
                                    queries.indexes(self.version),
                                    lambda row: snapshot.index(sizes.index(row)),
                                    self.body.indexes, plan)
        if tables is not None:
            sizes.seen([int(r["relid"]) for r in tables],
                       [int(r["indexrelid"]) for r in indexes] if indexes is not None else None)

    async def database(self) -> None:
        """SECTION_DATABASE: identity and pg_stat_database."""
        sizes = self.source.sizes
        params = {"measure_size": self.sizes_plan["measure_size"]}
        outcome = await self.section(pb.SECTION_DATABASE,
                                     [Step("database", queries.database(self.version), params)])
        if outcome is None or not outcome.results[0]:
            return
        row = outcome.results[0][0]
        row = {**row, "database_size_bytes": sizes.database(row["database_size_bytes"])}
        identity, stats, can_read = snapshot.database(row)
        self.body.database.CopyFrom(identity)
        self.body.database_stats.CopyFrom(stats)
        self.body.collector.can_read_all_stats = can_read
        self.source.remember_identity(identity)

    async def settings_section(self) -> None:
        """SECTION_SETTINGS."""
        step = Step("settings", queries.SETTINGS, (list(queries.SETTING_NAMES),))
        outcome = await self.section(pb.SECTION_SETTINGS, [step])
        if outcome is None:
            return
        for row in outcome.results[0]:
            self.body.settings.append(snapshot.setting(row))
            self.settings[row["name"]] = row["setting"]

    async def sessions(self) -> None:
        """SECTION_SESSIONS (every backend of the cluster)."""
        size = self.settings.get("track_activity_query_size")
        step = Step("sessions", queries.sessions(self.version),
                    (limits.MAX_SESSION_QUERY_BYTES,))
        outcome = await self.section(pb.SECTION_SESSIONS, [step])
        if outcome is not None:
            self.body.sessions.extend(
                snapshot.session(row, int(size) if size and size.isdigit() else None)
                for row in outcome.results[0])

    async def statements(self) -> tuple[int, ...]:
        """SECTION_STATEMENTS and StatementsInfo; then texts the collector lacks.

        On a round :class:`StatementSchedule` skips, none of it is read or listed: the
        round's top queryids are the last read's, and only texts the analyser asked for
        (``Ack.want_statement_texts``) are read.
        """
        schedule = self.source.statement_schedule
        if not schedule.due() and schedule.schema is not None:
            await self.texts(schedule.schema, ())
            return schedule.top
        top = await self._read_statements()
        if not self.statements_read:
            schedule.owed()
        return top

    async def _read_statements(self) -> tuple[int, ...]:
        found = await self.section(pb.SECTION_STATEMENTS,
                                   [Step("statements_extension", queries.STATEMENTS_EXTENSION)],
                                   record_ok=False)
        if found is None:
            return ()
        if not found.results[0]:
            dbname = self.source.login.dbname
            reason = (f"extension pg_stat_statements is not installed in database {dbname} "
                      "(an administrator runs CREATE EXTENSION pg_stat_statements there)")
            return self._statements_unavailable(reason)
        extension = found.results[0][0]
        schema, version = str(extension["schema"]), str(extension["extversion"])
        steps = [Step("statements", queries.statements(schema, version), (MAX_STATEMENTS,))]
        info_query = queries.statements_info(schema, version)
        if info_query is not None:
            steps.append(Step("statements_info", info_query))
        outcome = await self.attempt(steps, unavailable_ok=True)
        if isinstance(outcome, tuple):  # e.g. not in shared_preload_libraries, no privilege
            code, message = outcome
            if code == pb.SECTION_STATE_UNAVAILABLE:
                return self._statements_unavailable(message)
            self.status(pb.SECTION_STATEMENTS, code, message=message)
            return ()
        rows = outcome.results[0]
        self.status(pb.SECTION_STATEMENTS, pb.SECTION_STATE_OK, sampled_at=outcome.sampled_at,
                    duration=outcome.duration, items=len(rows))
        info = outcome.results[1][0] if len(outcome.results) > 1 and outcome.results[1] else None
        self.body.statements_info.CopyFrom(snapshot.statements_info(extension, info))
        self.body.statements.extend(snapshot.statement(row) for row in rows)
        top = tuple(int(r["queryid"]) for r in rows[:self.source.options.top_statements])
        self.statements_read = True
        self.source.statement_schedule.read(len(rows), info.get("stats_reset") if info else None,
                                            top, schema)
        await self.texts(schema, top)
        return top

    def _statements_unavailable(self, reason: str) -> tuple[int, ...]:
        self.statements_note = reason
        self.status(pb.SECTION_STATEMENTS, pb.SECTION_STATE_UNAVAILABLE, message=reason)
        self.body.statements_info.CopyFrom(snapshot.statements_info(None, None, reason))
        return ()

    async def texts(self, schema: str, top: Sequence[int]) -> None:
        """SECTION_STATEMENT_TEXTS: read texts of top/wanted queryids not held yet."""
        store = self.source.texts
        missing = store.missing(top, self.source.login.dbname)
        if not missing:
            return
        step = Step("statement_texts", queries.statement_texts(schema),
                    (limits.MAX_STATEMENT_TEXT_BYTES, missing))
        outcome = await self.section(pb.SECTION_STATEMENT_TEXTS, [step], record_ok=False)
        if outcome is None:
            return
        for row in outcome.results[0]:
            store.put(snapshot.statement_text(row))
        store.give_up(q for q in missing if q not in store)

    async def catalog(self) -> None:
        """SECTION_CATALOG: re-read only when the catalogs may have changed.

        Three steps, each only when the previous one says "maybe": the catalogs' row-change
        counters (about 1 ms), the fingerprint of the relevant rows, the full read. A full read
        also happens every CATALOG_REFRESH_SECONDS and after every (re)connect.
        """
        store = self.source.catalogs
        latest = store.latest
        if latest is not None:
            self.body.catalog_hash = latest.catalog.hash
        fresh = (latest is not None and store.read_at is not None
                 and time.monotonic() - store.read_at < CATALOG_REFRESH_SECONDS)
        gate = await self.section(
            pb.SECTION_CATALOG, [Step("catalog_activity", queries.CATALOG_ACTIVITY)],
            record_ok=False)
        if gate is None:
            return
        activity = str(gate.results[0][0]["activity"])
        if fresh and activity == store.activity:
            return
        probe = await self.section(
            pb.SECTION_CATALOG, [Step("catalog_fingerprint", queries.CATALOG_FINGERPRINT)],
            record_ok=False)
        if probe is None:
            return
        fingerprint = str(probe.results[0][0]["fingerprint"])
        if fresh and fingerprint == store.fingerprint:
            store.activity = activity  # e.g. temporary tables came and went
            return
        cut = limits.MAX_DEFINITION_BYTES
        steps = [Step("catalog_relations", queries.CATALOG_RELATIONS),
                 Step("catalog_columns", queries.CATALOG_COLUMNS),
                 Step("catalog_indexes", queries.catalog_indexes(self.version), (cut, cut, cut)),
                 Step("catalog_constraints", queries.CATALOG_CONSTRAINTS, (cut,))]
        outcome = await self.section(pb.SECTION_CATALOG, steps, record_ok=False,
                                     isolation="SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if outcome is None:
            return
        catalog = await asyncio.to_thread(snapshot.catalog, *outcome.results)
        store.put(state.StoredCatalog(catalog, outcome.sampled_at, outcome.duration))
        store.activity, store.fingerprint = activity, fingerprint
        store.read_at = time.monotonic()
        self.body.catalog_hash = catalog.hash
