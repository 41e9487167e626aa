"""The analyser's fast paths give exactly what the plain definitions give (issue 19, item 4).

``Window.statement_deltas`` decides eviction once per base time instead of once per entry,
and ``_item_deltas`` reads every counter of an item in one call; ``duplicate_index`` looks
only at the tables of a catalog where one index covers another, found once per catalog. Each
is compared here, on random histories and catalogs, with a reference written the slow,
obvious way from the rules in analyser/history.py's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import findings, history
from startupmonkey.analyser.detectors import indexes
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

FIELDS = ("calls", "total_exec_time_ms", "rows")
QUERYIDS = (1, 2, 3, 4)


# ---- statement deltas: the reference ---------------------------------------------------------

def _reference_deltas(window: history.Window, fields: Sequence[str], over: float | None,
                      longest: bool = False) -> dict[history.StatementKey, history.Delta]:
    """The rules, one entry at a time: the newest earlier sample of the same series that has
    the entry (and is ``over`` seconds back) is its base; a counter that went down, or an entry
    that may have been evicted and re-created in between, gives no delta. ``longest``: an
    entry with no delta so (and a sample ``over`` back exists) takes the first valid one of
    the younger samples that have it, oldest first."""
    section = pb.SECTION_STATEMENTS
    latest = window.latest
    if latest.stmt_epoch is history.UNKNOWN or not latest.present(section):
        return {}
    now = latest.time_of(section)
    series: list[history.Sample] = []
    for sample in window.behind():
        if sample.stmt_epoch is history.UNKNOWN or not sample.present(section):
            continue
        if sample.stmt_epoch != latest.stmt_epoch:
            break
        series.append(sample)
    def old_enough(sample: history.Sample) -> bool:
        return over is None or (now - sample.time_of(section)).total_seconds() >= over

    def delta(key: history.StatementKey, entry: pb.StatementStats, base: history.Sample
              ) -> history.Delta | None:
        seconds = (now - base.time_of(section)).total_seconds()
        old = base.statements[key]
        values = {f: float(getattr(entry, f)) - float(getattr(old, f)) for f in fields}
        if seconds <= 0 or any(v < 0 for v in values.values()):
            return None
        since = base.time_of(section)
        if entry.HasField("stats_since") and findings.when(entry.stats_since) > since:
            return None
        between = [s for s in window.behind() if s.present(section)
                   and s.time_of(section) >= since]
        if (between and between[-1].dealloc != latest.dealloc
                and any(key not in s.statements for s in between)):
            return None
        return history.Delta(values, seconds, since)

    completes = longest and over is not None and any(old_enough(s) for s in series)
    out = {}
    for key, entry in latest.statements.items():
        base = next((s for s in series if key in s.statements and old_enough(s)), None)
        found = delta(key, entry, base) if base is not None else None
        younger = [s for s in reversed(series) if not old_enough(s) and key in s.statements]
        for base in younger if completes and found is None else []:
            found = delta(key, entry, base)
            if found is not None:
                break
        if found is not None:
            out[key] = found
    return out


_entry = st.fixed_dictionaries({
    "present": st.integers(0, 3).map(bool),  # absent one round in four
    "calls": st.integers(0, 3), "time": st.floats(0, 5), "rows": st.integers(-1, 3),
    "recreated": st.booleans(),
})
_round = st.fixed_dictionaries({
    "gap": st.sampled_from([1.0, 2.0, 5.0, 10.0]),
    "entries": st.tuples(*(_entry for _ in QUERYIDS)),
    # Rarely enough that an entry absent from an old sample and present since (the base
    # ``longest`` looks for) is often left with a valid delta.
    "dealloc_grows": st.integers(0, 4).map(lambda n: n == 0),
    "reset": st.integers(0, 12),
    "statements_missing": st.integers(0, 7),
    "pg17": st.booleans(),
})


def _history(rounds: Sequence[Mapping[str, Any]]) -> history.History:
    """Snapshots from the drawn rounds: each entry's counters grow by what was drawn (rows may
    go down: a new series for that entry), entries may be absent (not sent, or evicted when
    dealloc grew), a PG17 entry may say it was re-created, the statements section may be
    missing and pg_stat_statements may be reset."""
    hist = history.History(retention=10_000)
    totals = {q: [0, 0.0, 0] for q in QUERYIDS}
    created = {q: 0.0 for q in QUERYIDS}
    at, dealloc, reset = 0.0, 0, 0
    for n, drawn in enumerate(rounds):
        at += drawn["gap"]
        dealloc += drawn["dealloc_grows"]
        reset += drawn["reset"] == 0
        stmts = []
        for queryid, entry in zip(QUERYIDS, drawn["entries"], strict=True):
            total = totals[queryid]
            total[0] += entry["calls"]
            total[1] += entry["time"]
            total[2] = max(0, total[2] + entry["rows"])
            if entry["recreated"] and drawn["pg17"]:
                created[queryid] = at - drawn["gap"] / 2
            if not entry["present"]:
                continue
            stmt = pb.StatementStats(queryid=queryid, userid=10, dbid=build.DATID,
                                     calls=total[0], total_exec_time_ms=total[1], rows=total[2])
            if drawn["pg17"]:
                stmt.stats_since.CopyFrom(build.ts(created[queryid]))
            stmts.append(stmt)
        sections = [s for s in build.ALL_SECTIONS
                    if s != pb.SECTION_STATEMENTS or drawn["statements_missing"] or n == 0]
        snap = build.snapshot(at, seq=n + 1, sections=sections, statements=stmts)
        snap.statements_info.dealloc = dealloc
        snap.statements_info.stats_reset.CopyFrom(build.ts(float(reset)))
        hist.add(history.Sample(snap))
    return hist


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_round, min_size=1, max_size=12),
       over=st.sampled_from([None, 0.0, 3.0, 10.0, 30.0]), longest=st.booleans())
def test_statement_deltas_are_the_rules_applied_entry_by_entry(
        rounds: list[dict[str, Any]], over: float | None, longest: bool) -> None:
    window = _history(rounds).window()
    expected = _reference_deltas(window, FIELDS, over, longest)
    assert window.statement_deltas(FIELDS, over, longest=longest) == expected
    # A second call on the same window (the eviction answers are kept per base time) agrees.
    assert window.statement_deltas(FIELDS, over, longest=longest) == expected


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(-3, 5), st.integers(0, 5)), min_size=1,
                      max_size=8),
       over=st.sampled_from([None, 10.0, 25.0]))
def test_table_deltas_match_the_counter_by_counter_difference(
        steps: list[tuple[int, int]], over: float | None) -> None:
    """One table whose counters move by the drawn steps (a step below zero: a new series)."""
    snaps, ins, upd = [], 100, 100
    for n, (d_ins, d_upd) in enumerate([(0, 0), *steps]):
        ins, upd = ins + d_ins, upd + d_upd
        snaps.append(build.snapshot(n * 10.0, seq=n + 1, tables=[
            build.table(1, "orders", n_tup_ins=ins, n_tup_upd=upd)]))
    window = build.window(*snaps)
    fields = ("n_tup_ins", "n_tup_upd")
    got = window.table_deltas(fields, over)
    newest = window.latest.tables[1]
    want = {}
    for sample in window.behind():
        if over is not None and (window.now - sample.collected_at).total_seconds() < over:
            continue
        old = sample.tables[1]
        values = {f: float(getattr(newest, f)) - float(getattr(old, f)) for f in fields}
        if all(v >= 0 for v in values.values()):
            want[1] = history.Delta(values, (window.now - sample.collected_at).total_seconds(),
                                    sample.collected_at)
        break
    assert got == want


@settings(max_examples=200, deadline=None)
@given(rounds=st.lists(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 40)), max_size=6),
                       min_size=1, max_size=6),
       only=st.sets(st.integers(0, 7)), over=st.sampled_from([None, 10.0, 25.0]))
def test_table_deltas_of_only_some_tables_are_those_of_every_table_kept_to_them(
        rounds: list[list[tuple[int, int]]], only: set[int], over: float | None) -> None:
    """``missing_index`` asks for the deltas of the tables a statement wants an index on
    only; they must be exactly every table's deltas kept to those tables."""
    snaps = []
    for n, tables in enumerate(rounds):
        by_relid = dict(tables)  # tables come and go between rounds; counters move freely
        snaps.append(build.snapshot(n * 10.0, seq=n + 1, tables=[
            build.table(relid, f"t{relid}", n_tup_ins=ins, n_tup_upd=ins // 2)
            for relid, ins in sorted(by_relid.items())]))
    window = build.window(*snaps)
    fields = ("n_tup_ins", "n_tup_upd")
    every = window.table_deltas(fields, over)
    assert window.table_deltas(fields, over, only=only) == {
        relid: delta for relid, delta in every.items() if relid in only}


# ---- duplicate_index: only the tables where one index covers another --------------------------

_index = st.fixed_dictionaries({
    "table": st.integers(1, 4),
    "keys": st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True),
    "unique": st.booleans(), "primary": st.booleans(), "method": st.sampled_from(
        ["btree", "btree", "hash"]),
    "predicate": st.sampled_from(["", "", "(a > 0)"]),
})


def _catalog(drawn: Sequence[Mapping[str, Any]], hash_: str) -> pb.Catalog:
    defs = [build.index_def(100 + n, d["table"], f"i{n}", d["keys"], unique=d["unique"],
                            primary=d["primary"] and d["unique"], method=d["method"],
                            predicate=d["predicate"])
            for n, d in enumerate(drawn)]
    relations = [pb.Relation(relid=r, schema="public", name=f"t{r}", relkind="r",
                             replica_identity="d") for r in range(1, 5)]
    return build.catalog(defs, relations=relations, hash_=hash_)


def _every_table(window: history.Window) -> list[tuple[str, str]]:
    """The reference: ``_redundant`` on every table of the catalog, as before the fast path."""
    assert window.catalog is not None
    scans = {relid: i.idx_scan for relid, i in window.latest.indexes.items()}
    by_table: dict[int, list[pb.IndexDef]] = {}
    for d in window.catalog.indexes:
        if d.valid and d.live and not d.partitioned:
            by_table.setdefault(d.relid, []).append(d)
    return [(small.name, big.name) for _, defs in sorted(by_table.items())
            for small, big in indexes._redundant(defs, scans)]


def _flagged(window: history.Window) -> list[tuple[str, str]]:
    found = indexes.duplicate_index(window, build.limits())
    return [(f.target_key.rsplit(".", 1)[-1], str(f.evidence["duplicate_of"]).rsplit(".", 1)[-1])
            for f in found]


@settings(max_examples=300, deadline=None)
@given(drawn=st.lists(_index, max_size=10),
       scans=st.lists(st.integers(0, 3), min_size=10, max_size=10))
def test_duplicate_index_flags_what_comparing_every_table_flags(
        drawn: list[dict[str, Any]], scans: list[int]) -> None:
    stats = [build.index(100 + n, d["table"], f"i{n}", idx_scan=scans[n])
             for n, d in enumerate(drawn)]
    window = build.window(build.snapshot(0, catalog=_catalog(drawn, "c1"), indexes=stats))
    assert _flagged(window) == _every_table(window)


def test_a_new_catalog_is_looked_at_again_and_the_scans_still_choose_the_twin() -> None:
    """The per-catalog result is not reused across catalogs, and which of two twins is kept
    still follows the newest scan counts (they are not part of what is kept per catalog)."""
    hist = history.History()
    one = [{"table": 1, "keys": [1], "unique": False, "primary": False, "method": "btree",
            "predicate": ""}]
    hist.add(history.Sample(build.snapshot(0, catalog=_catalog(one, "c1"))))
    assert _flagged(hist.window()) == []
    twins = [*one, *one]
    snap = build.snapshot(10, catalog=_catalog(twins, "c2"), indexes=[
        build.index(100, 1, "i0", idx_scan=5), build.index(101, 1, "i1", idx_scan=0)])
    hist.add(history.Sample(snap))
    assert _flagged(hist.window()) == [("i1", "i0")]
    snap = build.snapshot(20, indexes=[build.index(100, 1, "i0", idx_scan=5),
                                       build.index(101, 1, "i1", idx_scan=50)])
    snap.catalog_hash = "c2"
    hist.add(history.Sample(snap))
    assert _flagged(hist.window()) == [("i0", "i1")]


def test_from_catalog_keeps_one_result_per_catalog() -> None:
    calls: list[str] = []

    def compute(catalog: pb.Catalog) -> str:
        calls.append(catalog.hash)
        return catalog.hash

    hist = history.History()
    hist.add(history.Sample(build.snapshot(0, catalog=build.catalog(hash_="c1"))))
    assert hist.window().from_catalog("x", compute) == "c1"
    assert hist.window().from_catalog("x", compute) == "c1"
    hist.add(history.Sample(build.snapshot(10, catalog=build.catalog(hash_="c2"))))
    assert hist.window().from_catalog("x", compute) == "c2"
    assert calls == ["c1", "c2"]


def test_a_complete_catalog_after_a_cut_one_of_the_same_hash_is_read_again() -> None:
    """The transport may cut the catalog (``snapshots.split`` keeps its hash, marks it
    TRUNCATED); what was computed once per catalog from the cut one must not outlive it when
    the complete one comes: an unused index whose definition the cut catalog lacked is found."""
    big = 50 * 1024 * 1024
    used = [build.index(10, 1, "orders_note_idx", size_bytes=big)]
    cut = build.catalog([], hash_="H")
    full = build.catalog([build.index_def(10, 1, "orders_note_idx", [4])], hash_="H")
    limits = build.limits(unused_index={"minAge": "60s", "minSize": "1Mi"})
    held = history.History()
    held.add(history.Sample(build.snapshot(0, seq=1, indexes=used, stats_reset=-86_400,
                                           catalog=cut, truncated=[pb.SECTION_CATALOG])))
    indexes.invalid_index(held.window(), limits)  # computes the definitions of the cut one
    held.add(history.Sample(build.snapshot(61, seq=2, indexes=used, stats_reset=-86_400,
                                           catalog=full)))
    window = held.window()
    assert window.catalog_complete
    assert [f.target.index for f in indexes.unused_index(window, limits)] == ["orders_note_idx"]
