"""What the analyser's history holds and costs per snapshot, in process, at 5,000 tables and
5,000 statements: synthetic snapshots (no PostgreSQL), the statements' keys unchanged from
round to round or churning (a share of the top statements replaced each round by others of
a larger pool, so keys disappear and come back, as the top statements of pg_stat_statements
do).

For each churn and number of samples: the Python memory the history holds (``tracemalloc``:
what the slim samples' columns, key indexes and key tables take; the newest sample's
protobuf snapshot is C memory, not traced), the samples it keeps (``MAX_BYTES`` may bind
before ``MAX_SAMPLES``) and its own accounting of its bytes (what ``MAX_BYTES`` is checked
against). Then the steady time of ``Engine.apply`` (history, every detector, lifecycle) on the
same stream, and of the history calls alone the detectors lean on (``table_deltas``,
``statement_deltas``, a lookup of every table in every older sample).

    .venv/bin/python bench/history_memory.py --quick
    .venv/bin/python bench/history_memory.py --history /tmp/history_before.py   # another version

``--history FILE`` measures another ``analyser/history.py`` (``git show REV:analyser/history.py
> FILE``) in its place, for before/after figures. Writes
``bench/results/history_memory[.quick].json`` unless ``--output`` says where.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import common


def _use_history(path: Path) -> None:
    """Load ``path`` as ``startupmonkey.analyser.history`` before anything imports it."""
    import startupmonkey.analyser as package

    spec = importlib.util.spec_from_file_location("startupmonkey.analyser.history", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    package.history = module  # type: ignore[attr-defined]


NAMESPACE, MONITOR, DATID, SYSID = "bench", "history", 16384, 7_300_000_000_000_000_001
T0 = 1_800_000_000.0
GAP = 10.0


class Stream:
    """Synthetic rounds: every table's counters move a little; ``churn`` of the statements
    are replaced each round by others of a pool twice as large (they come back later)."""

    def __init__(self, tables: int, statements: int, churn: float, seed: int = 7) -> None:
        from startupmonkey.v1 import snapshot_pb2 as pb

        self.pb = pb
        self.rng = random.Random(seed)
        self.tables = tables
        self.pool = [(self.rng.getrandbits(63), 10 + n % 3, DATID, True)
                     for n in range(2 * statements)]
        self.active = list(range(statements))
        self.inactive = list(range(statements, 2 * statements))
        self.churn = churn
        self.table_counts = [[n * 7, n * 100, n, n // 2, n // 3, 10 * n, n, 5 * n, n]
                             for n in range(tables)]
        self.calls = [[0, 0.0, 0, 0, 0, 0] for _ in self.pool]
        self.round = 0

    def next(self) -> Any:
        pb, rng = self.pb, self.rng
        self.round += 1
        n = self.round
        if n > 1 and self.churn:
            out = rng.sample(range(len(self.active)), int(len(self.active) * self.churn))
            rng.shuffle(self.inactive)
            for position, replacement in zip(out, list(self.inactive), strict=False):
                self.inactive.remove(replacement)
                self.inactive.append(self.active[position])
                self.active[position] = replacement
        at = T0 + n * GAP
        snap = pb.Snapshot(collector_id="bench", sequence=n, chunk_index=0, chunk_count=1)
        snap.monitor.namespace, snap.monitor.name = NAMESPACE, MONITOR
        snap.collected_at.FromSeconds(int(at))
        snap.database.dbname, snap.database.datid = "bench", DATID
        snap.database.system_identifier = SYSID
        snap.database.server_version_num = 160004
        snap.database.postmaster_start_time.FromSeconds(int(T0 - 86_400))
        for section in pb.Section.values():
            if section != pb.SECTION_UNSPECIFIED:
                status = snap.collector.sections.add(section=section,
                                                     state=pb.SECTION_STATE_OK)
                status.collected_at.FromSeconds(int(at))
        snap.database_stats.blks_hit = 1_000_000 * n
        snap.database_stats.blks_read = 1_000 * n
        snap.database_stats.xact_commit = 10_000 * n
        snap.database_stats.datconnlimit = -1
        for name, value in (("max_connections", "100"), ("autovacuum", "on"),
                            ("track_counts", "on"), ("block_size", "8192")):
            snap.settings.add(name=name, setting=value)
        snap.statements_info.available = True
        snap.statements_info.dealloc = 0
        snap.statements_info.stats_reset.FromSeconds(int(T0 - 86_400))
        for relid, counts in enumerate(self.table_counts, start=16_384):
            if rng.random() < 0.1:
                for i in range(len(counts)):
                    counts[i] += rng.randrange(50)
            snap.tables.add(
                relid=relid, schema="app", name=f"table_{relid}", relkind="r",
                seq_scan=counts[0], seq_tup_read=counts[1], n_tup_ins=counts[2],
                n_tup_upd=counts[3], n_tup_del=counts[4], heap_blks_hit=counts[5],
                heap_blks_read=counts[6], idx_blks_hit=counts[7], idx_blks_read=counts[8],
                n_live_tup=10_000 + relid, n_dead_tup=counts[3] // 10,
                reltuples=float(10_000 + relid), relpages=100, total_bytes=819_200)
        for position in self.active:
            queryid, userid, dbid, toplevel = self.pool[position]
            calls = self.calls[position]
            calls[0] += 1 + rng.randrange(20)
            calls[1] += 0.5 * calls[0]
            calls[2] += calls[0]
            calls[3] += 10 * calls[0]
            calls[4] += calls[0] // 3
            snap.statements.add(queryid=queryid, userid=userid, dbid=dbid, toplevel=toplevel,
                                calls=calls[0], total_exec_time_ms=calls[1], rows=calls[2],
                                shared_blks_hit=calls[3], shared_blks_read=calls[4],
                                mean_exec_time_ms=0.5)
        return snap


def _held(history: Any, hist: Any) -> int:
    """The history's own count of its bytes (what ``MAX_BYTES`` is checked against)."""
    nbytes = getattr(hist, "nbytes", None)
    return int(nbytes if nbytes is not None else sum(s.size for s in hist.samples))


def memory(tables: int, statements: int, churn: float, samples: int) -> dict[str, Any]:
    """Python memory held by a history after ``samples`` rounds (default bounds)."""
    from startupmonkey.analyser import history

    stream = Stream(tables, statements, churn)
    rounds = [stream.next().SerializeToString() for _ in range(samples)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    hist = history.History(retention=samples * GAP * 10)
    for raw in rounds:
        hist.add(history.Sample(stream.pb.Snapshot.FromString(raw)))
    del raw
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"churn": churn, "rounds": samples, "samples_kept": len(hist.samples),
            "python_mb": round(held / 1e6, 2), "accounted_mb": round(_held(history, hist) / 1e6, 2)}


def timing(tables: int, statements: int, churn: float, rounds: int) -> dict[str, Any]:
    """Steady ``Engine.apply`` milliseconds, and of the history calls alone."""
    import prometheus_client

    from startupmonkey import settings
    from startupmonkey.analyser import engine, metrics
    from startupmonkey.analyser.detectors import statements as stmts
    from startupmonkey.models import monitor

    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "localhost", "port": 5432, "dbname": "bench",
                     "credentialsSecret": {"name": "unused"}}, "interval": "10s"})
    config = settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=NAMESPACE, name=MONITOR), spec=spec)
    core = engine.Engine(config, metrics.Metrics(prometheus_client.CollectorRegistry()))
    stream = Stream(tables, statements, churn)
    apply_ms: list[float] = []
    calls_ms: list[float] = []
    for n in range(rounds):
        snap = stream.next()
        started = time.perf_counter()
        applied = core.apply(snap)
        done = time.perf_counter()
        for occurrence, _detection in applied.due:
            core.published(occurrence)
        hist = next(iter(core.histories.values()))
        window = hist.window()
        began = time.perf_counter()
        window.table_deltas(stmts.TABLE_FIELDS)
        window.statement_deltas(stmts.FIELDS)
        window.statement_deltas(stmts.FIELDS, 300.0)
        for sample in window.behind():
            older = sample.tables
            for relid in window.latest.tables:
                older.get(relid)
        ended = time.perf_counter()
        if n >= 10:  # steady: the history has older samples to read
            apply_ms.append((done - started) * 1000)
            calls_ms.append((ended - began) * 1000)
    return {"churn": churn, "rounds": rounds, "samples_kept": len(hist.samples),
            "apply_ms": common.summary(apply_ms), "history_calls_ms": common.summary(calls_ms)}


def _print(results: dict[str, Any]) -> None:
    print(f"{'churn':>6} {'rounds':>6} {'kept':>5} {'python MB':>10} {'accounted MB':>13}")
    for r in results["memory"]:
        print(f"{r['churn']:>6} {r['rounds']:>6} {r['samples_kept']:>5} {r['python_mb']:>10} "
              f"{r['accounted_mb']:>13}")
    print(f"{'churn':>6} {'rounds':>6} {'kept':>5} {'apply ms':>9} {'history calls ms':>17}")
    for r in results["timing"]:
        print(f"{r['churn']:>6} {r['rounds']:>6} {r['samples_kept']:>5} "
              f"{r['apply_ms']['median']:>9} {r['history_calls_ms']['median']:>17}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds of timing")
    parser.add_argument("--tables", type=int, default=5_000)
    parser.add_argument("--statements", type=int, default=5_000)
    parser.add_argument("--churn", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--samples", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--only", choices=("memory", "timing"), default=None)
    parser.add_argument("--history", type=Path, default=None,
                        help="measure this file in place of analyser/history.py")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="the histories' bound in place of MAX_BYTES (the same number of "
                        "samples kept before and after)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/history_memory[.quick].json")
    args = parser.parse_args(argv)
    if args.history is not None:
        _use_history(args.history)
    if args.max_bytes is not None:
        from startupmonkey.analyser import history

        init = history.History.__init__
        init.__defaults__ = (*init.__defaults__[:-1], args.max_bytes)  # type: ignore[index]
    started = time.perf_counter()
    rounds = 30 if args.quick else 80
    results = {
        "tables": args.tables, "statements": args.statements,
        "history": str(args.history or "analyser/history.py"), "max_bytes": args.max_bytes,
        "memory": [memory(args.tables, args.statements, churn, samples)
                   for churn in args.churn for samples in args.samples
                   if args.only != "timing"],
        "timing": [timing(args.tables, args.statements, churn, rounds) for churn in args.churn
                   if args.only != "memory"],
    }
    common.publish("history_memory", quick=args.quick, started=started,
                   output=args.output or common.result_path("history_memory", args.quick),
                   results=results, printer=_print, machine_info=common.machine(None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
