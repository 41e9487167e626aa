"""Synthetic: 1,000 tables x 5,000 statements, ~100 statements move per round (interval 10 s);
the same rounds sent full and as the collector's stream sends them (changed-only)."""
import random, statistics, sys, time
sys.path.insert(0, "/work/wt-memory")
import prometheus_client
from startupmonkey.analyser import engine, metrics
from startupmonkey.collector import stream
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_analyser_engine import config

TABLES, STMTS, MOVING, ROUNDS = 1000, 5000, 100, int(sys.argv[1]) if len(sys.argv) > 1 else 40
rng = random.Random(7)
calls = {q: rng.randint(1, 10_000) for q in range(1, STMTS + 1)}
hot = list(range(1, 301))

def snap(n):
    for q in rng.sample(hot, MOVING):
        calls[q] += rng.randint(1, 50)
    t = 10.0 * n
    tables = [build.table(r, f"t{r}", seq_scan=r + n, seq_tup_read=r * 10 + n, n_live_tup=r * 100,
                          reltuples=r * 100.0, n_tup_ins=n) for r in range(1, TABLES + 1)]
    stmts = [pb.StatementStats(queryid=q * 7919, userid=10, dbid=build.DATID, toplevel=True,
                               calls=c, total_exec_time_ms=c * 1.5, rows=c, shared_blks_hit=c * 3,
                               mean_exec_time_ms=1.5, min_exec_time_ms=0.1, max_exec_time_ms=9.0)
             for q, c in calls.items()]
    s = build.snapshot(t, seq=n, tables=tables, statements=stmts)
    s.statements_info.dealloc = 0
    return s

full_stream = [snap(n) for n in range(1, ROUNDS + 1)]
session = stream._Session()
changed_stream, choose_ms = [], []
for s in full_stream:
    c = pb.Snapshot(); c.CopyFrom(s)
    t0 = time.perf_counter()
    session.trim_statements(c, "app")
    choose_ms.append((time.perf_counter() - t0) * 1000)
    session.acked(c.sequence, stream._InFlight(0.0, (), None, "app", True))
    changed_stream.append(c)

def section_bytes(s):
    x = pb.Snapshot(); x.statements.extend(s.statements); x.statements_info.CopyFrom(s.statements_info)
    return x.ByteSize()

def apply(snaps):
    core = engine.Engine(config(), metrics.Metrics(prometheus_client.CollectorRegistry()))
    out = []
    for s in snaps:
        t0 = time.perf_counter(); a = core.apply(s, {}); out.append((time.perf_counter() - t0) * 1000)
        for occ, _ in a.due: core.published(occ)
    hist = next(iter(core.histories.values()))
    return out, hist.nbytes

for name, snaps in (("full", full_stream), ("changed-only", changed_stream)):
    sizes = [section_bytes(s) for s in snaps[1:]]
    times, nbytes = apply(snaps)
    steady = times[len(times)//4:]
    print(f"{name:13s} statements section bytes median {statistics.median(sizes):>9,.0f} "
          f"(full rounds {max(sizes):,}); snapshot bytes median {statistics.median([s.ByteSize() for s in snaps[1:]]):,.0f}; "
          f"steady apply ms median {statistics.median(steady):.1f} p90 {sorted(steady)[int(len(steady)*0.9)]:.1f}; "
          f"history {nbytes/1e6:.1f} MB")
print(f"collector choice (trim_statements) ms median {statistics.median(choose_ms[1:]):.1f} max {max(choose_ms):.1f}")
