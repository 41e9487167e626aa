"""Any valid-protobuf Snapshot the ingest port can receive (issue 24: the analyser's input
is outside input) leaves the engine working: random values in the fields the detectors read
(tables, sessions, statements, database counters), over a few rounds so that deltas, rates
and resets are computed, never make ``Engine.apply`` raise."""

from __future__ import annotations

from typing import Any

import prometheus_client
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import engine, metrics
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_analyser_engine import config

Status = ingest_pb2.AckStatus
# Thresholds that let every detector fire on small numbers.
LOW = {"idle_in_transaction": {"maxDuration": "0s"}, "long_running_query": {"maxDuration": "0s"},
       "dead_tuples": {"minDeadTuples": 0, "minDeadRatio": 0.0001},
       "stale_statistics": {"minModifiedRows": 0, "minModifiedRatio": 0.0001}}

I64 = st.integers(-(2**63), 2**63 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
U32 = st.integers(0, 2**32 - 1)
COUNT = st.integers(0, 10**9) | I64
FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1e9)
TEXT = st.text(max_size=40)
SECONDS = st.floats(-10**6, 10**6, allow_nan=False) | st.sampled_from([-1e9, 0.0, 1e9])


def _table(relid: int, name: str, values: dict[str, Any]) -> pb.TableStats:
    return build.table(relid, name, **values)


TABLES = st.builds(
    _table, st.integers(1, 5) | U32, st.sampled_from(["orders", "items"]) | TEXT,
    st.fixed_dictionaries({}, optional={
        "relkind": st.sampled_from(["r", "p", "m", "", "x"]), "reltuples": FLOAT,
        "n_live_tup": COUNT, "n_dead_tup": COUNT, "n_mod_since_analyze": COUNT,
        "n_ins_since_vacuum": COUNT, "seq_scan": COUNT, "seq_tup_read": COUNT,
        "idx_scan": COUNT, "n_tup_upd": COUNT, "n_tup_hot_upd": COUNT, "relpages": I32,
        "heap_blks_read": COUNT, "heap_blks_hit": COUNT, "relfrozenxid_age": I32,
        "last_analyze": SECONDS, "last_autovacuum": SECONDS, "schema": TEXT}))

SESSIONS = st.builds(
    lambda pid, values: build.session(pid, **values), st.integers(1, 5) | I32,
    st.fixed_dictionaries({}, optional={
        "state": st.sampled_from(["active", "idle", "idle in transaction",
                                  "idle in transaction (aborted)", ""]) | TEXT,
        "backend_start": SECONDS, "xact_start": SECONDS, "query_start": SECONDS,
        "state_change": SECONDS, "blocking_pids": st.lists(st.integers(0, 6) | I32, max_size=4),
        "wait_event_type": st.sampled_from(["Lock", "", "IO"]), "query": TEXT,
        "usename": TEXT, "backend_type": st.sampled_from(["client backend", "walsender"]),
        "leader_pid": I32, "backend_xid_age": I32}))

STATEMENTS = st.builds(
    lambda queryid, values: pb.StatementStats(queryid=queryid, dbid=build.DATID, **values),
    st.integers(1, 4) | I64,
    st.fixed_dictionaries({}, optional={
        "calls": COUNT, "total_exec_time_ms": FLOAT, "rows": COUNT, "mean_exec_time_ms": FLOAT,
        "shared_blks_hit": COUNT, "shared_blks_read": COUNT, "toplevel": st.booleans()}))

ROUND = st.fixed_dictionaries({
    "tables": st.lists(TABLES, max_size=3), "sessions": st.lists(SESSIONS, max_size=4),
    "statements": st.lists(STATEMENTS, max_size=3),
    "database": st.fixed_dictionaries({}, optional={
        "xact_commit": COUNT, "blks_hit": COUNT, "blks_read": COUNT, "numbackends": I32,
        "deadlocks": COUNT}),
    "texts": st.lists(st.builds(lambda q, t: pb.StatementText(queryid=q, text=t),
                                st.integers(1, 4), st.sampled_from(
                                    ["SELECT * FROM orders WHERE id = $1",
                                     "SELECT id FROM orders WHERE customer_id = $1 "
                                     "ORDER BY total DESC LIMIT 20"]) | TEXT), max_size=2)})


@settings(max_examples=150, deadline=None)
@given(rounds=st.lists(ROUND, min_size=1, max_size=3),
       gaps=st.lists(st.floats(-5, 120, allow_nan=False), min_size=3, max_size=3))
def test_random_snapshots_never_make_the_engine_raise(rounds: list[dict[str, Any]],
                                                      gaps: list[float]) -> None:
    core = engine.Engine(config(**LOW), metrics.Metrics(prometheus_client.CollectorRegistry()))
    at = 0.0
    for seq, (values, gap) in enumerate(zip(rounds, gaps, strict=False), start=1):
        at += gap
        snap = build.snapshot(at, seq=seq, tables=values["tables"],
                              sessions=values["sessions"], statements=values["statements"],
                              statement_texts=values["texts"], database=values["database"])
        texts = {t.queryid: t for t in values["texts"]}
        applied = core.apply(snap, texts)
        assert applied.status in (Status.ACK_STATUS_ACCEPTED, Status.ACK_STATUS_REJECTED,
                                  Status.ACK_STATUS_DUPLICATE, Status.ACK_STATUS_RETRY)
        for _, detection in applied.due:
            detection.encode()
