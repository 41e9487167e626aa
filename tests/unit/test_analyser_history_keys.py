"""The history's key tables: older samples hold ids of keys held once per history.

Each item section of a history has a ``KeyTable`` (each key once, with a small id) and each
slim sample a ``KeyIndex`` (the row of each id), shared with the sample before when the keys
are the same. These tests check, on random histories whose keys come, go and come back, that
every lookup equals the one on the whole snapshots, also through a window taken rounds before
(its keys stay held while it lives); that a table holds only the keys of the indexes alive;
and that the history counts its bytes once per structure, within ``max_bytes``, and not under
what Python really holds (``tracemalloc``).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import history
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

S = pb.Section
RELIDS = range(1, 7)
STATEMENT_KEYS = [(q, t) for q in (11, 12, 2**62 + 13) for t in (None, True, False)]
TABLE_NUMBERS = [f for f in history.KEPT["tables"] if f != "reloptions"]

_table = st.tuples(st.sampled_from(RELIDS), st.integers(0, 2**40),
                   st.sampled_from([0.0, -1.0, 1e6]),
                   st.sampled_from([{}, {}, {"fillfactor": "70"}]))
_statement = st.tuples(st.sampled_from(STATEMENT_KEYS), st.integers(0, 2**33),
                       st.floats(0, 1e9, allow_nan=False))
_round = st.fixed_dictionaries({
    # Keys drawn from a small set: they appear, vanish and come back; rarely twice in one
    # round (never sent, but read as a dict would: the last one wins).
    "tables": st.lists(_table, max_size=7),
    "statements": st.lists(_statement, max_size=7),
    "missing": st.sampled_from([(), (), (), (S.SECTION_TABLES,), (S.SECTION_STATEMENTS,)]),
    "gap": st.sampled_from([1.0, 10.0, 100.0]),
})


def _snapshots(rounds: Sequence[dict[str, Any]]) -> list[pb.Snapshot]:
    out, at = [], 0.0
    for n, drawn in enumerate(rounds):
        at += drawn["gap"]
        tables = []
        for relid, number, reltuples, options in drawn["tables"]:
            table = build.table(relid, f"t{relid}", seq_scan=number, n_tup_upd=number // 7,
                                n_live_tup=relid, reltuples=reltuples)
            table.reloptions.update(options)
            tables.append(table)
        statements = []
        for (queryid, toplevel), calls, spent in drawn["statements"]:
            stmt = pb.StatementStats(queryid=queryid, userid=10, dbid=build.DATID, calls=calls,
                                     total_exec_time_ms=spent, rows=calls // 3)
            if toplevel is not None:
                stmt.toplevel = toplevel
            statements.append(stmt)
        sections = [s for s in build.ALL_SECTIONS if s not in drawn["missing"]]
        out.append(build.snapshot(at, seq=n + 1, sections=sections, tables=tables,
                                  statements=statements))
    return out


def _same(compact: Mapping[Any, Any], whole: Mapping[Any, Any], universe: Sequence[Any],
          numbers: Sequence[str], maps: Sequence[str] = ()) -> None:
    """The compact mapping reads like the dict of messages, key by key and field by field."""
    # The same keys in another order share the index of the sample before, and its order
    # (as before key tables): the order of iteration is not part of what is kept.
    assert sorted(compact, key=repr) == sorted(whole, key=repr)
    assert len(compact) == len(whole)
    for key in universe:
        assert (key in compact) == (key in whole)
        got, want = compact.get(key), whole.get(key)
        assert (got is None) == (want is None)
        if want is None:
            continue
        assert [getattr(got, f) for f in numbers] == [getattr(want, f) for f in numbers]
        assert [dict(getattr(got, f)) for f in maps] == [dict(getattr(want, f)) for f in maps]
        assert [getattr(compact[key], f) for f in numbers] == [getattr(want, f) for f in numbers]
    if isinstance(compact, history.Columns):
        assert compact.having(universe) == [k for k in universe if k in whole]
    if whole and isinstance(compact, history.Columns):
        read = compact.reader(numbers)
        assert [read(k) for k in whole] == [tuple(getattr(whole[k], f) for f in numbers)
                                            for k in whole]


def _statement_universe() -> list[history.StatementKey]:
    return [(q, 10, build.DATID, t) for q, t in STATEMENT_KEYS]


def _check_window(window: history.Window, whole: Mapping[Any, history.Sample]) -> None:
    for sample in window.samples:
        reference = whole[sample.collected_at]
        _same(sample.tables, reference.tables, RELIDS, TABLE_NUMBERS, ("reloptions",))
        _same(sample.statements, reference.statements, _statement_universe(),
              history.KEPT["statements"])


def _live_keys(samples: Sequence[history.Sample], name: str) -> set[Any]:
    return {key for s in samples if s.slim for key in getattr(s, name)}


def _check_tables(hist: history.History) -> None:
    """Each table holds exactly the keys of the slim samples, once, each with its own id, and
    counts their bytes as a recount does."""
    for name in ("tables", "indexes", "statements"):
        table = hist.keys[name]
        table.collect()
        assert set(table.ids) == _live_keys(hist.samples, name), name
        assert len(set(table.ids.values())) == len(table.ids)
        assert all(table.keys[i] == k for k, i in table.ids.items())
        assert table.key_bytes == sum(history._deep_size(k) + history._deep_size(i)
                                      for k, i in table.ids.items())


def _distinct_bytes(hist: history.History) -> int:
    """The bytes of the history's distinct structures, found by walking it."""
    indexes: dict[int, history.KeyIndex[Any]] = {}
    for sample in hist.samples:
        for name in ("tables", "indexes", "statements"):
            columns = getattr(sample, name)
            if isinstance(columns, history.Columns):
                indexes.setdefault(id(columns.index), columns.index)
    return (sum(s.size for s in hist.samples) + sum(i.nbytes for i in indexes.values())
            + sum(t.nbytes for t in hist.keys.values()) + hist.view_bytes)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_round, min_size=1, max_size=14), max_samples=st.integers(6, 9),
       keep_window_at=st.integers(0, 13))
def test_lookups_with_churning_keys_equal_those_of_whole_snapshots(
        rounds: list[dict[str, Any]], max_samples: int, keep_window_at: int) -> None:
    snaps = _snapshots(rounds)
    whole = {s.collected_at: s for s in map(history.Sample, snaps)}
    hist = history.History(retention=10_000, max_samples=max_samples)
    kept: history.Window | None = None
    for n, snap in enumerate(snaps):
        hist.add(history.Sample(snap))
        _check_window(hist.window(), whole)
        if n == keep_window_at:
            kept = hist.window()  # a detector holding an older window: it still reads right
    if kept is not None:
        _check_window(kept, whole)
        for name in ("tables", "statements"):
            assert _live_keys(kept.samples, name) <= set(hist.keys[name].ids)
        del kept
    _check_tables(hist)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_round, min_size=1, max_size=14), max_samples=st.integers(6, 9),
       max_bytes=st.integers(0, 80_000))
def test_key_tables_hold_only_live_keys_and_bytes_are_counted_once(
        rounds: list[dict[str, Any]], max_samples: int, max_bytes: int) -> None:
    hist = history.History(retention=10_000, max_samples=max_samples, max_bytes=max_bytes)
    for snap in _snapshots(rounds):
        hist.add(history.Sample(snap))
        _check_tables(hist)
        assert hist.nbytes == _distinct_bytes(hist) == hist.sample_bytes + hist.view_bytes
        assert hist.sample_bytes <= max_bytes or len(hist.samples) <= 2


def _many(at: float, seq: int, relids: Sequence[int], queryids: Sequence[int]) -> pb.Snapshot:
    tables = [build.table(r, f"table_{r}", seq_scan=r * seq, n_tup_ins=r + seq,
                          n_live_tup=r * 10, n_dead_tup=seq, reltuples=r * 10.0)
              for r in relids]
    stmts = [pb.StatementStats(queryid=q, userid=10, dbid=build.DATID, calls=q % 9_973 * seq,
                               total_exec_time_ms=q % 7 * 1.5, rows=q % 99, toplevel=True)
             for q in queryids]
    return build.snapshot(at, seq=seq, tables=tables, statements=stmts)


def _churning(rounds: int, keys: int, churn: float) -> list[bytes]:
    """Serialized snapshots whose statements change by ``churn`` each round (from a pool of
    twice as many, so they come back), the tables staying the same."""
    pool = [2**62 + 7919 * n for n in range(2 * keys)]
    step = int(keys * churn)
    return [_many(10.0 * n, n + 1, range(1, keys + 1),
                  [pool[(n * step + i) % len(pool)] for i in range(keys)]).SerializeToString()
            for n in range(rounds)]


def test_the_history_counts_at_least_what_python_holds() -> None:
    raws = _churning(30, 1_500, 0.2)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        hist = history.History(retention=10_000, max_bytes=2**40)
        for raw in raws:
            hist.add(history.Sample(pb.Snapshot.FromString(raw)))
        del raw
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(hist.samples) == 30
    assert len(hist.keys["statements"]) > 1_500  # the statements did change
    # Not under what Python holds (the protobuf snapshots are C memory, counted serialized),
    # and not far over: MAX_BYTES binds near the real size.
    assert traced <= hist.nbytes <= 1.5 * traced


def test_a_new_index_of_changed_keys_holds_ids_not_keys() -> None:
    hist = history.History(retention=10_000)
    queryids = list(range(2**62, 2**62 + 2_000))
    for n in range(4):
        changed = queryids[n * 400:] + queryids[:n * 400][::-1]  # the same set, reordered
        if n == 3:
            changed = changed[:1_600] + list(range(2**61, 2**61 + 400))  # 400 new ones
        hist.add(history.Sample(_many(10.0 * n, n + 1, range(1, 2_001), changed)))
    hist.add(history.Sample(_many(40.0, 5, range(1, 2_001), queryids)))
    older = [s.statements for s in hist.samples[:-1]]
    assert all(isinstance(c, history.Columns) for c in older)
    indexes = [c.index for c in older if isinstance(c, history.Columns)]
    # The same keys in another order share the index; changed keys get a new one of ids.
    assert indexes[1] is indexes[0] and indexes[2] is indexes[0]
    assert indexes[3] is not indexes[0]
    assert indexes[3].nbytes < 2_000 * 8 + 1_000  # 2 bytes of id and of row per key
    table = hist.keys["statements"]
    assert len(table) == 2_400  # each key once, whatever the samples holding it
    assert older[3][(2**61 + 5, 10, build.DATID, True)].calls == (2**61 + 5) % 9_973 * 4
    assert (2**61 + 5, 10, build.DATID, True) not in older[2]
    assert older[2][(2**62 + 5, 10, build.DATID, True)].calls == (2**62 + 5) % 9_973 * 3
    # A history counts each index and each table once: what it holds beside the samples.
    shared = _distinct_bytes(hist) - sum(s.size for s in hist.samples)
    assert hist.nbytes == _distinct_bytes(hist)
    assert shared < (sum(i.nbytes for i in indexes) + sum(t.nbytes for t in hist.keys.values())
                     + hist.view_bytes)
