"""Background database workloads and held sessions for detector and remediation tests.

docs/design.md#detection-and-remediation asks every detector to be proven on a real
PostgreSQL with a real workload (and a
healthy twin that must produce nothing). The shapes those tests need are few and always the
same, so they live here as context managers that clean up after themselves even when the
session under test was cancelled or terminated by the executor:

- :func:`idle_in_transaction`: a session that opened a transaction and went quiet.
- :func:`hold_lock`: a transaction holding a table lock (the head of a lock chain).
- :func:`background_query`: one long statement in a thread (``pg_sleep``, or a statement
  blocked behind :func:`hold_lock`), cancelled on exit if still running.
- :func:`query_loop`: a statement repeated at a rate for a bounded time in a thread, so
  pg_stat_statements sees calls accumulate; it reconnects when its session is terminated.
- :func:`seed_orders`: the ``orders`` table whose :data:`ORDERS_QUERY` wants an index (the
  missing-index workload of the executor tests and the benchmarks).

Each yields a handle with the backend ``pid`` (what the executor would cancel or terminate)
and the ``application_name`` it set (what ``spec.protect`` would match). Threads never raise:
errors are recorded on the handle, because an exception escaping a thread is a warning and
warnings are errors in this test suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import sql

LOCK_MODES: frozenset[LiteralString] = frozenset(
    {
        "ACCESS SHARE",
        "ROW SHARE",
        "ROW EXCLUSIVE",
        "SHARE UPDATE EXCLUSIVE",
        "SHARE",
        "SHARE ROW EXCLUSIVE",
        "EXCLUSIVE",
        "ACCESS EXCLUSIVE",
    }
)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_MAX_KEPT_ERRORS = 20

Query = LiteralString | sql.SQL | sql.Composed


def _connect(
    conninfo: str, application_name: str, *, autocommit: bool, **kwargs: Any
) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        conninfo, application_name=application_name, autocommit=autocommit, **kwargs
    )


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    # The server may have terminated the session on purpose: that is the test passing.
    with contextlib.suppress(psycopg.Error):
        if not conn.closed:
            conn.rollback()
    conn.close()


@dataclasses.dataclass
class HeldSession:
    """A session kept open by a context manager here; ``connection`` is usable meanwhile."""

    pid: int
    application_name: str
    connection: psycopg.Connection[tuple[Any, ...]]

    def is_alive(self) -> bool:
        """False once the server terminated the session (checked with a round trip).

        The round trip is a statement in the held transaction, so it starts a new idle spell
        (``state_change``): never poll it while waiting for the session to be *detected*;
        wait on ``pg_stat_activity`` from another connection instead, and call this only to
        confirm the end."""
        try:
            self.connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


@contextlib.contextmanager
def idle_in_transaction(
    conninfo: str,
    *,
    statement: Query = "SELECT 1",
    application_name: str = "smtest-idle-in-transaction",
    **connect_kwargs: Any,
) -> Iterator[HeldSession]:
    """Open a transaction, run ``statement`` in it, then sit idle until the block exits.

    ``pg_stat_activity.state`` becomes ``idle in transaction`` as soon as this yields; give a
    write ``statement`` to also hold row locks and keep dead tuples from being vacuumed.
    """
    conn = _connect(conninfo, application_name, autocommit=False, **connect_kwargs)
    try:
        conn.execute(statement)
        yield HeldSession(conn.info.backend_pid, application_name, conn)
    finally:
        _close_quietly(conn)


@contextlib.contextmanager
def hold_lock(
    conninfo: str,
    table: str,
    *,
    mode: str = "ACCESS EXCLUSIVE",
    application_name: str = "smtest-lock-holder",
    **connect_kwargs: Any,
) -> Iterator[HeldSession]:
    """Hold ``LOCK TABLE table IN mode MODE`` in an open transaction until the block exits.

    ``table`` may be schema-qualified (``"public.orders"``).
    """
    known = [m for m in LOCK_MODES if m == mode.upper()]
    if not known:
        raise ValueError(f"unknown lock mode {mode!r}; one of {sorted(LOCK_MODES)}")
    statement = sql.SQL("LOCK TABLE {} IN {} MODE").format(
        sql.Identifier(*table.split(".")), sql.SQL(known[0])
    )
    with idle_in_transaction(
        conninfo, statement=statement, application_name=application_name, **connect_kwargs
    ) as session:
        yield session


class _Worker:
    """A thread with its own connection: start, wait until connected, stop, collect errors."""

    cancel_on_stop = False

    def __init__(self, conninfo: str, application_name: str, connect_kwargs: Any) -> None:
        self.conninfo = conninfo
        self.application_name = application_name
        self.connect_kwargs = connect_kwargs
        self.pid: int | None = None
        self.errors: list[BaseException] = []
        self.error_count = 0
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.thread = threading.Thread(target=self._main, name=application_name, daemon=True)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = _connect(
            self.conninfo, self.application_name, autocommit=True, **self.connect_kwargs
        )
        self.conn, self.pid = conn, conn.info.backend_pid
        self.connected.set()
        return conn

    def record(self, err: BaseException) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(err)

    def _main(self) -> None:
        try:
            self.run()
        except Exception as err:
            self.record(err)
        finally:
            self.connected.set()  # never leave the starter waiting
            if self.conn is not None:
                self.conn.close()

    def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.thread.start()
        if not self.connected.wait(_START_TIMEOUT) or self.pid is None:
            self.stop()
            raise RuntimeError(f"{self.application_name} could not connect: {self.errors}")

    def stop(self) -> None:
        self.stopping.set()
        conn = self.conn
        if self.cancel_on_stop and conn is not None and self.thread.is_alive():
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=5)
        self.thread.join(_STOP_TIMEOUT)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.application_name} did not stop within {_STOP_TIMEOUT}s")


class _OneQuery(_Worker):
    cancel_on_stop = True

    def __init__(
        self,
        conninfo: str,
        query: Query,
        params: Sequence[Any] | None,
        application_name: str,
        connect_kwargs: Any,
    ) -> None:
        super().__init__(conninfo, application_name, connect_kwargs)
        self.query, self.params = query, params
        self.done = threading.Event()
        self.rows: list[tuple[Any, ...]] | None = None

    def run(self) -> None:
        try:
            cursor = self.connect().execute(self.query, self.params)
            self.rows = cursor.fetchall() if cursor.description else []
        finally:
            self.done.set()


class BackgroundQuery:
    """Handle on :func:`background_query`: the backend, and how the statement ended."""

    def __init__(self, worker: _OneQuery) -> None:
        assert worker.pid is not None
        self._worker = worker
        self.pid: int = worker.pid
        self.application_name = worker.application_name

    @property
    def done(self) -> threading.Event:
        """Set when the statement finished, failed or was cancelled."""
        return self._worker.done

    @property
    def rows(self) -> list[tuple[Any, ...]] | None:
        """Result rows once done without error."""
        return self._worker.rows

    @property
    def error(self) -> BaseException | None:
        """How it failed once done (e.g. ``psycopg.errors.QueryCanceled``), else None."""
        return self._worker.errors[0] if self._worker.errors else None


@contextlib.contextmanager
def background_query(
    conninfo: str,
    query: Query,
    params: Sequence[Any] | None = None,
    *,
    application_name: str = "smtest-background-query",
    **connect_kwargs: Any,
) -> Iterator[BackgroundQuery]:
    """Run one statement in a thread; yield once connected (the statement may still run).

    On exit a statement still running is cancelled; the handle stays readable afterwards.
    """
    worker = _OneQuery(conninfo, query, params, application_name, connect_kwargs)
    worker.start()
    try:
        yield BackgroundQuery(worker)
    finally:
        worker.stop()


@dataclasses.dataclass
class QueryLoopStats:
    """Live counters of :func:`query_loop` (updated by the worker thread)."""

    application_name: str
    pid: int | None = None
    calls: int = 0
    reconnects: int = 0
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)


class _Loop(_Worker):
    def __init__(
        self,
        conninfo: str,
        query: Query,
        params: Sequence[Any] | None,
        rate: float | None,
        duration: float,
        stats: QueryLoopStats,
        connect_kwargs: Any,
    ) -> None:
        super().__init__(conninfo, stats.application_name, connect_kwargs)
        self.query, self.params, self.stats = query, params, stats
        self.errors = stats.errors
        self.period = 1.0 / rate if rate else 0.0
        self.deadline = time.monotonic() + duration

    def run(self) -> None:
        conn = self.connect()
        self.stats.pid = self.pid
        try:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                conn = self._one_call(conn)
                self.stopping.wait(self.period)
        finally:
            self.stats.finished.set()

    def _one_call(
        self, conn: psycopg.Connection[tuple[Any, ...]]
    ) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            cursor = conn.execute(self.query, self.params)
            if cursor.description:
                cursor.fetchall()
            self.stats.calls += 1
        except psycopg.Error as err:
            self.record(err)
            if conn.closed or conn.broken:
                # Terminated by the executor, say: an application would reconnect.
                conn.close()
                self.stopping.wait(0.05)
                conn = self.connect()
                self.stats.pid = self.pid
                self.stats.reconnects += 1
        return conn


@contextlib.contextmanager
def query_loop(
    conninfo: str,
    query: Query,
    params: Sequence[Any] | None = None,
    *,
    rate: float | None = 50.0,
    duration: float = 60.0,
    application_name: str = "smtest-query-loop",
    **connect_kwargs: Any,
) -> Iterator[QueryLoopStats]:
    """Run ``query`` about ``rate`` times a second (None: flat out) until the block exits.

    Stops by itself after ``duration`` seconds (a forgotten loop must not outlive its test).
    Errors are kept on the stats; a broken session is replaced by a new one.
    """
    stats = QueryLoopStats(application_name)
    worker = _Loop(conninfo, query, params, rate, duration, stats, connect_kwargs)
    worker.start()
    try:
        yield stats
    finally:
        worker.stop()


#: The hot point query of the ``orders`` workload, on a column no index serves.
ORDERS_QUERY: LiteralString = "SELECT id, total FROM orders WHERE customer_id = %s"


def seed_orders(conninfo: str, rows: int = 100_000, customers: int = 5_000) -> None:
    """Create and analyse ``orders`` (``id`` bigserial key, ``customer_id``, ``status``,
    ``total``): ``rows`` rows spread evenly over ``customers`` values of the unindexed
    ``customer_id``, ``status`` 0 or 1."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, "
                     "status int NOT NULL, total numeric NOT NULL)")
        conn.execute(sql.SQL("INSERT INTO orders (customer_id, status, total) SELECT g % {}, "
                             "g % 2, g FROM generate_series(1, {}) g").format(
                                 sql.Literal(customers), sql.Literal(rows)))
        conn.execute("ANALYZE orders")
