"""``startupmonkey demo``: a throwaway PostgreSQL with real problems, fixed while you watch.

Starts a private PostgreSQL from the installed server binaries (pg_stat_statements and HypoPG),
seeds a small shop with several problems at once (a hot query on an unindexed column, a
session idle in a transaction, a table full of dead tuples, a table with stale statistics),
then runs the same local data plane as ``startupmonkey run`` with short thresholds and prints
what it found, what it did and the numbers before and after. Everything is removed at the end
(``--keep`` leaves the database running for a look, and prints how to connect).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from startupmonkey import runner, summary
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor

APP_ROLE = "shop_app"
DEADLINE = 240.0
MANIFEST = {
    "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
    "metadata": {"name": "demo", "namespace": "default"},
    "spec": {
        "interval": "2s", "mode": "auto",
        "thresholds": {
            "idle_in_transaction": {"maxDuration": "10s"},
            "dead_tuples": {"minDeadTuples": 1000, "autovacuumGrace": "4s"},
            "stale_statistics": {"minModifiedRows": 1000},
            "missing_index": {"minSeqScansPerSecond": 0.2, "minTableRows": 10000},
        },
        "verification": {"window": "20s", "minCalls": 20},
        "limits": {"maxActionsPerHour": 20},
    },
}
SEED = [
    "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, "
    "total numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO orders (customer_id, total) SELECT (random() * 20000)::int, "
    "(random() * 100)::numeric(10,2) FROM generate_series(1, 200000)",
    "CREATE TABLE events (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off)",
    "INSERT INTO events SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g",
    "CREATE TABLE products (id int PRIMARY KEY, price int) WITH (autovacuum_enabled = off)",
    "INSERT INTO products SELECT g, g % 100 FROM generate_series(1, 1000) g",
    # A backend hands its statistics to the server at most once a second; flush them now so
    # the ANALYZE below really comes after the inserts in pg_stat_user_tables (otherwise the
    # inserts would be counted as "modified since the last ANALYZE" too).
    "SELECT pg_catalog.pg_stat_force_next_flush()",
    "ANALYZE",
    "DELETE FROM events WHERE id % 2 = 0",
    "INSERT INTO products SELECT g, g % 100 FROM generate_series(1001, 60000) g",
]


def _binaries_or_instructions() -> postgres.Binaries | None:
    try:
        return postgres.find_binaries()
    except postgres.BinariesNotFound as exc:
        print(f"startupmonkey demo needs the PostgreSQL server binaries: {exc}\n"
              "On Debian/Ubuntu: sudo apt-get install postgresql-15 postgresql-15-hypopg\n"
              "(or run `make setup`, which installs them).", file=sys.stderr)
        return None


@contextlib.contextmanager
def hot_query(conninfo: str, stop: threading.Event) -> Iterator[None]:
    """The application's hot point query, about 20 per second, in a thread."""
    def loop() -> None:
        rng = random.Random(7)  # noqa: S311 - workload, not cryptography
        with psycopg.connect(conninfo, autocommit=True, application_name="shop-web") as conn:
            while not stop.is_set():
                conn.execute("SELECT id, total FROM orders WHERE customer_id = %s",
                             (rng.randint(1, 20000),)).fetchall()
                stop.wait(0.05)

    thread = threading.Thread(target=loop, name="hot-query", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _hot_totals(conninfo: str) -> tuple[float, float]:
    """Calls and total execution milliseconds of the hot query so far."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0) "
            "FROM pg_stat_statements "
            "WHERE query LIKE 'SELECT id, total FROM orders WHERE customer_id%'").fetchone()
    return (float(row[0]), float(row[1])) if row else (0.0, 0.0)


def _mean_ms(conninfo: str, seconds: float) -> float | None:
    """The hot query's mean time per call over the next ``seconds``."""
    calls, total = _hot_totals(conninfo)
    time.sleep(seconds)
    calls_after, total_after = _hot_totals(conninfo)
    done = calls_after - calls
    return (total_after - total) / done if done > 0 else None


def _report(state: dict[str, Any], before_ms: float | None, after_ms: float | None) -> str:
    lines = ["", "What StartupMonkey found and did:"]
    for _name, rem in sorted(state["remediations"].items()):
        spec, status = rem["spec"], rem["status"]
        target = spec.get("target", {})
        where = (f"{target.get('schema')}.{target.get('table')}" if target.get("table")
                 else f"pid {target.get('pid')}")
        lines.append(f"  {spec['detector']:20} {spec['action']:18} {where:20} "
                     f"{status.get('state', '?'):12} {status.get('message', '')[:90]}")
        said = summary.of_object(rem)
        if said.text:
            lines.append(f"      {said.text}")
        if said.benefit:
            lines.append(f"      benefit: {said.benefit}")
    if not state["remediations"]:
        lines.append("  nothing (yet): see the component logs above")
    if before_ms is not None:
        after = f"{after_ms:.2f} ms" if after_ms is not None else "n/a"
        lines.append(f"\nHot query mean time per call: {before_ms:.2f} ms before, {after} at "
                     "the end (each over 4 s)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey demo``."""
    binaries = _binaries_or_instructions()
    if binaries is None:
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="startupmonkey-demo-"))
    cluster = postgres.PostgresCluster(bindir=binaries.bindir)
    print("starting a throwaway PostgreSQL ...", flush=True)
    cluster.start()
    try:
        return _run(args, cluster, workdir)
    finally:
        if args.keep:
            print(f"kept: psql '{cluster.conninfo(dbname='shop')}'  (stop it with Ctrl-C); "
                  f"audit log and final state in {workdir}")
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --keep ends
                while True:
                    time.sleep(3600)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        cluster.close()


def _run(args: argparse.Namespace, cluster: postgres.PostgresCluster, workdir: Path) -> int:
    database = cluster.create_database("shop")
    database.install_extensions()
    cluster.create_role(APP_ROLE)
    with database.connect() as conn:
        for statement in SEED:
            conn.execute(statement.encode())
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_ROLE}".encode())
    manifest = json.loads(json.dumps(MANIFEST))
    manifest["spec"]["database"] = {"host": cluster.host, "port": cluster.port,
                                    "dbname": "shop", "credentialsSecret": {"name": "demo"}}
    monitor_ = monitor.DatabaseMonitor.model_validate(manifest)
    stop = threading.Event()
    app = database.conninfo_for(APP_ROLE)
    print("seeded: 200k orders queried by an unindexed column, 50k dead tuples in events, "
          "stale statistics on products, a session idle in a transaction", flush=True)
    with hot_query(app, stop), psycopg.connect(app, application_name="shop-report") as idle:
        idle.execute("SELECT count(*) FROM products")  # opens a transaction, then sits idle
        before_ms = _mean_ms(database.conninfo, 4)
        plane = runner.LocalPlane(monitor_, cluster.superuser, None, workdir / "audit.jsonl")
        view = runner.View(plane, live=False)
        started = datetime.datetime.now(datetime.UTC)
        try:
            plane.start()
            unhandled = asyncio.run(_watch_until(plane, view, DEADLINE))
        finally:
            plane.stop()
        after_ms = _mean_ms(database.conninfo, 4)
        state = runner.final_state(plane, view, started)
        with contextlib.suppress(psycopg.Error):  # the executor has ended it, as it should
            idle.rollback()
    print(_report(state, before_ms, after_ms))
    (workdir / "final-state.json").write_text(json.dumps(state, indent=2, default=str))
    if unhandled:
        print(f"\nnot handled within {DEADLINE:.0f} s: {', '.join(sorted(unhandled))} "
              "(the component logs above say why)", file=sys.stderr)
        return 1
    return 0


WANTED = frozenset({"idle_in_transaction", "dead_tuples", "stale_statistics", "missing_index"})
"""The seeded problems: the demo waits until each has a Remediation in a final state."""


async def _watch_until(plane: runner.LocalPlane, view: runner.View,
                       deadline: float) -> set[str]:
    """Watch until every seeded problem was handled (or the deadline); returns the ones that
    were not."""
    stop = asyncio.Event()
    watcher = asyncio.create_task(runner.watch(plane, view, stop))
    finish = time.monotonic() + deadline
    handled: set[str] = set()
    while time.monotonic() < finish and not watcher.done():
        handled = {e.detector.value for e in view.remediations.values()
                   if e.state.terminal}
        if handled >= WANTED:
            await asyncio.sleep(2)
            break
        await asyncio.sleep(1)
    stop.set()
    await watcher
    return set(WANTED - handled)
