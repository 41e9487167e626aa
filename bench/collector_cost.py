"""What one collector round costs the monitored database, by tables and statements.

Starts a private throwaway PostgreSQL cluster (``startupmonkey.localserv``), creates one
database per size with that many tables (primary key, one secondary index, a TOASTable
column) and runs that many *distinct* statements once each (``common.statement_text``: table
``n % tables`` with ``n // tables + 1`` OR-ed predicates, so every one has its own
pg_stat_statements queryid), then runs the real collector rounds
(:class:`startupmonkey.collector.source.DatabaseSource`) as a dedicated role that has only
``pg_monitor``. pg_stat_statements has no application_name, so the collector's own cost is read
from it by that role's ``userid``: statements executed, database execution and planning time
per round. Also measured on the collector's side: wall time per round, and the snapshot's size
and chunk count after :func:`startupmonkey.snapshots.split` (the catalog attached, as on the
first snapshot of a stream).

The first round of each size is reported apart ("cold": it reads the full catalog and the
statement texts); the other rounds are the steady state (catalog fingerprint only). The
steady database time is the mean over the steady rounds; with thousands of statements
pg_stat_statements is read only every few rounds (``source.statements_due``: every 5th at
5,000), so ``--rounds`` a multiple of that period (20 is) gives the exact average, and
``statement_reads`` says how many steady rounds read it.

    .venv/bin/python bench/collector_cost.py --quick    # about a minute
    .venv/bin/python bench/collector_cost.py            # more rounds, more sizes
    .venv/bin/python bench/collector_cost.py --sizes 1000x5000 --rounds 20

Sizes are ``TABLESxSTATEMENTS``. Writes ``bench/results/collector_cost.json``
(``collector_cost.quick.json`` with ``--quick``) and prints a table. The aim (issue 13): under
20 ms of database time per round at 1,000 tables and 5,000 statements.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common
import prometheus_client
import psycopg

from startupmonkey import db, observability, snapshots
from startupmonkey.collector import metrics, source, state
from startupmonkey.localserv import postgres
from startupmonkey.v1 import snapshot_pb2 as pb

ROLE = "bench_collector"
RESULTS = Path(__file__).resolve().parent / "results" / "collector_cost.json"
QUICK_SIZES = ["10x100", "1000x100", "1000x5000", "5000x100"]
FULL_SIZES = ["10x100", "1000x100", "1000x5000", "5000x100", "5000x5000"]
AIM_DB_MS = 20.0  # database time per steady round at 1,000 tables and 5,000 statements


def parse_size(text: str) -> tuple[int, int]:
    """``"1000x5000"`` -> (1000 tables, 5000 statements); a bare number means 100 statements."""
    tables, _, statements = text.partition("x")
    return int(tables), int(statements or 100)


def _create_tables(cluster: postgres.PostgresCluster, dbname: str, count: int,
                   statements: int) -> float:
    started = time.monotonic()
    with cluster.connect(dbname) as conn:
        common.create_tables(conn, count)
        common.seed_statements(conn, statements, count)
    return time.monotonic() - started


def _own_cost(cluster: postgres.PostgresCluster, dbname: str) -> dict[str, float]:
    with cluster.connect(dbname) as conn:
        row = conn.execute(
            "SELECT COALESCE(sum(calls), 0), COALESCE(sum(total_exec_time), 0), "
            "COALESCE(sum(total_plan_time), 0) FROM public.pg_stat_statements "
            "WHERE userid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s)",
            (ROLE,)).fetchone()
    assert row is not None
    return {"calls": float(row[0]), "exec_ms": float(row[1]), "plan_ms": float(row[2])}


def _breakdown(cluster: postgres.PostgresCluster, dbname: str) -> list[dict[str, Any]]:
    """The collector's statements by total execution time (what a round spends where)."""
    with cluster.connect(dbname) as conn:
        rows = conn.execute(
            "SELECT pg_catalog.left(pg_catalog.regexp_replace(query, '\\s+', ' ', 'g'), 70), "
            "calls, round(total_exec_time::numeric, 1) FROM public.pg_stat_statements "
            "WHERE userid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s) "
            "ORDER BY total_exec_time DESC LIMIT 8", (ROLE,)).fetchall()
    return [{"query": r[0], "calls": int(r[1]), "exec_ms": float(r[2])} for r in rows]


def _reset_own(cluster: postgres.PostgresCluster, dbname: str) -> None:
    with cluster.connect(dbname) as conn:
        conn.execute("SELECT public.pg_stat_statements_reset("
                     "(SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s))", (ROLE,))


def _sizes(snap: pb.Snapshot, catalog: state.StoredCatalog | None) -> dict[str, Any]:
    full = pb.Snapshot()
    full.CopyFrom(snap)
    if catalog is not None:
        full.catalog.CopyFrom(catalog.catalog)
    started = time.monotonic()
    chunks = snapshots.split(full)
    split_ms = (time.monotonic() - started) * 1000
    return {"snapshot_bytes": full.ByteSize(), "chunks": len(chunks),
            "largest_chunk_bytes": max(c.ByteSize() for c in chunks),
            "split_ms": round(split_ms, 1)}


def _query_seconds(registry: prometheus_client.CollectorRegistry) -> dict[str, float]:
    sums: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "startupmonkey_collector_query_duration_seconds_sum":
                sums[sample.labels["query"]] = sample.value
    return sums


async def _rounds(cluster: postgres.PostgresCluster, login: db.Login,
                  rounds: int) -> dict[str, Any]:
    """One cold round, then ``rounds`` steady ones, on one collector connection."""
    registry = prometheus_client.CollectorRegistry()
    health = observability.Health(registry)
    catalogs = state.CatalogStore()
    src = source.DatabaseSource(login, metrics.Metrics(registry), health, state.TextStore(),
                                catalogs)
    walls: list[float] = []
    statement_reads = 0  # steady rounds that read pg_stat_statements (source.statements_due)
    costs: list[dict[str, float]] = []
    sizes: dict[str, Any] = {}
    try:
        for sequence in range(1, rounds + 2):
            snap = pb.Snapshot(sequence=sequence, collector_id="bench", chunk_count=1)
            started = time.monotonic()
            await src.collect(snap, source.RoundOptions(query_timeout_ms=30_000))
            walls.append(time.monotonic() - started)
            failed = [s for s in snap.collector.sections if s.state != pb.SECTION_STATE_OK]
            if snap.collector.connection_error or failed:
                raise RuntimeError(f"round failed: {snap.collector.connection_error or failed}")
            if sequence > 1 and any(s.section == pb.SECTION_STATEMENTS
                                    for s in snap.collector.sections):
                statement_reads += 1
            if sequence == 1:
                first_queries = _query_seconds(registry)
                costs.append(_own_cost(cluster, login.dbname))
                sizes = _sizes(snap, catalogs.latest)
                sizes.update(tables_in_snapshot=len(snap.tables), indexes=len(snap.indexes),
                             statements=len(snap.statements),
                             catalog_items=_catalog_items(catalogs.latest))
        costs.append(_own_cost(cluster, login.dbname))
        breakdown = _breakdown(cluster, login.dbname)
        last_queries = _query_seconds(registry)
    finally:
        await src.close()
    cold, total = costs
    steady = {k: (total[k] - cold[k]) / rounds for k in total}
    return {
        "cold_round": {"wall_ms": round(walls[0] * 1000, 1),
                       "db_exec_ms": round(cold["exec_ms"], 1),
                       "db_plan_ms": round(cold["plan_ms"], 1),
                       "statements": int(cold["calls"])},
        "steady_round": {"wall_ms_median": round(statistics.median(walls[1:]) * 1000, 1),
                         "wall_ms_max": round(max(walls[1:]) * 1000, 1),
                         "db_exec_ms": round(steady["exec_ms"], 1),
                         "db_plan_ms": round(steady["plan_ms"], 1),
                         "statements": round(steady["calls"], 1),
                         "rounds": rounds, "statement_reads": statement_reads},
        "steady_query_ms": {
            name: round((seconds - first_queries.get(name, 0.0)) * 1000 / rounds, 1)
            for name, seconds in sorted(last_queries.items(), key=lambda kv: -kv[1])},
        "top_statements_all_rounds": breakdown,
        **sizes,
    }


def _catalog_items(stored: state.StoredCatalog | None) -> int:
    if stored is None:
        return 0
    catalog = stored.catalog
    return (len(catalog.relations) + len(catalog.columns) + len(catalog.indexes)
            + len(catalog.constraints))


def _measure(cluster: postgres.PostgresCluster, tables: int, statements: int,
             rounds: int) -> dict[str, Any]:
    dbname = f"bench_{tables}_{statements}"
    cluster.create_database(dbname)
    setup_s = _create_tables(cluster, dbname, tables, statements)
    login = db.Login(cluster.host, cluster.port, dbname, ROLE, None, "disable")
    _reset_own(cluster, dbname)
    try:
        measured = asyncio.run(_rounds(cluster, login, rounds))
    finally:
        cluster.drop_database(dbname)
    return {"tables": tables, "seeded_statements": statements,
            "setup_seconds": round(setup_s, 1), **measured}


def _print(results: list[dict[str, Any]]) -> None:
    head = (f"{'tables':>7} {'seeded':>6} {'cold wall':>10} {'cold db':>9} {'wall':>8} "
            f"{'db exec':>8} {'db plan':>8} {'stmts':>6} {'bytes':>10} {'chunks':>6}")
    print(head)
    for r in results:
        s, c = r["steady_round"], r["cold_round"]
        print(f"{r['tables']:>7} {r['seeded_statements']:>6} {c['wall_ms']:>8.1f}ms "
              f"{c['db_exec_ms']:>7.1f}ms "
              f"{s['wall_ms_median']:>6.1f}ms {s['db_exec_ms']:>6.1f}ms {s['db_plan_ms']:>6.1f}ms "
              f"{s['statements']:>6.1f} {r['snapshot_bytes']:>10} {r['chunks']:>6}")
    print("cold = first round (full catalog + statement texts); other columns: steady round "
          "(median wall, database time per round from pg_stat_statements by the collector's "
          "userid, stmts: statements per round incl. BEGIN/set_config/COMMIT); seeded: distinct "
          "statements run before measuring")


def aims(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's aim: database time per steady round at 1,000 tables, 5,000 statements."""
    at = [r for r in results if (r["tables"], r["seeded_statements"]) == (1000, 5000)]
    measured = at[0]["steady_round"]["db_exec_ms"] + at[0]["steady_round"]["db_plan_ms"] \
        if at else None
    return {"collector_db_ms_per_round_1000_tables_5000_statements":
            common.gap(measured, AIM_DB_MS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"3 steady rounds, sizes {' '.join(QUICK_SIZES)}")
    parser.add_argument("--rounds", type=int, default=10, help="steady rounds per size")
    parser.add_argument("--sizes", nargs="+", default=None,
                        help=f"TABLESxSTATEMENTS (default {' '.join(FULL_SIZES)})")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/collector_cost[.quick].json")
    args = parser.parse_args(argv)
    args.output = args.output or common.result_path("collector_cost", args.quick)
    rounds = 3 if args.quick else args.rounds
    sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick
                                                   else FULL_SIZES))]
    settings: dict[str, postgres.SettingValue] = {
        "max_locks_per_transaction": 256, "pg_stat_statements.track": "top",
        "pg_stat_statements.max": 10_000, "autovacuum": False}
    started = time.monotonic()
    with postgres.PostgresCluster(settings=settings) as cluster:
        cluster.install_extensions("template1")
        cluster.create_role(ROLE, member_of=["pg_monitor"])
        with cluster.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()
        results = []
        for tables, statements in sizes:
            print(f"measuring {tables} tables, {statements} statements...", file=sys.stderr,
                  flush=True)
            results.append(_measure(cluster, tables, statements, rounds))
    server = version[0] if version else "unknown"
    common.publish(
        "collector_cost", quick=args.quick, started=started, output=args.output,
        results=results, printer=_print, machine_info=common.machine(f"PostgreSQL {server}"),
        server_version=server, psycopg=psycopg.__version__, aims=aims(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
