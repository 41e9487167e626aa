"""What changed-only statement reads save and cost (issue 19, items 3 and 4), in process, on
synthetic snapshots (no PostgreSQL, no gRPC): 1,000 tables and 5,000 pg_stat_statements
entries of which about 100 move per round (a 10 s interval).

The same rounds go two ways: as the collector read them (every entry in every read) and as
the collector's stream writes them (``stream._Session.trim_statements``: only the entries
that changed, the full set when due), each into its own analyser ``Engine``. For each way:
the statement part of a snapshot and the whole snapshot in bytes, the steady time of
``Engine.apply`` and the bytes the database's history accounts. For the collector: the time
to choose the entries of a read (``trim_statements``, in the event loop), the fingerprint of
5,000 entries three ways (the serialized entry hashed, with and without
``deterministic=True``, and a tuple of every field), and the Python memory of what the stream
remembers per database (``tracemalloc``).

    .venv/bin/python bench/statements_changed.py --quick

Writes ``bench/results/statements_changed[.quick].json`` unless ``--output`` says where.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import common

GAP = 10.0


class Rounds:
    """Synthetic reads: every table's counters move a little, ``moving`` of the 300 hottest
    statements run each round, the others do not."""

    def __init__(self, tables: int, statements: int, moving: int, seed: int = 7) -> None:
        from startupmonkey.v1 import snapshot_pb2 as pb

        self.pb = pb
        self.rng = random.Random(seed)
        self.tables = tables
        self.moving = moving
        self.calls = {q: self.rng.randint(1, 10_000) for q in range(1, statements + 1)}
        self.hot = list(range(1, min(statements, 300) + 1))
        self.round = 0

    def next(self) -> Any:
        from tests.support import snapshots_build as build

        pb = self.pb
        self.round += 1
        n = self.round
        for queryid in self.rng.sample(self.hot, min(self.moving, len(self.hot))):
            self.calls[queryid] += self.rng.randint(1, 50)
        tables = [build.table(r, f"t{r}", seq_scan=r + n, seq_tup_read=r * 10 + n,
                              n_live_tup=r * 100, reltuples=r * 100.0, n_tup_ins=n)
                  for r in range(1, self.tables + 1)]
        entries = [pb.StatementStats(
            queryid=q * 7919, userid=10, dbid=build.DATID, toplevel=True, calls=c,
            total_exec_time_ms=c * 1.5, rows=c, shared_blks_hit=c * 3, mean_exec_time_ms=1.5,
            min_exec_time_ms=0.1, max_exec_time_ms=9.0) for q, c in self.calls.items()]
        snap = build.snapshot(GAP * n, seq=n, tables=tables, statements=entries)
        snap.statements_info.dealloc = 0
        snap.statements_info.stats_reset.CopyFrom(build.ts(-1000))
        return snap


def _section_bytes(snap: Any) -> int:
    from startupmonkey.v1 import snapshot_pb2 as pb

    part = pb.Snapshot()
    part.statements.extend(snap.statements)
    part.statements_info.CopyFrom(snap.statements_info)
    return part.ByteSize()


def _engine() -> Any:
    import prometheus_client

    from startupmonkey import settings
    from startupmonkey.analyser import engine, metrics
    from startupmonkey.models import monitor
    from tests.support import snapshots_build as build

    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "localhost", "port": 5432, "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "unused"}}, "interval": "10s"})
    config = settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR), spec=spec)
    return engine.Engine(config, metrics.Metrics(prometheus_client.CollectorRegistry()))


def streams(tables: int, statements: int, moving: int, rounds: int
            ) -> tuple[list[Any], list[Any], list[float]]:
    """The reads as read and as written on one stream, and the milliseconds of choosing."""
    from startupmonkey.collector import stream
    from startupmonkey.v1 import snapshot_pb2 as pb

    source = Rounds(tables, statements, moving)
    session = stream._Session(changed_only=True)
    full, changed, choose_ms = [], [], []
    for _ in range(rounds):
        read = source.next()
        sent = pb.Snapshot()
        sent.CopyFrom(read)
        started = time.perf_counter()
        carried = session.trim_statements(sent, "app")
        choose_ms.append((time.perf_counter() - started) * 1000)
        session.acked(sent.sequence, stream._InFlight(0.0, (), None, "app", carried))
        full.append(read)
        changed.append(sent)
    return full, changed, choose_ms


def analyse(way: str, snaps: list[Any]) -> dict[str, Any]:
    """Bytes on the wire and the analyser's steady apply time and history bytes."""
    core = _engine()
    apply_ms = []
    for n, snap in enumerate(snaps):
        copy = type(snap)()
        copy.CopyFrom(snap)
        started = time.perf_counter()
        applied = core.apply(copy, {})
        elapsed = (time.perf_counter() - started) * 1000
        assert applied.status == 1, applied.message  # ACCEPTED
        for occurrence, _detection in applied.due:
            core.published(occurrence)
        if n >= len(snaps) // 4:  # steady: the history has older samples to read
            apply_ms.append(elapsed)
    hist = next(iter(core.histories.values()))
    later = snaps[1:]
    return {"way": way,
            "statements_kb": common.summary(_section_bytes(s) / 1000 for s in later),
            "snapshot_kb": common.summary(s.ByteSize() / 1000 for s in later),
            "apply_ms": common.summary(apply_ms), "history_mb": round(hist.nbytes / 1e6, 2),
            "samples_kept": len(hist.samples)}


def fingerprints(statements: int, repeats: int) -> dict[str, Any]:
    """Milliseconds to fingerprint ``statements`` entries with every field set, three ways."""
    from startupmonkey.v1 import snapshot_pb2 as pb

    rng = random.Random(1)
    entries = []
    for _ in range(statements):
        entry = pb.StatementStats(queryid=rng.getrandbits(63), userid=10, dbid=1,
                                  toplevel=True)
        for field in entry.DESCRIPTOR.fields:
            if field.name in ("queryid", "userid", "dbid", "toplevel"):
                continue
            if field.message_type is not None:
                getattr(entry, field.name).seconds = 1_700_000_000
            elif field.type == field.TYPE_DOUBLE:
                setattr(entry, field.name, rng.random() * 1e6)
            else:
                setattr(entry, field.name, rng.randint(1, 10**9))
        entries.append(entry)
    names = [f.name for f in pb.StatementStats.DESCRIPTOR.fields if f.message_type is None]

    def every_field(e: Any) -> int:
        return hash((tuple(getattr(e, name) for name in names), e.stats_since.seconds,
                     e.stats_since.nanos, e.minmax_stats_since.seconds,
                     e.minmax_stats_since.nanos))

    ways = {
        "serialized_deterministic": lambda e: hash(e.SerializeToString(deterministic=True)),
        "serialized": lambda e: hash(e.SerializeToString()),
        "tuple_of_every_field": every_field,
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(repeats):  # interleaved: a busy moment costs every way alike
        for way, function in ways.items():
            started = time.perf_counter()
            for entry in entries:
                function(entry)
            times[way].append((time.perf_counter() - started) * 1000)
    return {"entries": statements, **{way: common.summary(t) for way, t in times.items()}}


def stream_memory(statements: int) -> dict[str, Any]:
    """Python bytes of what a stream remembers of one database's entries."""
    from startupmonkey.collector import stream

    read = Rounds(0, statements, 0).next()
    gc.collect()
    tracemalloc.start()
    _, remembered = stream.changed_statements(list(read.statements), None)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"entries": len(remembered), "python_mb": round(current / 1e6, 2),
            "bytes_per_entry": round(current / max(1, len(remembered)))}


def _print(results: dict[str, Any]) -> None:
    print(f"{'way':>13} {'statements KB':>14} {'snapshot KB':>12} {'apply ms':>9} "
          f"{'history MB':>11}")
    for r in results["analyser"]:
        print(f"{r['way']:>13} {r['statements_kb']['median']:>14} "
              f"{r['snapshot_kb']['median']:>12} {r['apply_ms']['median']:>9} "
              f"{r['history_mb']:>11}")
    choose = results["choose_ms"]
    print(f"choosing the entries of a read (trim_statements) ms: median {choose['median']}, "
          f"min {choose['min']}, max {choose['max']}")
    print(f"{'fingerprint of ' + str(results['fingerprint']['entries']) + ' entries':>34} "
          f"{'median ms':>10} {'min ms':>7}")
    for way in ("serialized_deterministic", "serialized", "tuple_of_every_field"):
        figure = results["fingerprint"][way]
        print(f"{way:>34} {figure['median']:>10} {figure['min']:>7}")
    memory = results["stream_memory"]
    print(f"stream memory: {memory['python_mb']} MB for {memory['entries']} entries "
          f"({memory['bytes_per_entry']} B an entry)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--tables", type=int, default=1_000)
    parser.add_argument("--statements", type=int, default=5_000)
    parser.add_argument("--moving", type=int, default=100,
                        help="statements that run each round (of the 300 hottest)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/statements_changed[.quick].json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rounds = 16 if args.quick else 40
    full, changed, choose_ms = streams(args.tables, args.statements, args.moving, rounds)
    results = {
        "tables": args.tables, "statements": args.statements, "moving": args.moving,
        "rounds": rounds,
        "analyser": [analyse("full", full), analyse("changed-only", changed)],
        "choose_ms": common.summary(choose_ms[1:]),
        "fingerprint": fingerprints(args.statements, 5 if args.quick else 21),
        "stream_memory": stream_memory(args.statements),
    }
    common.publish("statements_changed", quick=args.quick, started=started,
                   output=args.output or common.result_path("statements_changed", args.quick),
                   results=results, printer=_print, machine_info=common.machine(None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
