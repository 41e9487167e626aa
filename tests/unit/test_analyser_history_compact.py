"""Older samples keep only the counters detectors read, in compact columns (issue 19, item 2).

The history makes every sample but the newest *slim*: of its tables, indexes and statements it
keeps only the fields in ``history.KEPT``, one array per field. These tests check that this
changes nothing the detectors see (every delta and every finding equals what whole snapshots
give, on random histories), that it costs far less than the snapshots, that reading a field it
does not keep fails loudly, and that the caller's snapshot is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import detectors, history
from startupmonkey.analyser.detectors import database, statements
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

S = pb.Section
RELIDS = (1, 2, 3)
QUERYIDS = (11, 12, 13)
TABLE_MOVES = ("seq_scan", "seq_tup_read", "n_tup_ins", "n_tup_upd", "n_tup_del",
               "heap_blks_hit", "heap_blks_read", "vacuum_count", "autovacuum_count",
               "analyze_count", "autoanalyze_count")
# Thresholds low enough that the table and statement detectors fire on these small numbers.
LOW = build.limits(
    dead_tuples={"minDeadTuples": 10, "minDeadRatio": 0.01, "autovacuumGrace": "20s"},
    stale_statistics={"minModifiedRows": 10, "minModifiedRatio": 0.01})

_table = st.fixed_dictionaries({
    "present": st.integers(0, 5),  # 0: not sent in this round
    "moves": st.lists(st.integers(-2, 40), min_size=len(TABLE_MOVES),
                      max_size=len(TABLE_MOVES)),
    "idx_blks": st.one_of(st.none(), st.integers(0, 50)),
    "dead": st.integers(0, 3_000), "live": st.integers(0, 5_000),
    "reltuples": st.sampled_from([-1.0, 0.0, 100.0, 4_000.0]),
    "options": st.sampled_from([{}, {}, {"autovacuum_vacuum_scale_factor": "0.01"},
                                {"autovacuum_enabled": "false"}]),
})
_statement = st.fixed_dictionaries({
    "present": st.integers(0, 4),
    "calls": st.integers(-1, 50), "time": st.floats(0, 500), "rows": st.integers(0, 9),
    "read": st.integers(0, 99), "toplevel": st.sampled_from([None, True, False]),
})
_round = st.fixed_dictionaries({
    "gap": st.sampled_from([1.0, 5.0, 10.0, 30.0]),
    "tables": st.tuples(*(_table for _ in RELIDS)),
    "statements": st.tuples(*(_statement for _ in QUERYIDS)),
    "sections_missing": st.sampled_from([(), (), (), (S.SECTION_TABLES,),
                                         (S.SECTION_STATEMENTS,), (S.SECTION_DATABASE,)]),
    "truncated": st.sampled_from([(), (), (S.SECTION_TABLES,)]),
    "db_reset": st.integers(0, 15), "stmt_reset": st.integers(0, 15),
    "dealloc_grows": st.booleans(),
    "reversed": st.booleans(),  # items in the other order (the key index is not shared)
})


def _snapshots(rounds: Sequence[dict[str, Any]]) -> list[pb.Snapshot]:
    """Snapshots whose counters move as drawn (a negative move: a counter going down)."""
    totals = {r: [100] * len(TABLE_MOVES) for r in RELIDS}
    calls = {q: [0, 0.0, 0, 0] for q in QUERYIDS}
    at, db_reset, stmt_reset, dealloc, hit = 0.0, 0, 0, 0, 1_000
    out = []
    for n, drawn in enumerate(rounds):
        at += drawn["gap"]
        db_reset += drawn["db_reset"] == 0
        stmt_reset += drawn["stmt_reset"] == 0
        dealloc += drawn["dealloc_grows"]
        hit += 10 * n
        tables = []
        for relid, t in zip(RELIDS, drawn["tables"], strict=True):
            total = totals[relid]
            for i, move in enumerate(t["moves"]):
                total[i] = max(0, total[i] + move)
            if not t["present"]:
                continue
            fields: dict[str, Any] = dict(zip(TABLE_MOVES, total, strict=True))
            fields.update(n_dead_tup=t["dead"], n_live_tup=t["live"], reltuples=t["reltuples"])
            if t["idx_blks"] is not None:
                fields.update(idx_blks_hit=t["idx_blks"], idx_blks_read=t["idx_blks"] // 3)
            table = build.table(relid, f"t{relid}", **fields)
            table.reloptions.update(t["options"])
            tables.append(table)
        stmts = []
        for queryid, s in zip(QUERYIDS, drawn["statements"], strict=True):
            total_s = calls[queryid]
            total_s[0] = max(0, total_s[0] + s["calls"])
            total_s[1] += s["time"]
            total_s[2] += s["rows"]
            total_s[3] += s["read"]
            if not s["present"]:
                continue
            stmt = pb.StatementStats(queryid=queryid, userid=10, dbid=build.DATID,
                                     calls=total_s[0], total_exec_time_ms=total_s[1],
                                     rows=total_s[2], shared_blks_read=total_s[3])
            if s["toplevel"] is not None:
                stmt.toplevel = s["toplevel"]
            stmts.append(stmt)
        if drawn["reversed"]:
            tables.reverse()
            stmts.reverse()
        sections = [s for s in build.ALL_SECTIONS if s not in drawn["sections_missing"]]
        snap = build.snapshot(at, seq=n + 1, sections=sections, tables=tables,
                              statements=stmts, indexes=[build.index(100 + r, r, f"i{r}")
                                                         for r in RELIDS],
                              database={"blks_hit": hit, "blks_read": n,
                                        "stats_reset": float(db_reset)})
        for status in snap.collector.sections:
            if status.section in drawn["truncated"]:
                status.state = pb.SectionState.SECTION_STATE_TRUNCATED
        snap.statements_info.dealloc = dealloc
        snap.statements_info.stats_reset.CopyFrom(build.ts(float(stmt_reset)))
        out.append(snap)
    return out


def _both(snaps: Sequence[pb.Snapshot]) -> tuple[history.Window, history.Window]:
    """The window of a history (older samples slim) and the same window built from whole
    samples of the same snapshots (never slimmed)."""
    hist = history.History(retention=60)
    for snap in snaps:
        hist.add(history.Sample(snap))
    compact = hist.window()
    kept = {s.collected_at for s in hist.samples}
    whole = [history.Sample(snap) for snap in snaps
             if history.Sample(snap).collected_at in kept]
    reference = history.Window(whole, hist.markers, compact.catalog, compact.catalog_complete)
    return compact, reference


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN (a Delta of a NaN counter)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_round, min_size=1, max_size=10),
       over=st.sampled_from([None, 0.0, 8.0, 25.0, 60.0]))
def test_deltas_and_findings_from_slim_samples_equal_those_from_whole_snapshots(
        rounds: list[dict[str, Any]], over: float | None) -> None:
    snaps = _snapshots(rounds)
    compact, whole = _both(snaps)
    assert all(s.slim for s in compact.samples[:-1]), "every older sample is slim"
    for fields in (statements.TABLE_FIELDS, database._TABLE_FIELDS, history.KEPT["tables"][:-5]):
        fields = tuple(f for f in fields if f != "reloptions")
        assert compact.table_deltas(fields, over) == whole.table_deltas(fields, over)
    assert compact.index_deltas(history.KEPT["indexes"], over) == whole.index_deltas(
        history.KEPT["indexes"], over)
    assert (compact.statement_deltas(statements.FIELDS, over)
            == whole.statement_deltas(statements.FIELDS, over))
    assert (compact.database_delta(("blks_hit", "blks_read"), over)
            == whole.database_delta(("blks_hit", "blks_read"), over))
    for detector in detectors.REGISTRY:
        try:
            want = detector.run(whole, LOW)
        except Exception as exc:  # the compact window must fail the same way
            with pytest.raises(type(exc)):
                detector.run(compact, LOW)
            continue
        assert detector.run(compact, LOW) == want, detector.id


def test_reading_a_field_older_samples_do_not_keep_fails_loudly() -> None:
    snaps = [build.snapshot(t, seq=t + 1, tables=[build.table(1, "a", n_mod_since_analyze=5)])
             for t in (0, 1)]
    window = build.window(*snaps)
    older = next(window.behind())
    assert older.tables[1].n_dead_tup == 0  # kept
    with pytest.raises(AttributeError, match=r"n_mod_since_analyze \(history.KEPT\)"):
        _ = older.tables[1].n_mod_since_analyze
    with pytest.raises(AttributeError, match=r"history\.KEPT"):
        window.table_deltas(("n_mod_since_analyze",))
    assert window.latest.tables[1].n_mod_since_analyze == 5  # the newest keeps everything


def test_every_field_a_detector_takes_deltas_of_is_kept() -> None:
    assert set(statements.TABLE_FIELDS) <= set(history.KEPT["tables"])
    assert set(database._TABLE_FIELDS) <= set(history.KEPT["tables"])
    assert set(statements.FIELDS) <= set(history.KEPT["statements"])


def test_the_callers_snapshot_is_left_whole() -> None:
    first = build.snapshot(0, seq=1, tables=[build.table(1, "a")],
                           sessions=[build.session(7)])
    hist = history.History()
    hist.add(history.Sample(first))
    hist.add(history.Sample(build.snapshot(1, seq=2, tables=[build.table(1, "a")])))
    assert hist.samples[0].slim
    assert len(first.tables) == 1 and len(first.sessions) == 1
    assert not hist.samples[0].snapshot.tables and not hist.samples[0].snapshot.sessions
    # What older samples still need of the snapshot itself stays.
    assert hist.samples[0].snapshot.database.dbname == first.database.dbname
    assert hist.samples[0].snapshot.settings == first.settings


def _many(at: float, seq: int, tables: int, order: int = 1) -> pb.Snapshot:
    rows = [build.table(r, f"table_{r}", schema="some_schema", seq_scan=r * seq,
                        n_tup_ins=r + seq, n_live_tup=r * 10, n_dead_tup=seq, reltuples=r * 10.0,
                        relpages=r, total_bytes=r * 8192, last_autovacuum=at - 5)
            for r in range(1, tables + 1)][::order]
    stmts = [pb.StatementStats(queryid=q, userid=10, dbid=build.DATID, calls=q * seq,
                               total_exec_time_ms=q * 1.5, rows=q, mean_exec_time_ms=1.5,
                               shared_blks_hit=q, plans=1, wal_bytes=q)
             for q in range(1, tables + 1)]
    return build.snapshot(at, seq=seq, tables=rows, statements=stmts)


def test_a_slim_sample_costs_a_fraction_of_its_snapshot_and_shares_its_keys() -> None:
    hist = history.History()
    for n in range(4):
        hist.add(history.Sample(_many(n * 10.0, n + 1, 2_000)))
    older = hist.samples[:-1]
    # Kept per table: 16 numbers of at most 8 bytes; per statement 6; the database counters
    # and settings; the sample's own few objects. Not the key indexes: the history counts
    # each of those (and each key table) once, however many samples share it.
    rest = older[1].snapshot.ByteSize()
    assert rest < 4_000
    for sample in older:
        tables, statements = sample.tables, sample.statements
        assert isinstance(tables, history.Columns) and isinstance(statements, history.Columns)
        assert tables.nbytes <= 2_000 * 16 * 8 and statements.nbytes <= 2_000 * 6 * 8
        # These counters fit in 4 bytes or fewer: so does each of their columns.
        assert tables.nbytes <= 2_000 * 16 * 4 and statements.nbytes <= 2_000 * 6 * 4
        indexes = sample.indexes
        values = tables.nbytes + statements.nbytes + (
            indexes.nbytes if isinstance(indexes, history.Columns) else 0)
        assert 0 < sample.size - rest - values < 8_000
        # An index holds an id and a row per key, two bytes each here: the keys are in the
        # history's key table.
        assert tables.index.nbytes < 2_000 * 2 * 2 + 1_000
    assert len(hist.keys["tables"]) == len(hist.keys["statements"]) == 2_000
    assert hist.nbytes == sum(s.size for s in hist.samples) + sum(
        c.index.nbytes for c in (older[0].tables, older[0].statements, older[0].indexes)
        if isinstance(c, history.Columns)) + sum(
        t.nbytes for t in hist.keys.values()) + hist.view_bytes
    # Full reads only: no view of the newest statement values (the newest sample's own
    # statements are those), so no second copy of them.
    assert hist.view_bytes == 0 and hist.nbytes == hist.sample_bytes
    assert hist.samples[-1].size == hist.samples[-1].snapshot.ByteSize()
    tables = [s.tables for s in older]
    assert all(isinstance(t, history.Columns) for t in tables)
    assert tables[1].index is tables[0].index and tables[2].index is tables[0].index
    # The same keys in another order share the index too, and are still read right.
    hist.add(history.Sample(_many(40.0, 5, 2_000, order=-1)))
    hist.add(history.Sample(_many(50.0, 6, 1_999)))
    hist.add(history.Sample(_many(60.0, 7, 1_999)))
    reordered, fewer = hist.samples[-3].tables, hist.samples[-2].tables
    assert reordered.index is tables[0].index
    assert reordered[1234].seq_scan == 1234 * 5 and reordered[7].n_tup_ins == 12
    # Another set of keys (a table dropped): a new index.
    assert fewer.index is not tables[0].index and 2_000 not in fewer
    assert fewer[1999].seq_scan == 1999 * 6
