"""Resident memory (and CPU) of each data-plane process, idle and under load.

The real local data plane (``startupmonkey run``'s :class:`startupmonkey.runner.LocalPlane`:
collector, analyser and executor as Python child processes, and nats-server) watches a
database on a private throwaway PostgreSQL at interval 1 s, once per case:

- ``idle``: a small quiet database (10 tables, no workload);
- ``load``: 1,000 tables (5,000 in the full run) with as many distinct statements seeded in
  pg_stat_statements, while two application sessions update rows and run those statements
  (about 100 statements a second), and every round carries the whole schema.

After a warm-up (the executor has checked the database, then 5 s), ``VmRSS`` and CPU time of
each process are sampled from /proc every 0.5 s for the case's duration: median and peak RSS,
CPU seconds and percent of one core.

    .venv/bin/python bench/memory.py --quick        # 20 s idle, 30 s at 1,000 tables
    .venv/bin/python bench/memory.py                # 60 s idle, 120 s at 5,000 tables

Writes ``bench/results/memory.json`` (``memory.quick.json`` with ``--quick``). Aim (issue 13):
each data-plane process under 80 MB resident.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common

from startupmonkey.localserv import postgres
from startupmonkey.models import monitor
from startupmonkey.operator import monitor as operated
from startupmonkey.operator import pods

AIM_MB = 80.0  # each process's peak (issue 13)
# Issue 19: the whole idle data plane together, and the busy analyser and collector at 5,000
# tables and 5,000 statements (the analyser's CPU at interval 1 s, of one core).
AIM_IDLE_TOGETHER_MB = 120.0
AIM_ANALYSER_BUSY_MB = 150.0
AIM_COLLECTOR_BUSY_MB = 80.0
AIM_ANALYSER_BUSY_CPU_PERCENT = 15.0
BUSY_TABLES = 5000
PROCESSES = ("collector", "analyser", "executor", "nats-server")


def _manifest(cluster: postgres.PostgresCluster, dbname: str) -> monitor.DatabaseMonitor:
    return monitor.DatabaseMonitor.model_validate({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "memory", "namespace": "bench"},
        "spec": {"database": {"host": cluster.host, "port": cluster.port, "dbname": dbname,
                              "credentialsSecret": {"name": "unused-standalone"}},
                 "interval": "1s", "mode": "auto"}})


def _workload(cluster: postgres.PostgresCluster, dbname: str, tables: int, statements: int,
              seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    with cluster.connect(dbname) as conn:
        while not stop.is_set():
            conn.execute(f"UPDATE t_{rng.randrange(tables)} SET amount = "
                         f"{rng.randint(1, 99)} WHERE id = {rng.randint(1, 10)}")
            conn.execute(common.statement_text(rng.randrange(statements), tables))
            stop.wait(0.02)


def case(cluster: postgres.PostgresCluster, name: str, tables: int, statements: int,
         workers: int, seconds: float) -> dict[str, Any]:
    dbname = f"memory_{name}"
    setup_s = common.seeded_database(cluster, dbname, tables, statements)
    stop = threading.Event()
    threads = [threading.Thread(target=_workload, name=f"bench-load-{n}", daemon=True,
                                args=(cluster, dbname, tables, statements, n, stop))
               for n in range(workers)]
    try:
        with common.running_plane(_manifest(cluster, dbname), cluster.superuser) as plane:
            for thread in threads:
                thread.start()
            warm = common.wait_warm(plane, 5.0)
            with common.Sampler(common.plane_pids(plane), period=0.5) as sampler:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    dead = plane.dead_children()
                    if dead:
                        raise RuntimeError(f"{dead} exited: " + "\n".join(
                            plane.log_tail(n) for n in dead))
                    time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(10)
        cluster.drop_database(dbname)
    return {"case": name, "tables": tables, "seeded_statements": statements,
            "workload_sessions": workers, "seconds": seconds,
            "setup_seconds": round(setup_s, 1), "warm_up_s": round(warm, 1),
            "processes": sampler.figures()}


def aims(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of each process over every case against 80 MB."""
    found = {}
    for name in PROCESSES:
        peaks = [r["processes"][name]["rss_peak_mb"] for r in results
                 if r["processes"].get(name, {}).get("rss_peak_mb") is not None]
        found[f"{name}_peak_rss_mb"] = common.gap(max(peaks) if peaks else None, AIM_MB)
    idle = next((r for r in results if r["case"] == "idle"), None)
    together = None
    if idle is not None and all(idle["processes"].get(n, {}).get("rss_mb") is not None
                                for n in PROCESSES):
        together = sum(idle["processes"][n]["rss_mb"] for n in PROCESSES)
    found["data_plane_idle_rss_mb_together"] = common.gap(together, AIM_IDLE_TOGETHER_MB)
    busy = next((r for r in results if r["case"] == "load" and r["tables"] >= BUSY_TABLES),
                None)
    figures = busy["processes"] if busy is not None else {}
    for key, name, field, aim in (
            ("analyser_peak_rss_mb_5000_tables", "analyser", "rss_peak_mb", AIM_ANALYSER_BUSY_MB),
            ("collector_peak_rss_mb_5000_tables", "collector", "rss_peak_mb",
             AIM_COLLECTOR_BUSY_MB),
            ("analyser_cpu_percent_5000_tables", "analyser", "cpu_percent",
             AIM_ANALYSER_BUSY_CPU_PERCENT)):
        found[key] = common.gap(figures.get(name, {}).get(field), aim)
    return found


#: The pods' memory limits (operator/pods.py) by the process each one holds.
LIMITED = {"collector": operated.Component.COLLECTOR, "analyser": operated.Component.ANALYSER,
           "executor": operated.Component.EXECUTOR, "nats-server": operated.Component.NATS}


def limit_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each data-plane pod's memory limit against 1.3 x its process's peak over every case."""
    checks = []
    for name, component in LIMITED.items():
        peaks = [r["processes"][name]["rss_peak_mb"] for r in results
                 if r["processes"].get(name, {}).get("rss_peak_mb") is not None]
        checks.append(common.limit_check(
            f"{component.value} pod", pods.RESOURCES[component]["limits"]["memory"],
            max(peaks) if peaks else None))
    return checks


def _print(results: list[dict[str, Any]]) -> None:
    print(f"{'case':>6} {'tables':>6} {'process':>12} {'rss MB':>7} {'peak MB':>8} "
          f"{'first->last MB':>15} {'cpu s':>6} {'cpu %':>6}")
    for r in results:
        for name, p in r["processes"].items():
            growth = f"{p['rss_first_mb']}->{p['rss_last_mb']}"
            print(f"{r['case']:>6} {r['tables']:>6} {name:>12} {p['rss_mb']:>7} "
                  f"{p['rss_peak_mb']:>8} {growth:>15} {p['cpu_seconds']:>6} "
                  f"{p['cpu_percent']:>6}")
    print("rss: median resident set size while sampled (first->last: growth meanwhile); "
          "cpu %: of one core; interval 1 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 s idle, 30 s under load at 1,000 tables")
    parser.add_argument("--tables", type=int, default=5000, help="tables under load")
    parser.add_argument("--seconds", type=float, default=120.0, help="sampling under load")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/memory[.quick].json")
    args = parser.parse_args(argv)
    args.output = args.output or common.result_path("memory", args.quick)
    tables, seconds, idle_seconds = (1000, 30.0, 20.0) if args.quick else (
        args.tables, args.seconds, 60.0)
    started = time.monotonic()
    settings: dict[str, postgres.SettingValue] = {"max_locks_per_transaction": 256,
                                                  "pg_stat_statements.max": 10_000}
    with postgres.PostgresCluster(settings=settings) as cluster:
        cluster.install_extensions("template1")
        with cluster.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        results = []
        print(f"idle: 10 tables for {idle_seconds:g}s...", file=sys.stderr, flush=True)
        results.append(case(cluster, "idle", 10, 10, 0, idle_seconds))
        print(f"load: {tables} tables, {tables} statements, 2 sessions for {seconds:g}s...",
              file=sys.stderr, flush=True)
        results.append(case(cluster, "load", tables, tables, 2, seconds))
    server = row[0] if row else "unknown"
    checks = limit_checks(results)
    common.publish(
        "memory", quick=args.quick, started=started, output=args.output, results=results,
        printer=_print, machine_info=common.machine(f"PostgreSQL {server}"), aims=aims(results),
        limits=checks)
    common.print_limit_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
