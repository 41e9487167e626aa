"""The executor's intake: duplicates absorbed per second, and detection to first SQL.

The real engine (:class:`startupmonkey.executor.engine.Engine`) runs in this process with the
standalone store (:class:`startupmonkey.executor.journal.JournalStore`, the JSONL audit log
of ``startupmonkey run``, fsync per write) against a private throwaway PostgreSQL; messages
are handed to ``Engine.handle`` as the NATS intake does, as encoded Detection v1 bytes.

1. ``same_id``: the analyser re-publishes an active detection with the same id every few
   intervals. The first copy is recorded and acted on; every later one is absorbed by the
   in-memory set of seen ids (parse + lookup). Copies per second.
2. ``new_id_open_key``: a new occurrence id for a key that already has an open Remediation
   (PendingApproval, approval mode), which is what another replica or a restarted executor
   meets: absorbed by a lookup in the store, whose cost grows with the records it holds.
   Detections per second with 1 and with more records in the store.
3. ``first_sql``: from ``handle()`` being called with a new detection to the moment the
   planned remediation SQL is sent to PostgreSQL (``ANALYZE`` of a table; ending an idle
   transaction with ``pg_terminate_backend``), timestamped by a cursor class on the executor's
   own connections; also to the record being created (``recorded``), claimed (``running``),
   and the outcome recorded (``done``). NATS transport is not included (it is in
   ``remediation_time.py``: ``detection_to_running_s``).

    .venv/bin/python bench/executor_intake.py --quick
    .venv/bin/python bench/executor_intake.py

Writes ``bench/results/executor_intake.json`` (``executor_intake.quick.json`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import prometheus_client
import psycopg

from startupmonkey import settings
from startupmonkey.executor import engine, journal, records
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import ActionId, RemediationState
from tests.support import executor_helpers as helpers
from tests.support import workloads

APP_ROLE = "bench_app"
NAMESPACE = "bench"
TABLE = "items"


@dataclasses.dataclass
class Stamps:
    """When statements were sent and states announced (``time.perf_counter()``)."""

    sql: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    states: list[tuple[float, str]] = dataclasses.field(default_factory=list)

    def clear(self) -> None:
        self.sql.clear()
        self.states.clear()


STAMPS = Stamps()


class TimedCursor(psycopg.AsyncCursor[Any]):
    """Records the moment each statement is sent, with its text."""

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> TimedCursor:
        text = query.decode() if isinstance(query, bytes) else (
            query if isinstance(query, str) else query.as_string(self.connection))
        STAMPS.sql.append((time.perf_counter(), text))
        await super().execute(query, params, **kwargs)
        return self


class Sink:
    """The engine's event sink: records state announcements instead of publishing them."""

    async def emit(self, record: records.Record) -> None:
        STAMPS.states.append((time.perf_counter(), record.state.value))


def _config(cluster: postgres.PostgresCluster, dbname: str,
            mode: str) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": cluster.host, "port": cluster.port, "dbname": dbname,
                     "credentialsSecret": {"name": "unused"}},
        "interval": "1s", "mode": mode, "limits": {"maxActionsPerHour": 10_000},
        # The executor re-checks sessions against the monitor's own thresholds (issue 17):
        # the helpers' (any session age, a few modified rows) so every sample acts and is timed.
        "thresholds": helpers.SESSION_THRESHOLDS})
    return settings.ComponentConfig(monitor=settings.MonitorRef(namespace=NAMESPACE,
                                                                name=helpers.MONITOR), spec=spec)


def _engine(cluster: postgres.PostgresCluster, dbname: str, mode: str,
            audit: Path) -> engine.Engine:
    conninfo = cluster.conninfo(dbname, application_name="bench-executor")

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True,
                                                     cursor_factory=TimedCursor)

    store = journal.JournalStore(audit, NAMESPACE, helpers.MONITOR)
    return engine.Engine(_config(cluster, dbname, mode), store, Sink(), connect, "bench",
                         prometheus_client.CollectorRegistry())


def _with_id(detection: messages.Detection, number: int) -> bytes:
    copy = detection.model_copy(update={"id": f"bench{number:012d}"})
    return copy.encode()


async def same_id(eng: engine.Engine, copies: int, repeats: int) -> dict[str, Any]:
    detection = helpers.table_detection(TABLE, namespace=NAMESPACE)
    data = detection.encode()
    await eng.handle(data)  # recorded (the action runs in the background)
    await eng.settle()  # and run once
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(copies):
            await eng.handle(data)
        rates.append(copies / (time.perf_counter() - started))
    return {"copies_per_repeat": copies, "message_bytes": len(data),
            "per_second": common.summary(rates, 0),
            "us_per_copy": round(1e6 / sorted(rates)[len(rates) // 2], 1)}


async def new_id_open_key(eng: engine.Engine, store_records: int,
                          detections: int) -> dict[str, Any]:
    """``store_records`` open Remediations (PendingApproval), then new ids for the first key."""
    base = helpers.table_detection(TABLE, namespace=NAMESPACE)
    for number in range(store_records):
        key = base.key.replace(f"public.{TABLE}", f"public.{TABLE}_{number}")
        target = base.target.model_copy(update={"table": TABLE if number == 0 else
                                                f"{TABLE}_{number}"})
        one = base.model_copy(update={"id": f"seed{number:012d}", "key": key,
                                      "target": target})
        await eng.handle(one.encode())
    first_key = base.key.replace(f"public.{TABLE}", f"public.{TABLE}_0")
    payloads = [base.model_copy(update={"id": f"new{n:013d}", "key": first_key}).encode()
                for n in range(detections)]
    started = time.perf_counter()
    for data in payloads:
        await eng.handle(data)
    elapsed = time.perf_counter() - started
    held = len(await eng.store.list())
    return {"store_records": held, "detections": detections,
            "per_second": round(detections / elapsed, 0),
            "ms_per_detection": round(elapsed * 1000 / detections, 2)}


def _after(start: float, stamps: list[tuple[float, str]], wanted: str) -> float | None:
    for at, text in stamps:
        if text == wanted:
            return round((at - start) * 1000, 2)
    return None


async def _one_first_sql(eng: engine.Engine, data: bytes) -> dict[str, Any]:
    STAMPS.clear()
    started = time.perf_counter()
    await eng.handle(data)  # returns once recorded; the action runs in the background
    await eng.settle()
    done = time.perf_counter()
    name = messages.parse_detection(data)
    record = next(r for r in await eng.store.list() if r.spec.detection_id == name.id)
    planned = record.spec.sql or ""
    first_sql = next((at for at, text in STAMPS.sql if text.strip() == planned.strip()), None)
    if record.state.value != "Succeeded":
        print(f"  {record.spec.action.value}: {record.state.value}: {record.status.message}",
              file=sys.stderr, flush=True)
    return {"state": record.state.value,
            "recorded_ms": round((STAMPS.states[0][0] - started) * 1000, 2)
            if STAMPS.states else None,
            "running_ms": _after(started, STAMPS.states, RemediationState.RUNNING.value),
            "first_sql_ms": round((first_sql - started) * 1000, 2) if first_sql else None,
            "done_ms": round((done - started) * 1000, 2),
            "statements_before_first_sql": sum(1 for at, _ in STAMPS.sql
                                               if first_sql is None or at < first_sql)}


async def first_sql(eng: engine.Engine, cluster: postgres.PostgresCluster, dbname: str,
                    samples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    analyze = []
    for number in range(samples):
        # A table of its own each time, never analysed: the executor's re-check finds rows
        # to analyse (a table analysed since the detection is rightly Rejected), and no key
        # is cooling down from the sample before.
        table = f"{TABLE}_stale_{number}"
        await asyncio.to_thread(helpers.stale_tables, cluster.conninfo(dbname), table)
        detection = helpers.table_detection(table, ActionId.ANALYZE, namespace=NAMESPACE)
        analyze.append(await _one_first_sql(eng, detection.encode()))
    out["analyze"] = _summarise(analyze)
    terminate = []
    app = cluster.conninfo(dbname, APP_ROLE)
    for _ in range(samples):
        with workloads.idle_in_transaction(app, application_name="bench-idle") as held:
            await asyncio.to_thread(_wait_idle, cluster, dbname, held.pid)
            detection = helpers.idle_detection(cluster.conninfo(dbname), held.pid,
                                               namespace=NAMESPACE)
            terminate.append(await _one_first_sql(eng, detection.encode()))
    out["terminate_session"] = _summarise(terminate)
    return out


def _wait_idle(cluster: postgres.PostgresCluster, dbname: str, pid: int) -> None:
    deadline = time.monotonic() + 10
    with cluster.connect(dbname) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                               (pid,)).fetchone()
            if row and row[0] == "idle in transaction":
                return
            time.sleep(0.02)
    raise TimeoutError(f"session {pid} did not go idle in transaction")


def _summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(samples),
                           "states": sorted({s["state"] for s in samples})}
    for figure in ("recorded_ms", "running_ms", "first_sql_ms", "done_ms",
                   "statements_before_first_sql"):
        out[figure] = common.summary([s[figure] for s in samples if s[figure] is not None], 2)
    return out


async def measure(cluster: postgres.PostgresCluster, dbname: str, workdir: Path,
                  quick: bool) -> dict[str, Any]:
    copies, repeats = (5_000, 3) if quick else (50_000, 5)
    sizes = (1, 100) if quick else (1, 100, 1000)
    samples = 5 if quick else 20
    results: dict[str, Any] = {}
    # The detections built by the helpers must name the executor's home database as
    # PostgreSQL calls it: an executor drops detections of databases it does not act in.
    helpers.name_home_database(helpers.current_database(cluster.conninfo(dbname)))
    print("same id...", file=sys.stderr, flush=True)
    results["same_id"] = await same_id(_engine(cluster, dbname, "auto", workdir / "a.jsonl"),
                                       copies, repeats)
    results["new_id_open_key"] = []
    for size in sizes:
        print(f"new ids, {size} records in the store...", file=sys.stderr, flush=True)
        eng = _engine(cluster, dbname, "approval", workdir / f"b{size}.jsonl")
        results["new_id_open_key"].append(await new_id_open_key(eng, size, 200 if quick
                                                                else 1000))
    print("detection to first SQL...", file=sys.stderr, flush=True)
    results["first_sql"] = await first_sql(
        _engine(cluster, dbname, "auto", workdir / "c.jsonl"), cluster, dbname, samples)
    return results


def _print(results: dict[str, Any]) -> None:
    same = results["same_id"]
    print(f"same id re-published: {same['per_second']['median']:.0f}/s absorbed "
          f"({same['us_per_copy']} us each, spread {same['per_second']['spread']:.0f}/s)")
    for row in results["new_id_open_key"]:
        print(f"new id, open key, {row['store_records']:>5} records in the store: "
              f"{row['per_second']:.0f}/s ({row['ms_per_detection']} ms each)")
    for action, row in results["first_sql"].items():
        print(f"{action:>18}: first SQL after {row['first_sql_ms'].get('median')} ms "
              f"(spread {row['first_sql_ms'].get('spread')}), recorded after "
              f"{row['recorded_ms'].get('median')} ms, done after {row['done_ms'].get('median')}"
              f" ms, {row['states']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer copies and samples")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/executor_intake[.quick].json")
    args = parser.parse_args(argv)
    args.output = args.output or common.result_path("executor_intake", args.quick)
    started = time.monotonic()
    with postgres.PostgresCluster() as cluster, \
            tempfile.TemporaryDirectory(prefix="smbench-") as workdir:
        cluster.install_extensions("template1")
        cluster.create_role(APP_ROLE)
        database = cluster.create_database("intake")
        with database.connect() as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v int)")
            conn.execute(f"INSERT INTO {TABLE} SELECT g, g FROM generate_series(1, 1000) g")
            row = conn.execute("SHOW server_version").fetchone()
        results = asyncio.run(measure(cluster, "intake", Path(workdir), args.quick))
    server = row[0] if row else "unknown"
    common.publish(
        "executor_intake", quick=args.quick, started=started, output=args.output,
        results=results, printer=_print, machine_info=common.machine(f"PostgreSQL {server}"),
        store="journal (JSONL, fsync per write)",
        generated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
