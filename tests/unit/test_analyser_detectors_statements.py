"""slow_statement and missing_index on hand-built snapshots: each fires on the problem and
stays quiet on its healthy twins (a served query, a low-selectivity filter, a small table,
scans that stop early, fast statements)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client
import pytest

from startupmonkey import settings
from startupmonkey.analyser import engine, findings, history, metrics, sqlparse
from startupmonkey.analyser.detectors import statements
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

COLUMNS = ["id", "customer_id", "status", "created_at", "total"]
DEFAULTS = build.limits()


@dataclasses.dataclass(frozen=True)
class Load:
    """One statement's steady workload."""

    queryid: int
    text: str
    calls_per_s: float = 10.0
    mean_ms: float = 50.0
    rows_per_call: float = 1.0


def catalog(indexes: Iterable[pb.IndexDef] = (), rows: str = "orders") -> pb.Catalog:
    cat = pb.Catalog(hash=f"cat-{rows}-{len(list(indexes))}")
    cat.relations.add(relid=1, schema="public", name=rows, relkind="r")
    for attnum, name in enumerate(COLUMNS, start=1):
        cat.columns.add(relid=1, attnum=attnum, name=name)
    cat.indexes.extend(indexes)
    return cat


def index_on(*columns: str, method: str = "btree", **fields: Any) -> pb.IndexDef:
    keys = [COLUMNS.index(c) + 1 for c in columns]
    return build.index_def(10 + len(columns), 1, f"orders_{'_'.join(columns)}_idx", keys,
                           key_columns=list(columns), method=method, **fields)


def orders(t: float, *, seq_per_s: float = 10.0, reltuples: float = 100_000.0,
           scan_rows: float | None = None, writes_per_s: float = 0.0) -> pb.TableStats:
    scanned = reltuples if scan_rows is None else scan_rows
    return build.table(1, "orders", reltuples=reltuples, n_live_tup=int(reltuples),
                       seq_scan=int(seq_per_s * t), seq_tup_read=int(seq_per_s * t * scanned),
                       n_tup_ins=int(writes_per_s * t), table_bytes=8_000_000)


def stats(t: float, loads: Iterable[Load], mean_factor: float = 1.0) -> list[pb.StatementStats]:
    return [pb.StatementStats(queryid=w.queryid, userid=10, dbid=build.DATID, toplevel=True,
                              calls=int(w.calls_per_s * t),
                              total_exec_time_ms=w.calls_per_s * t * w.mean_ms * mean_factor,
                              rows=int(w.calls_per_s * t * w.rows_per_call)) for w in loads]


def window(loads: Sequence[Load], times: Sequence[float] = (0, 30, 60),
           indexes: Iterable[pb.IndexDef] = (), texts: bool = True,
           **table: Any) -> history.Window:
    cat = catalog(list(indexes))
    snaps = [build.snapshot(t, seq=n + 1, tables=[orders(t, **table)],
                            statements=stats(t, loads), catalog=cat)
             for n, t in enumerate(times)]
    held = {w.queryid: pb.StatementText(queryid=w.queryid, text=w.text) for w in loads}
    return build.window(*snaps, retention=3600, texts=held if texts else {})


POINT = Load(101, "SELECT * FROM orders WHERE customer_id = $1")


# ---- missing_index


def test_hot_point_query_on_an_unindexed_column() -> None:
    [finding] = statements.missing_index(window([POINT]), DEFAULTS)
    assert finding.detector is DetectorId.MISSING_INDEX
    assert finding.action is ActionId.CREATE_INDEX
    assert finding.target.schema_ == "public" and finding.target.table == "orders"
    assert finding.target.columns == ["customer_id"]
    assert finding.target.queryids == ["101"]
    assert finding.target_key == "public.orders(customer_id)"
    evidence = finding.evidence
    assert evidence["statement_time_per_s"] == pytest.approx(0.5)
    assert evidence["selectivity"] == pytest.approx(1e-5)
    assert evidence["seq_scans_per_s"] == pytest.approx(10.0)
    assert evidence["rows_per_seq_scan"] == 100_000
    assert evidence["statement_1"] == POINT.text
    assert evidence["statement_1_queryid"] == "101"
    assert evidence["statement_1_time_per_s"] == pytest.approx(0.5)  # 10 calls/s x 50 ms
    assert float(evidence["statement_1_time_per_s"] or 0) > 0
    assert evidence["existing_indexes"] == 0 and evidence["writes_per_s"] == 0
    # Benefit in time saved: nearly all of it at this selectivity.
    assert 0.49 < float(evidence["estimated_saving_s_per_s"] or 0) <= 0.5
    # The message a consumer reads is valid and small.
    detection = messages.Detection(
        id="0123456789abcdef", key="k/m/missing_index/x", namespace="n", monitor="m",
        database="d", detector=finding.detector, proposed_action=finding.action,
        risk_class=RiskClass.DDL, target=finding.target, summary=finding.summary,
        evidence=dict(finding.evidence), first_seen=build.T0, last_seen=build.T0,
        published_at=build.T0)
    assert len(detection.encode()) < 3000


def test_the_before_figure_of_keep_or_revert_travels_in_the_evidence() -> None:
    # The executor builds at once and compares its after window with this window (issue 17).
    other = Load(102, "SELECT total FROM orders WHERE customer_id = $1 AND status = $2",
                 calls_per_s=5.0, mean_ms=20.0)
    [finding] = statements.missing_index(window([POINT, other]), DEFAULTS)
    evidence = finding.evidence
    assert sorted(finding.target.queryids) == ["101", "102"]
    # 60 s of 10 calls/s at 50 ms and 5 calls/s at 20 ms.
    assert evidence["before_calls"] == 900
    assert evidence["before_total_ms"] == pytest.approx(600 * 50.0 + 300 * 20.0)
    assert evidence["before_mean_ms"] == pytest.approx(36_000 / 900, abs=1e-3)
    assert evidence["before_window_s"] == pytest.approx(60.0)
    assert list(evidence).index("before_mean_ms") < 62  # kept by the executor's first 63


def test_write_rate_is_noted_as_a_cost() -> None:
    [finding] = statements.missing_index(window([POINT], writes_per_s=25.0), DEFAULTS)
    assert finding.evidence["writes_per_s"] == pytest.approx(25.0)
    assert finding.evidence["inserts_per_s"] == pytest.approx(25.0)
    assert "writes: 25.0 rows/s" in finding.summary


def test_two_column_candidate_equality_before_range() -> None:
    load = Load(102, "SELECT * FROM orders WHERE created_at > $1 AND status = $2")
    [finding] = statements.missing_index(window([load]), DEFAULTS)
    assert finding.target.columns == ["status", "created_at"]
    assert finding.evidence["predicate"] == "equality+range"
    assert finding.evidence["equality_columns"] == 1 and finding.evidence["limited"] is False


def test_parallel_seq_scans_count_once_per_statement() -> None:
    # 10 calls/s, each a parallel scan by a leader and 3 workers: seq_scan grows by 4 a
    # call and each participant reads a quarter of the 20,000 rows (issue 17.2).
    [finding] = statements.missing_index(
        window([POINT], seq_per_s=40.0, reltuples=20_000.0, scan_rows=5_000.0), DEFAULTS)
    assert finding.evidence["seq_scans_per_s"] == pytest.approx(10.0)
    assert finding.evidence["seq_scans_per_worker_per_s"] == pytest.approx(40.0)
    assert finding.evidence["rows_per_seq_scan"] == 20_000  # the whole table, not a quarter
    assert "10.0 seq scans/s of ~20000 rows" in finding.summary


def test_order_by_limit_candidate_and_what_the_executor_needs_to_judge_it() -> None:
    top = Load(105, "SELECT * FROM orders WHERE status = $1 ORDER BY created_at DESC LIMIT $2",
               rows_per_call=20.0)
    [finding] = statements.missing_index(window([top]), DEFAULTS)
    assert finding.target.columns == ["status", "created_at"]
    evidence = finding.evidence
    assert evidence["predicate"] == "equality+order"
    assert evidence["equality_columns"] == 1 and evidence["limited"] is True
    assert evidence["candidates"] == "(status, created_at)"
    assert "serves 0.500s per second" in str(evidence["candidate_choice"])


def test_a_range_and_an_order_column_name_both_keys() -> None:
    both = Load(106, "SELECT * FROM orders WHERE status = $1 AND total > $2 "
                "ORDER BY created_at LIMIT $3")
    [finding] = statements.missing_index(window([both]), DEFAULTS)
    assert finding.target.columns == ["status", "total"]
    evidence = finding.evidence
    assert evidence["candidates"] == "(status, total) | (status, created_at)"
    assert evidence["candidate_keys"] == '[["status", "total"], ["status", "created_at"]]'
    assert evidence["limited"] is False and evidence["equality_columns"] == 1
    assert "HypoPG" in str(evidence["candidate_choice"])


def test_one_index_serves_several_statements_busiest_column_first() -> None:
    both = Load(103, "SELECT * FROM orders WHERE status = $1 AND customer_id = $2",
                calls_per_s=2)
    single = Load(104, "SELECT * FROM orders WHERE customer_id = $1", calls_per_s=8)
    [finding] = statements.missing_index(window([both, single]), DEFAULTS)
    # customer_id carries more statement time, so it leads and the index serves both.
    assert finding.target.columns == ["customer_id", "status"]
    assert sorted(finding.target.queryids) == ["103", "104"]
    assert finding.evidence["statements"] == 2


def test_join_on_an_unindexed_foreign_key() -> None:
    load = Load(105, "SELECT o.* FROM customers c JOIN orders o ON o.customer_id = c.id "
                "WHERE c.email = $1", rows_per_call=5)
    [finding] = statements.missing_index(window([load]), DEFAULTS)
    assert finding.target.columns == ["customer_id"]
    assert finding.evidence["predicate"] == "join"


def test_unknown_selectivity_is_left_to_the_executors_precheck() -> None:
    load = Load(106, "SELECT count(*) FROM orders WHERE status = $1")
    [finding] = statements.missing_index(window([load]), DEFAULTS)
    assert finding.evidence["selectivity_known"] is False
    assert finding.evidence["selectivity"] is None


@pytest.mark.parametrize("case", ["btree", "hash", "second-column", "range-leading"])
def test_a_query_already_served_by_an_index_gets_nothing(case: str) -> None:
    load = Load(107, "SELECT * FROM orders WHERE status = $1 AND created_at > $2")
    index = {"btree": index_on("status"), "hash": index_on("status", method="hash"),
             "second-column": index_on("created_at", "total"),
             "range-leading": index_on("created_at")}[case]
    assert statements.missing_index(window([load], indexes=[index]), DEFAULTS) == []


def test_an_index_that_cannot_serve_does_not_count() -> None:
    invalid = index_on("customer_id", valid=False)
    later = index_on("status", "customer_id")  # customer_id is not its leading column
    [finding] = statements.missing_index(window([POINT], indexes=[invalid, later]), DEFAULTS)
    assert finding.target.columns == ["customer_id"]
    assert finding.evidence["existing_indexes"] == 2


def test_a_partial_index_does_not_count_as_serving() -> None:
    # Usable only when the statement's WHERE implies "total > 0", which
    # "customer_id = $1" does not: the candidate stands.
    partial = index_on("customer_id", has_predicate=True, predicate="(total > 0)")
    [finding] = statements.missing_index(window([POINT], indexes=[partial]), DEFAULTS)
    assert finding.target.columns == ["customer_id"]
    assert finding.evidence["existing_indexes"] == 1
    # The same index without its predicate serves the statement.
    whole = index_on("customer_id")
    assert statements.missing_index(window([POINT], indexes=[whole]), DEFAULTS) == []


def test_low_selectivity_filter_gets_nothing() -> None:
    wide = Load(108, "SELECT id FROM orders WHERE status = $1", rows_per_call=30_000)
    assert statements.missing_index(window([wide]), DEFAULTS) == []
    relaxed = build.limits(missing_index={"maxSelectivity": 0.5})
    assert len(statements.missing_index(window([wide]), relaxed)) == 1


def test_small_tables_and_cheap_scans_get_nothing() -> None:
    assert statements.missing_index(window([POINT], reltuples=2_000.0), DEFAULTS) == []
    # Seq scans that stop early (LIMIT) read few rows: cheap, no index needed.
    assert statements.missing_index(window([POINT], scan_rows=50.0), DEFAULTS) == []
    # Too few seq scans per second.
    assert statements.missing_index(window([POINT], seq_per_s=0.1), DEFAULTS) == []
    # The statements spend too little time.
    quick = Load(109, POINT.text, calls_per_s=10, mean_ms=1)
    assert statements.missing_index(window([quick]), DEFAULTS) == []


def test_missing_texts_and_unparsable_statements_are_skipped() -> None:
    assert statements.missing_index(window([POINT], texts=False), DEFAULTS) == []
    broken = Load(110, "SELEC * FROM orders WHERE customer_id = $1 /* detector test */")
    assert statements.missing_index(window([broken, POINT]), DEFAULTS)[0].target.queryids == [
        "101"]


def test_missing_index_cannot_judge_without_history_catalog_or_statements() -> None:
    with pytest.raises(findings.NoData):
        statements.missing_index(window([POINT], times=(0,)), DEFAULTS)
    hist = history.History(retention=3600)
    for n, t in enumerate((0, 30)):
        hist.add(history.Sample(build.snapshot(t, seq=n + 1, tables=[orders(t)],
                                               statements=stats(t, [POINT]))))
    with pytest.raises(findings.NoData):
        statements.missing_index(hist.window(), DEFAULTS)
    sections = [s for s in build.ALL_SECTIONS if s != pb.SECTION_STATEMENTS]
    no_statements = build.snapshot(0, sections=sections, catalog=catalog())
    hist = history.History()
    hist.add(history.Sample(no_statements))
    with pytest.raises(findings.NoData):
        statements.missing_index(hist.window(), DEFAULTS)


def test_index_budget_keeps_the_best_candidates() -> None:
    [finding] = statements.missing_index(window([POINT]), DEFAULTS)
    assert statements.within_budget([finding], 1) == [finding]
    assert statements.within_budget([finding], 0) == []
    full = dataclasses.replace(finding, evidence={**finding.evidence, "existing_indexes": 8})
    assert statements.within_budget([full], 8) == []


# ---- slow_statement

SLOW = Load(201, "SELECT pg_sleep($1)", calls_per_s=5, mean_ms=40)
FAST = Load(202, "SELECT * FROM orders WHERE id = $1", calls_per_s=100, mean_ms=0.1)


def test_slow_statement_fires_for_the_slow_one_only() -> None:
    found = statements.slow_statement(window([SLOW, FAST]), DEFAULTS)
    assert [f.target.queryids for f in found] == [["201"]]
    finding = found[0]
    assert finding.action is ActionId.ADVICE and finding.detector is DetectorId.SLOW_STATEMENT
    assert finding.target_key == "queryid=201"
    assert finding.evidence["mean_ms"] == pytest.approx(40.0)
    assert finding.evidence["calls"] == 300
    assert float(finding.evidence["share"] or 0) > 0.9
    assert finding.evidence["query"] == SLOW.text
    assert finding.evidence["regressed"] is False


def test_slow_statement_minimums() -> None:
    # Too few calls in the window (5 s of history).
    assert statements.slow_statement(window([SLOW], times=(0, 5)), DEFAULTS) == []
    # A small share of the database's time and no regression.
    busy = Load(203, "SELECT * FROM orders", calls_per_s=50, mean_ms=100)
    assert [f.target_key for f in statements.slow_statement(window([SLOW, busy]), DEFAULTS)
            ] == ["queryid=203"]
    limits = build.limits(slow_statement={"minMeanTime": "50ms"})
    assert statements.slow_statement(window([SLOW]), limits) == []


NEW_SLOW = Load(206, "SELECT pg_sleep($1)", calls_per_s=4, mean_ms=40)
"""At 4 calls a second, 20 s apart, no single interval reaches ``minCalls`` (default 100)."""


def _new_slow_window(*, evicted_before: bool) -> history.Window:
    """Rounds at 0, 20 .. 100 s; NEW_SLOW runs from t=30 on (its entry created then), and
    the window's oldest sample (t=0) either lacks it or holds an older incarnation of it
    with more calls (``evicted_before``: evicted at t=10, ``dealloc`` grew)."""
    snaps = []
    for n, t in enumerate((0, 20, 40, 60, 80, 100)):
        entries = stats(t, [FAST])
        if t >= 40:
            entries += stats(t - 30, [NEW_SLOW])
        elif t == 0 and evicted_before:
            entries += stats(500, [NEW_SLOW])
        snap = build.snapshot(t, seq=n + 1, statements=entries)
        snap.statements_info.dealloc = int(evicted_before and t > 0)
        snaps.append(snap)
    held = {w.queryid: pb.StatementText(queryid=w.queryid, text=w.text)
            for w in (NEW_SLOW, FAST)}
    return build.window(*snaps, retention=3600, texts=held)


@pytest.mark.parametrize("evicted_before", [False, True])
def test_a_statement_first_run_inside_the_window_is_judged_over_all_that_have_it(
        evicted_before: bool) -> None:
    """A slow statement that starts after the recent window's oldest sample (first run, or
    run again after an eviction) is judged over every sample that has it (60 s: 240 calls),
    not over the last interval only (80 calls, under ``minCalls``), where it stayed until
    the window's oldest sample had it: up to 5 minutes."""
    window_ = _new_slow_window(evicted_before=evicted_before)
    [finding] = statements.slow_statement(window_, DEFAULTS)
    assert finding.target_key == "queryid=206"
    assert finding.evidence["calls"] == 240  # from its first sample (t=40) on
    assert finding.evidence["window_s"] == pytest.approx(60.0)
    assert finding.evidence["mean_ms"] == pytest.approx(40.0)
    # Deltas over the window as such still need a sample that old with the entry.
    over = window_.statement_deltas(statements.FIELDS, over=100)
    assert [k[0] for k in over] == [FAST.queryid]


@pytest.mark.parametrize("oldest", [None, (10, 9900.0)])
def test_no_baseline_behind_a_window_that_needed_its_first_sample(
        oldest: tuple[int, float] | None) -> None:
    """Before PostgreSQL 17 an entry evicted and re-created between two reads may be in every
    read: its delta from the window's oldest sample then goes down, so the window starts at
    its first sample of the new incarnation (t=400); what lies behind is the old one, whose
    calls and times make no baseline (a 9.5x regression here; 95x when the oldest sample
    too has the old one, with counters below the new one's: a valid-looking delta)."""
    k_at = {100: (10, 9000.0), 200: (20, 18000.0), 300: (5000, 100000.0),
            400: (200, 10000.0), 500: (300, 15000.0), 600: (400, 20000.0)}
    if oldest is not None:
        k_at = {0: oldest, 100: (11, 9950.0), **{t: v for t, v in k_at.items() if t > 100}}
    snaps = []
    for n, t in enumerate(range(0, 700, 100)):
        entries = stats(t, [Load(302, "SELECT 2", calls_per_s=1000, mean_ms=1.0)])
        if t in k_at:
            calls, ms = k_at[t]
            entries.append(pb.StatementStats(queryid=301, userid=10, dbid=build.DATID,
                                             toplevel=True, calls=calls,
                                             total_exec_time_ms=ms, rows=calls))
        snap = build.snapshot(float(t), seq=n + 1, statements=entries)
        snap.statements_info.dealloc = int(t > 300)
        snaps.append(snap)
    window_ = build.window(*snaps, retention=3600)
    numbers = statements.recent(window_)
    assert numbers.stats[301].calls == 200 and numbers.stats[301].seconds == 200
    assert 301 not in numbers.baseline
    assert [f.target_key for f in statements.slow_statement(window_, DEFAULTS)] == []


def test_longest_tries_each_entry_once_after_a_cut_read(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """After a read the transport cut (entries left out, the section TRUNCATED) and a grown
    ``dealloc``, every entry it lacked is rejected from any older base as maybe evicted;
    ``longest`` skips the bases that would reject it (known from one pass over the reads)
    instead of diffing it against each: one eviction check more per entry, not one per
    entry and sample."""
    keys = range(1, 201)
    snaps = []
    for n in range(20):
        t = n * 10.0
        sent = keys if n != 8 else range(1, 51)
        snap = build.snapshot(t, seq=n + 1, statements=[
            pb.StatementStats(queryid=q, userid=10, dbid=build.DATID, toplevel=True,
                              calls=n * q, total_exec_time_ms=n * q * 1.0, rows=n)
            for q in sent], truncated=[pb.SECTION_STATEMENTS] if n == 8 else [])
        snap.statements_info.dealloc = int(n >= 18)
        snaps.append(snap)
    window_ = build.window(*snaps, retention=3600)
    checks = {"n": 0}
    maybe_evicted = history.Window._maybe_evicted

    def counted(self: history.Window, *args: Any) -> bool:
        checks["n"] += 1
        return maybe_evicted(self, *args)

    monkeypatch.setattr(history.Window, "_maybe_evicted", counted)
    plain = window_.statement_deltas(statements.FIELDS, over=190)
    plain_checks, checks["n"] = checks["n"], 0
    longest = window_.statement_deltas(statements.FIELDS, over=190, longest=True)
    assert len(plain) == 50 and len(longest) == 200
    # The 150 it lacked: from the first read after the cut (t=90), one check each.
    assert {d.since for k, d in longest.items() if k[0] > 50} == {build.at(90)}
    assert checks["n"] == plain_checks + 150


def test_table_deltas_over_the_longest_span_known_when_asked() -> None:
    """``longest``: a table created after the sample ``over`` back gets its delta from the
    oldest sample that has it; without it, none (what cache_hit_ratio wants)."""
    window_ = build.window(*[build.snapshot(t, seq=n + 1, tables=[
        build.table(1, "old", seq_scan=int(t)),
        *([build.table(2, "new", seq_scan=int(t - 20))] if t >= 40 else [])])
        for n, t in enumerate((0, 20, 40, 60, 80))], retention=3600)
    longest = window_.table_deltas(["seq_scan"], over=80, longest=True)
    assert {relid: (d["seq_scan"], d.seconds) for relid, d in longest.items()} == {
        1: (80, 80), 2: (40, 40)}
    assert list(window_.table_deltas(["seq_scan"], over=80)) == [1]


def test_a_regression_against_its_own_baseline() -> None:
    busy = Load(204, "SELECT * FROM orders", calls_per_s=50, mean_ms=100)
    slow = Load(205, "SELECT * FROM orders WHERE status = $1", calls_per_s=5, mean_ms=5)
    hist = history.History(retention=3600)
    times = (0, 300, 600, 900, 1200, 1500)
    for n, t in enumerate(times):
        # Steady at 5 ms for 20 minutes, then 30 ms per call in the last 5 minutes.
        regressed = stats(t, [slow])[0]
        if t > 1200:
            regressed.total_exec_time_ms += (t - 1200) * 5 * 25
        hist.add(history.Sample(build.snapshot(t, seq=n + 1, statements=[
            *stats(t, [busy]), regressed])))
    found = statements.slow_statement(hist.window(), DEFAULTS)
    [finding] = [f for f in found if f.target_key == "queryid=205"]
    assert finding.evidence["regressed"] is True
    assert finding.evidence["baseline_mean_ms"] == pytest.approx(5.0)
    assert finding.evidence["mean_ms"] == pytest.approx(30.0)
    assert float(finding.evidence["share"] or 0) < 0.1
    assert "6.0x its baseline" in finding.summary


def test_statement_counters_reset_is_not_a_regression_or_a_rate() -> None:
    snaps = []
    for n, t in enumerate((0, 30, 60)):
        snap = build.snapshot(t, seq=n + 1, statements=stats(t if t < 60 else 1, [SLOW]))
        if t == 60:
            snap.statements_info.stats_reset.CopyFrom(build.ts(55))
        snaps.append(snap)
    with pytest.raises(findings.NoData):
        statements.slow_statement(build.window(*snaps, retention=3600), DEFAULTS)


# ---- the engine: texts it asks for, the budget, skip counting


def make(registry: prometheus_client.CollectorRegistry | None = None, **spec: Any
         ) -> engine.Engine:
    config = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "s"}}, **spec})
    return engine.Engine(settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR),
        spec=config), metrics.Metrics(registry or prometheus_client.CollectorRegistry()))


def snapshot(t: float, seq: int, loads: Sequence[Load], texts: Sequence[Load] = ()
             ) -> pb.Snapshot:
    snap = build.snapshot(t, seq=seq, tables=[orders(t)], statements=stats(t, loads),
                          catalog=catalog())
    snap.statement_texts.extend(pb.StatementText(queryid=w.queryid, text=w.text)
                                for w in texts)
    return snap


def test_engine_asks_for_texts_of_hot_statements_once_in_a_while() -> None:
    core = make()
    assert core.apply(snapshot(0, 1, [POINT])).want_statement_texts == ()
    assert core.apply(snapshot(10, 2, [POINT])).want_statement_texts == (101,)
    assert core.apply(snapshot(20, 3, [POINT])).want_statement_texts == ()  # asked already
    texts = {POINT.queryid: pb.StatementText(queryid=101, text=POINT.text)}
    applied = core.apply(snapshot(30, 4, [POINT]), texts)
    assert applied.want_statement_texts == ()
    [(_, detection)] = [d for d in applied.due if d[1].detector is DetectorId.MISSING_INDEX]
    assert detection.target.columns == ["customer_id"]
    assert detection.risk_class is RiskClass.DDL


def test_engine_respects_the_index_budget_and_counts_skipped_texts() -> None:
    sqlparse.take_skipped()  # the tally is per process: start from zero
    registry = prometheus_client.CollectorRegistry()
    core = make(registry, limits={"maxIndexesPerTable": 1})
    broken = Load(111, "SELEC 1 /* engine budget test */")
    texts = {w.queryid: pb.StatementText(queryid=w.queryid, text=w.text)
             for w in (POINT, broken)}
    core.apply(snapshot(0, 1, [POINT, broken]), texts)
    cat = catalog([index_on("status")])
    snap = snapshot(30, 2, [POINT, broken])
    snap.catalog.CopyFrom(cat)
    snap.catalog_hash = cat.hash
    applied = core.apply(snap, texts)
    assert [d for _, d in applied.due if d.detector is DetectorId.MISSING_INDEX] == []
    assert registry.get_sample_value("startupmonkey_analyser_statements_skipped_total",
                                     {"reason": "syntax"}) == 1


def test_engine_keeps_history_for_the_statement_baseline() -> None:
    assert engine.retention(build.limits()) >= statements.HISTORY_SECONDS
