"""Soak: rotating problems at interval 1 s through the real data plane, with faults injected.

A private throwaway PostgreSQL and the data plane of ``startupmonkey run``
(:class:`startupmonkey.runner.LocalPlane`: collector, analyser and executor as child processes,
an embedded nats-server, auto mode), supervised here as ``run`` supervises them (a child that
exits is restarted with backoff). Problems are injected one after the other, each on a fresh
object so that every problem is one Remediation's worth of work:

- ``idle_in_transaction``: an application session opens a transaction and goes quiet (5 s
  threshold) -> ``terminate_session``; remediated when the session is gone;
- ``stale_statistics``: 5,000 rows inserted into a fresh 1,000-row table -> ``analyze``;
- ``dead_tuples``: half of a fresh 20,000-row table deleted -> ``vacuum``;
- ``missing_index``: a point query on an unindexed column of a fresh 30,000-row table, 20
  calls a second -> ``create_index`` (short verification window, so it ends).

Each problem's table is dropped once its remediation has settled (every Remediation of it in
a final state, :data:`SETTLE_S` after the problem ended; at the latest :data:`DROP_AFTER_S`),
and the set-up statements stay out of pg_stat_statements, so the catalog and the statement set
stay the same size all along and memory growth is not theirs (``--keep-tables`` leaves them
all behind, as the first one-hour run did: ~370 tables and ~3 statements a problem).

Every ``--fault-every`` seconds (120 by default, 45 with ``--quick``) a fault is injected, in
turn: the nats-server SIGKILLed, PostgreSQL restarted (``stop -m fast``, then ``-m immediate``
the next time) and the analyser SIGKILLed.

Reported: problems injected, remediated, **lost** (never remediated within the problem's
budget; an idle session that a PostgreSQL restart ended before anyone acted is counted apart,
"ended by a fault"; a dead-tuples or stale-statistics problem whose counters a crash reset
before anyone acted is counted apart too, "hidden by a crash": PostgreSQL no longer shows it, to
any tool or to autovacuum, until the table is analysed or written again), **duplicated**
(more than one Remediation of one problem that did its action, or more than one valid index),
and per process the RSS and open file descriptors
after warm-up (first and last reading of each process's last incarnation, a restarted one
from its own second minute; the collector and the executor are never
killed here, so theirs cover the whole run), its least-squares slope in MB per hour, and a
reading every :data:`TIMELINE_S` seconds; the number of relations in the database is read
along with them. Per problem and kind, where the time to its first Remediation went: the
snapshot that first showed it (``detected``) and the executor's record (``recorded``), both
in seconds from the injection; ``--keep-logs`` keeps the logs to look further. Not a test:
nothing is asserted; the aim (issue 23) is zero lost, zero duplicated and no growth after
warm-up, over one hour.

    .venv/bin/python bench/soak.py --quick          # ~3 minutes
    .venv/bin/python bench/soak.py --minutes 60     # the aim: one hour (default)

Writes ``bench/results/soak.json`` (``soak.quick.json`` with ``--quick``), or ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common
import psycopg
from psycopg import sql

from startupmonkey import runner
from startupmonkey.executor import context, journal, records
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor
from startupmonkey.models.enums import RemediationState
from tests.support import workloads

APP_ROLE = "soak_app"
DBNAME = "soak"
NAMESPACE, NAME = "bench", "soak"
PROBLEMS = ("idle_in_transaction", "stale_statistics", "dead_tuples", "missing_index")
FAULTS = ("nats_killed", "postgres_restarted_fast", "analyser_killed",
          "postgres_restarted_immediate")
#: A problem not remediated within this many seconds is lost (faults included: the longest
#: outage here is a PostgreSQL restart plus the children's reconnect backoff).
BUDGET_S = 120.0
POLL_S = 0.2
DONE = (RemediationState.SUCCEEDED, RemediationState.VERIFYING)
#: Table problems a crash can hide, and the pg_stat_user_tables counter that shows them.
HIDDEN_BY_A_CRASH = {"dead_tuples": "n_dead_tup", "stale_statistics": "n_mod_since_analyze"}
#: A problem's table is dropped once every Remediation of it is final and this many seconds
#: have passed since the problem ended (a late second detection, made from a snapshot taken
#: before the fix, is then rejected on the live table rather than on a missing one) ...
SETTLE_S = 15.0
#: ... or this long after the problem ended whatever its Remediations say.
DROP_AFTER_S = 300.0
#: An idle session gone this long with no Remediation saying it did it was ended by a fault.
GONE_S = 15.0
#: Seconds between two readings of the per-process timeline in the result.
TIMELINE_S = 60.0


def manifest(cluster: postgres.PostgresCluster) -> monitor.DatabaseMonitor:
    return monitor.DatabaseMonitor.model_validate({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "database": {"host": cluster.host, "port": cluster.port, "dbname": DBNAME,
                         "credentialsSecret": {"name": "unused-standalone"}},
            "interval": "1s", "mode": "auto",
            "thresholds": {
                "idle_in_transaction": {"maxDuration": "5s"},
                "dead_tuples": {"minDeadTuples": 1000},
                "stale_statistics": {"minModifiedRows": 1000, "minModifiedRatio": 1.0},
                # The point query's seq scan of 30,000 rows takes 1-3 ms depending on the
                # load, so at 20 calls/s it spends 0.02-0.06 s/s: astride the default 0.05.
                # The soak is about faults, not about that judgement: put it well below.
                "missing_index": {"minSeqScansPerSecond": 0.2, "minTableRows": 10000,
                                  "minStatementTimePerSecond": 0.005},
            },
            "verification": {"window": "5s", "minCalls": 10, "maxWait": "60s"},
            "limits": {"maxActionsPerHour": 10000},
        },
    })


# ---- the plane, supervised, with faults ------------------------------------------------------


class Harness:
    """Supervises the plane (as ``run`` does), injects the faults and samples /proc, in one
    thread; the main thread injects problems."""

    def __init__(self, plane: runner.LocalPlane, cluster: postgres.PostgresCluster,
                 fault_every: float, faults: tuple[str, ...] = FAULTS) -> None:
        self.plane, self.cluster, self.fault_every = plane, cluster, fault_every
        self.kinds = faults
        self.faults: list[dict[str, Any]] = []
        self.supervision: list[str] = []
        # name -> pid -> [(t, rss bytes, fds)]
        self.samples: dict[str, dict[int, list[tuple[float, int, int]]]] = {}
        self.relations: list[tuple[float, int]] = []  # (t, relations in the soak database)
        self.started = time.monotonic()
        self.pg_down = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-harness", daemon=True)

    def __enter__(self) -> Harness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        next_fault, next_sample, turn = time.monotonic() + self.fault_every, 0.0, 0
        while not self._stop.wait(0.25):
            self.supervision += self.plane.supervise()
            if self.plane.supervisor.gave_up is not None:
                self.supervision.append(f"gave up: {self.plane.supervisor.gave_up}")
                return
            now = time.monotonic()
            if now >= next_sample:
                self._sample(now)
                next_sample = now + 5.0
            if now >= next_fault:
                self._inject(self.kinds[turn % len(self.kinds)])
                turn += 1
                next_fault = time.monotonic() + self.fault_every

    def _sample(self, now: float) -> None:
        for name, pid in common.plane_pids(self.plane).items():
            rss = common.rss_bytes(pid)
            try:
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            if rss is not None:
                self.samples.setdefault(name, {}).setdefault(pid, []).append(
                    (now - self.started, rss, fds))
        if not self.relations or now - self.started - self.relations[-1][0] >= TIMELINE_S:
            with contextlib.suppress(psycopg.Error):  # PostgreSQL restarted: next time
                with self.cluster.connect(DBNAME) as conn:
                    ((count,),) = conn.execute(b"SELECT count(*) FROM pg_catalog.pg_class "
                                               b"WHERE relnamespace = 'public'::regnamespace"
                                               ).fetchall()
                self.relations.append((round(now - self.started), count))

    def _inject(self, fault: str) -> None:
        at = round(time.monotonic() - self.started, 1)
        print(f"  [{at:7.1f} s] fault: {fault}", file=sys.stderr, flush=True)
        began = time.monotonic()
        if fault == "nats_killed" and self.plane.nats is not None \
                and self.plane.nats.pid is not None:
            os.kill(self.plane.nats.pid, signal.SIGKILL)
        elif fault == "analyser_killed":
            self.plane.children["analyser"].kill()
        elif fault.startswith("postgres_restarted"):
            self.pg_down.set()
            try:
                self.cluster.stop(mode=fault.rsplit("_", 1)[1])
                self.cluster.start()
            finally:
                self.pg_down.clear()
        self.faults.append({"at_s": at, "fault": fault,
                            "took_s": round(time.monotonic() - began, 1)})

    def growth(self, warm_up: float) -> dict[str, Any]:
        """Per process: RSS and FDs of its last incarnation, first reading after warm-up and
        last reading, and how many incarnations (restarts + 1) it had."""
        out: dict[str, Any] = {}
        for name, by_pid in self.samples.items():
            readings = list(by_pid.values())[-1]
            # A restarted process warms up too: its own first minute is not counted.
            since = max(warm_up, readings[0][0] + (60.0 if len(by_pid) > 1 else 0.0))
            warm = [r for r in readings if r[0] >= since] or readings[-1:]
            (t0, rss0, fd0), (t1, rss1, fd1) = warm[0], warm[-1]
            out[name] = {"incarnations": len(by_pid), "from_s": round(t0), "to_s": round(t1),
                         "rss_first_mb": round(rss0 / 2**20, 1),
                         "rss_last_mb": round(rss1 / 2**20, 1),
                         "rss_peak_mb": round(max(r[1] for r in warm) / 2**20, 1),
                         "rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
                         "rss_slope_mb_per_h": _slope(warm),
                         "fds_first": fd0, "fds_last": fd1, "fds_growth": fd1 - fd0,
                         "timeline": _timeline(warm)}
        return out


def _slope(readings: list[tuple[float, int, int]]) -> float | None:
    """Least-squares slope of RSS over time, MB per hour (None with fewer than 3 readings)."""
    if len(readings) < 3:
        return None
    fit = statistics.linear_regression([r[0] for r in readings], [r[1] for r in readings])
    return round(fit.slope * 3600 / 2**20, 1)


def _timeline(readings: list[tuple[float, int, int]]) -> list[tuple[int, float, int]]:
    """One reading every :data:`TIMELINE_S` seconds (and the last): (s, RSS MB, FDs)."""
    out: list[tuple[int, float, int]] = []
    for t, rss, fds in readings:
        if not out or t - out[-1][0] >= TIMELINE_S or (t, rss, fds) == readings[-1]:
            out.append((round(t), round(rss / 2**20, 1), fds))
    return out


# ---- problems ----------------------------------------------------------------------------


class Problems:
    """Injects problem number ``n`` of a kind and says whether it was remediated."""

    def __init__(self, cluster: postgres.PostgresCluster, harness: Harness,
                 keep_tables: bool = False) -> None:
        self.cluster, self.harness, self.keep_tables = cluster, harness, keep_tables
        self.app = cluster.conninfo(DBNAME, APP_ROLE)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser session for set-up and drops. Its statements stay out of
        pg_stat_statements (unless ``keep_tables``): every problem's CREATE, INSERT, DELETE and
        DROP on a fresh table would be a new statement there, so the statement set, which the
        collector reads and the analyser keeps, would grow all run long as the catalog did."""
        conn = self.cluster.connect(DBNAME)
        if not self.keep_tables:
            conn.execute(b"SET pg_stat_statements.track = 'none'")
        return conn

    def admin(self, *statements: str) -> None:
        """Run statements, retrying while PostgreSQL is restarted under us."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self._connect() as conn:
                    for statement in statements:
                        conn.execute(statement.encode())
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def drop(self, table: str) -> bool:
        """Drop a problem's table; False when it could not be now (a lock held on it, say a
        running VACUUM or index build, or PostgreSQL restarting): try again later."""
        try:
            with self._connect() as conn:
                conn.execute(b"SET lock_timeout = '2s'")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            return True
        except psycopg.Error:
            return False

    def fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.cluster.connect(DBNAME) as conn:
            return conn.execute(query.encode(), params).fetchall()

    def inject(self, kind: str, n: int) -> tuple[str, Callable[[], bool], contextlib.ExitStack]:
        """Start problem ``n`` of ``kind``: (target, remediated-check, what to close)."""
        held = contextlib.ExitStack()
        table = f"{kind[:5]}_{n}"
        grant = f"GRANT ALL ON {table} TO {APP_ROLE}"
        if kind == "idle_in_transaction":
            session = held.enter_context(workloads.idle_in_transaction(
                self.app, application_name=f"soak-idle-{n}"))
            pid = session.pid

            def gone() -> bool:
                return not self.fetch("SELECT 1 FROM pg_catalog.pg_stat_activity "
                                      "WHERE pid = %s", (pid,))
            return f"pid-{pid}", gone, held
        if kind == "stale_statistics":
            self.admin(f"CREATE TABLE {table} (id int) WITH (autovacuum_enabled = off)",
                       f"INSERT INTO {table} SELECT generate_series(1, 1000)",
                       f"ANALYZE {table}",
                       f"INSERT INTO {table} SELECT generate_series(1001, 6000)")
        elif kind == "dead_tuples":
            self.admin(f"CREATE TABLE {table} (id int PRIMARY KEY, pad text) "
                       "WITH (autovacuum_enabled = off)",
                       f"INSERT INTO {table} SELECT g, repeat('x', 50) "
                       "FROM generate_series(1, 20000) g",
                       f"VACUUM ANALYZE {table}", f"DELETE FROM {table} WHERE id % 2 = 0")
        else:  # missing_index
            self.admin(f"CREATE TABLE {table} (id int PRIMARY KEY, customer_id int, "
                       "total int)",
                       f"INSERT INTO {table} SELECT g, g % 3000, g FROM "
                       "generate_series(1, 30000) g", f"ANALYZE {table}", grant)
            held.enter_context(self._point_queries(table))
            return table, lambda: self._index_valid(table), held
        return table, lambda: True, held  # table problems: the journal says when

    @contextlib.contextmanager
    def _point_queries(self, table: str) -> Iterator[None]:
        """20 point queries a second on the unindexed column, across PostgreSQL restarts."""
        stop = threading.Event()

        def loop() -> None:
            # query_loop replaces a broken session, but its thread ends when PostgreSQL is down
            # at that moment: start another whenever the calls stop growing.
            while not stop.is_set():
                with workloads.query_loop(
                        self.app, f"SELECT id, total FROM {table} "
                        "WHERE customer_id = %s", (42,), rate=20, duration=BUDGET_S,
                        application_name="soak-point-query") as stats:
                    seen = -1
                    while not stop.wait(3.0) and not stats.finished.is_set() \
                            and stats.calls != seen:
                        seen = stats.calls

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)

    def _index_valid(self, table: str) -> bool:
        return bool(self.fetch(
            "SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = %s::regclass "
            "AND NOT i.indisprimary AND i.indisvalid", (table,)))

    def valid_indexes(self, table: str) -> int:
        return len(self.fetch(
            "SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = %s::regclass "
            "AND NOT i.indisprimary AND i.indisvalid", (table,)))


def _target(record: records.Record) -> str:
    target = record.spec.target
    return target.table or f"pid-{target.pid}"


def read_journal(path: Path) -> list[records.Record]:
    """Every Remediation in the executor's journal (retried while a line is being written)."""
    for _ in range(20):
        try:
            store = journal.JournalStore(path, NAMESPACE, NAME)
            return asyncio.run(store.list())
        except (ValueError, FileNotFoundError):
            time.sleep(0.1)
    return []


def drop_settled(inject: Problems, audit_log: Path, pending: dict[str, float]) -> None:
    """Drop the tables of ``pending`` (table -> when its problem ended) whose Remediations
    have all settled, so that the catalog keeps its size; those dropped leave ``pending``."""
    now = time.monotonic()
    ready = [t for t, ended in pending.items() if now - ended >= SETTLE_S]
    if not ready:
        return
    open_targets = {_target(r) for r in read_journal(audit_log) if not r.state.terminal}
    for table in ready:
        if (table not in open_targets or now - pending[table] >= DROP_AFTER_S) \
                and inject.drop(table):
            del pending[table]


def did_its_action(record: records.Record) -> bool:
    """A Remediation whose action ran to the end (Succeeded, or Verifying / rolled back after
    a build)."""
    return record.state in DONE or record.state is RemediationState.ROLLED_BACK


# ---- the run -------------------------------------------------------------------------------


def soak(cluster: postgres.PostgresCluster, seconds: float, fault_every: float,
         warm_up: float, kinds: tuple[str, ...] = PROBLEMS, faults: tuple[str, ...] = FAULTS,
         keep_logs: Path | None = None, keep_tables: bool = False) -> dict[str, Any]:
    cluster.create_database(DBNAME)
    cluster.create_role(APP_ROLE)
    cluster.execute(DBNAME, sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(
        sql.Identifier(APP_ROLE)))
    cluster.execute(DBNAME, sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON "
                                    "TABLES TO {}").format(sql.Identifier(APP_ROLE)))
    problems: list[dict[str, Any]] = []
    with common.running_plane(manifest(cluster), cluster.superuser) as plane:
        common.wait_warm(plane, 3.0, timeout=120)
        with Harness(plane, cluster, fault_every, faults) as harness:
            inject = Problems(cluster, harness, keep_tables)
            end = time.monotonic() + seconds
            n = 0
            pending: dict[str, float] = {}  # tables to drop once settled -> when they ended
            while time.monotonic() < end and plane.supervisor.gave_up is None:
                kind = kinds[n % len(kinds)]
                n += 1
                problems.append(_one(plane, inject, harness, kind, n))
                if kind != "idle_in_transaction" and problems[-1]["injected"] \
                        and not keep_tables:
                    pending[problems[-1]["target"]] = time.monotonic()
                drop_settled(inject, plane.audit_log, pending)
            warm = warm_up
            growth = harness.growth(warm)
            injected, supervision = harness.faults, harness.supervision
            relations = harness.relations
        final = read_journal(plane.audit_log)
        if keep_logs is not None:  # the workdir goes with the plane: keep its logs to read
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*plane.workdir.glob("*.log"), plane.audit_log]:
                shutil.copy(log, keep_logs / log.name)
    by_target: dict[str, list[records.Record]] = {}
    for record in final:
        by_target.setdefault(_target(record), []).append(record)
    for problem in problems:
        mine = by_target.get(problem["target"], [])
        problem["remediations"] = [(r.state.value, r.status.attempts, r.status.message)
                                   for r in mine]
        acted = [r for r in mine if did_its_action(r)]
        problem["acted"] = len(acted)
        if mine and "injected_at" in problem:
            problem["stages_s"] = _stages(problem["injected_at"], mine)
        if problem["kind"] == "missing_index":
            problem["acted"] = max(problem["acted"], problem.get("valid_indexes", 0))
    return {"problems": problems, "faults": injected, "supervision": supervision,
            "processes": growth, "relations": relations, "gave_up": plane.supervisor.gave_up}


def _stages(injected_at: str, mine: list[records.Record]) -> dict[str, float]:
    """Where the time to the first Remediation of a problem went, in seconds from the
    injection: ``detected``, the snapshot in which the analyser first saw it (the detection's
    ``first_seen``, the database's clock); ``recorded``, the executor's record of it (its
    time is whole seconds, rounded down: it may read up to 1 s before ``detected``). A late
    ``detected`` is the collector or the threshold; ``recorded`` much later than ``detected``
    is the analyser behind the collector, NATS or the executor's intake."""
    start = datetime.datetime.fromisoformat(injected_at)
    first = min(mine, key=lambda r: r.created)
    out = {"recorded": round((first.created - start).total_seconds(), 1)}
    with contextlib.suppress(KeyError, ValueError):
        seen = datetime.datetime.fromisoformat(first.spec.evidence[context.FIRST_SEEN])
        out["detected"] = round((seen - start).total_seconds(), 1)
    return out


def _one(plane: runner.LocalPlane, inject: Problems, harness: Harness, kind: str,
         n: int) -> dict[str, Any]:
    started = time.monotonic()
    injected_at = datetime.datetime.now(datetime.UTC).isoformat()
    at = round(started - harness.started, 1)
    try:
        target, remediated, held = inject.inject(kind, n)
    except psycopg.Error as exc:
        return {"n": n, "kind": kind, "at_s": at, "target": f"{kind}_{n}", "injected": False,
                "error": str(exc)[:300]}
    outcome: dict[str, Any] = {"n": n, "kind": kind, "at_s": at, "target": target,
                               "injected": True, "remediated": False,
                               "injected_at": injected_at}
    gone_since: float | None = None  # an idle session gone without a Remediation saying so
    with held:
        while time.monotonic() - started < BUDGET_S:
            time.sleep(POLL_S)
            if harness.pg_down.is_set():
                continue
            try:
                done = [r for r in read_journal(plane.audit_log)
                        if _target(r) == target and r.state in DONE]
                if done and remediated():
                    outcome.update(remediated=True,
                                   seconds=round(time.monotonic() - started, 1))
                    break
                if kind == "idle_in_transaction" and not done and remediated():
                    # Ended by a fault (a restart ends every session): wait GONE_S for a
                    # Remediation that may have ended it, not the whole budget.
                    gone_since = gone_since or time.monotonic()
                    if time.monotonic() - gone_since >= GONE_S:
                        break
            except psycopg.Error:
                continue
        if kind == "missing_index":
            with contextlib.suppress(psycopg.Error):
                outcome["valid_indexes"] = inject.valid_indexes(target)
        if not outcome["remediated"] and kind == "idle_in_transaction":
            # A PostgreSQL restart ends every session: the problem went away with the fault,
            # nobody remediated it (and nobody had to).
            with contextlib.suppress(psycopg.Error):
                outcome["ended_by_fault"] = remediated() and not _acted_on(plane, target)
        if not outcome["remediated"] and kind in HIDDEN_BY_A_CRASH:
            # A crash (stop -m immediate) resets every statistics counter: the dead rows or
            # modified rows are still there, but pg_stat_user_tables no longer shows them, to
            # us or to autovacuum, until the table is analysed or written again.
            with contextlib.suppress(psycopg.Error):
                column = HIDDEN_BY_A_CRASH[kind]
                ((counted,),) = inject.fetch(
                    f"SELECT {column} FROM pg_catalog.pg_stat_user_tables WHERE relname = %s",
                    (target,))
                outcome["hidden_by_crash"] = counted < 1000 and not _acted_on(plane, target)
    how = (f"remediated in {outcome.get('seconds')} s" if outcome["remediated"] else
           "ended by a fault" if outcome.get("ended_by_fault") else
           "hidden by a crash (statistics reset)" if outcome.get("hidden_by_crash") else "LOST")
    print(f"  [{at:7.1f} s] {kind} #{n}: {how}", file=sys.stderr, flush=True)
    return outcome


def _acted_on(plane: runner.LocalPlane, target: str) -> bool:
    """Whether a Remediation of ``target`` did its action (one made from a snapshot taken
    before the fault and then rejected on what the executor read after it did not)."""
    return any(_target(r) == target and did_its_action(r)
               for r in read_journal(plane.audit_log))


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    ended = [p["target"] for p in result["problems"] if p.get("ended_by_fault")]
    hidden = [p["target"] for p in result["problems"] if p.get("hidden_by_crash")]
    problems = [p for p in result["problems"] if p["injected"] and not p.get("ended_by_fault")
                and not p.get("hidden_by_crash")]
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in PROBLEMS:
        mine = [p for p in problems if p["kind"] == kind]
        per_kind[kind] = {"injected": len(mine),
                          "remediated": sum(p["remediated"] for p in mine),
                          "lost": sum(not p["remediated"] for p in mine),
                          "duplicated": sum(p["acted"] > 1 for p in mine),
                          "median_s": common.summary(p["seconds"] for p in mine
                                                     if p["remediated"]).get("median"),
                          **{f"{stage}_s": _spread(mine, stage)
                             for stage in ("detected", "recorded")}}
    return {"injected": len(problems),
            "remediated": sum(p["remediated"] for p in problems),
            "lost": [p["target"] for p in problems if not p["remediated"]],
            "duplicated": [p["target"] for p in problems if p["acted"] > 1],
            "not_injected": [p for p in result["problems"] if not p["injected"]],
            "ended_by_fault": ended, "hidden_by_crash": hidden,
            "faults": len(result["faults"]), "per_kind": per_kind}


def _spread(problems: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    """Median and worst of one stage (:func:`_stages`) over problems."""
    found = common.summary(p["stages_s"][stage] for p in problems
                           if stage in p.get("stages_s", {}))
    return {"median": found.get("median"), "max": found.get("max")}


def _print(results: dict[str, Any]) -> None:
    s = results["summary"]
    print(f"\nproblems injected {s['injected']}, remediated {s['remediated']}, "
          f"lost {len(s['lost'])} {s['lost']}, duplicated {len(s['duplicated'])} "
          f"{s['duplicated']}, ended by a fault {len(s['ended_by_fault'])}, hidden by a "
          f"crash {len(s.get('hidden_by_crash', []))}, "
          f"faults {s['faults']}")
    for kind, row in s["per_kind"].items():
        print(f"  {kind:<22} {row}")
    for name, row in results["processes"].items():
        print(f"  {name:<12} {row}")
    counts = [c for _, c in results.get("relations", [])]
    if counts:
        print(f"  relations in the database: {counts[0]} at start, {min(counts)}-{max(counts)}")


def _choice(value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(v for v in value.split(",") if v)
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"choose from {', '.join(allowed)} (got {value!r})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="about 3 minutes")
    parser.add_argument("--fault-every", type=float, default=None,
                        help="seconds between faults (120; 45 with --quick)")
    parser.add_argument("--problems", default=",".join(PROBLEMS),
                        help=f"kinds injected in turn (default: all of {','.join(PROBLEMS)})")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"faults injected in turn (default: all of {','.join(FAULTS)})")
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="copy the components' logs into this folder at the end")
    parser.add_argument("--keep-tables", action="store_true",
                        help="leave every problem's table behind (the catalog grows) and "
                             "its set-up statements in pg_stat_statements")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/soak.json, "
                             "soak.quick.json with --quick)")
    args = parser.parse_args(argv)
    minutes = 3.0 if args.quick else args.minutes
    fault_every = args.fault_every or (45.0 if args.quick else 120.0)
    warm_up = min(120.0, minutes * 60 / 5)
    started = time.monotonic()
    binaries = postgres.find_binaries()
    # synchronous_commit on, unlike other throwaway clusters: an immediate stop must not lose
    # what the server acknowledged (a problem's set-up, a finished index build), as a real
    # server would not; fsync stays off (a killed postmaster leaves the OS its page cache).
    with postgres.PostgresCluster(bindir=binaries.bindir,
                                  settings={"synchronous_commit": True}) as cluster:
        cluster.install_extensions("template1")
        result = soak(cluster, minutes * 60, fault_every, warm_up,
                      _choice(args.problems, PROBLEMS), _choice(args.faults, FAULTS),
                      args.keep_logs, args.keep_tables)
    result["summary"] = summarise(result)
    common.publish("soak", quick=args.quick, started=started,
                   output=args.out or common.result_path("soak", args.quick),
                   results=result, printer=_print, minutes=minutes,
                   fault_every_s=fault_every, warm_up_s=warm_up,
                   keep_tables=args.keep_tables,
                   aims={"lost": common.gap(len(result["summary"]["lost"]), 0, 0),
                         "duplicated": common.gap(len(result["summary"]["duplicated"]), 0, 0)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
