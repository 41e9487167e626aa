"""Deltas and rates from cumulative counters: dropped snapshots, resets, missing sections,
bounded memory."""

from __future__ import annotations

import pytest

from startupmonkey.analyser import history
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

S = pb.Section


def _db(at_s: float, hit: int, read: int, **kwargs: object) -> pb.Snapshot:
    database = {"blks_hit": hit, "blks_read": read}
    database.update(kwargs.pop("database", {}))  # type: ignore[call-overload]
    return build.snapshot(at_s, database=database, **kwargs)  # type: ignore[arg-type]


def _fill(snaps: list[pb.Snapshot]) -> history.History:
    hist = history.History()
    for snap in snaps:
        hist.add(history.Sample(snap))
    return hist


def test_rate_divides_by_the_real_time_between_the_samples_it_has() -> None:
    # 10 s interval; the snapshots at 20 s and 30 s were lost on the way.
    hist = _fill([_db(0, 0, 0), _db(10, 1_000, 100), _db(40, 4_000, 400)])
    delta = hist.window().database_delta(("blks_hit", "blks_read"))
    assert delta is not None
    assert delta.seconds == 30
    assert delta["blks_hit"] == 3_000
    assert delta.rate("blks_hit") == 100.0


def test_window_delta_uses_a_base_at_least_that_far_back() -> None:
    hist = _fill([_db(t, t * 10, t) for t in range(0, 100, 10)])
    delta = hist.window().database_delta(("blks_hit",), over=35)
    assert delta is not None and delta.seconds == 40
    assert hist.window().database_delta(("blks_hit",), over=500) is None


def test_stats_reset_starts_a_new_baseline() -> None:
    hist = history.History()
    hist.add(history.Sample(_db(0, 5_000, 500)))
    hist.add(history.Sample(_db(10, 6_000, 600)))
    resets = hist.add(history.Sample(_db(20, 10, 1, stats_reset=15)))
    assert resets == ["database_stats"]
    assert hist.window().database_delta(("blks_hit",)) is None
    hist.add(history.Sample(_db(30, 110, 2, stats_reset=15)))
    delta = hist.window().database_delta(("blks_hit",), over=5)
    assert delta is not None and delta["blks_hit"] == 100 and delta.seconds == 10


def test_server_restart_drops_the_history() -> None:
    hist = _fill([_db(0, 5_000, 500), _db(10, 6_000, 600)])
    restarted = _db(20, 7_000, 700, identity={"postmaster_start_time": build.at(15)})
    assert hist.add(history.Sample(restarted)) == ["identity"]
    assert len(hist.samples) == 1
    assert hist.window().database_delta(("blks_hit",)) is None


def test_a_counter_that_goes_down_gives_no_delta() -> None:
    tables_before = [build.table(1, "a", seq_scan=100), build.table(2, "b", seq_scan=50)]
    tables_after = [build.table(1, "a", seq_scan=3), build.table(2, "b", seq_scan=80)]
    hist = _fill([build.snapshot(0, tables=tables_before), build.snapshot(10, tables=tables_after)])
    deltas = hist.window().table_deltas(("seq_scan",))
    assert set(deltas) == {2}
    assert deltas[2]["seq_scan"] == 30


def test_a_missing_section_is_unknown_not_empty() -> None:
    with_tables = build.snapshot(0, tables=[build.table(1, "a", seq_scan=10)])
    without = build.snapshot(10, sections=[S.SECTION_DATABASE])
    latest = build.snapshot(20, tables=[build.table(1, "a", seq_scan=40)])
    hist = _fill([with_tables, without, latest])
    delta = hist.window().table_deltas(("seq_scan",))[1]
    assert delta.seconds == 20 and delta["seq_scan"] == 30  # based on the sample at 0 s
    hist.add(history.Sample(build.snapshot(30, sections=[S.SECTION_DATABASE])))
    window = hist.window()
    assert not window.present(S.SECTION_TABLES)
    assert window.table_deltas(("seq_scan",)) == {}


def test_statements_reset_and_eviction() -> None:
    def stmt(calls: int) -> pb.StatementStats:
        return pb.StatementStats(queryid=7, userid=10, dbid=build.DATID, calls=calls)

    def snap(at_s: float, stmts: list[pb.StatementStats], dealloc: int = 0,
             reset: float | None = None) -> pb.Snapshot:
        s = build.snapshot(at_s, statements=stmts)
        s.statements_info.dealloc = dealloc
        if reset is not None:
            s.statements_info.stats_reset.CopyFrom(build.ts(reset))
        return s

    # Not sent in one round (top-N) without eviction: the older base is used.
    hist = _fill([snap(0, [stmt(10)]), snap(10, []), snap(20, [stmt(50)])])
    assert hist.window().statement_deltas(("calls",))[(7, 10, build.DATID, None)]["calls"] == 40
    # Missing while entries were evicted (dealloc grew): maybe re-created, no delta.
    hist = _fill([snap(0, [stmt(10)]), snap(10, [], dealloc=5), snap(20, [stmt(50)], dealloc=5)])
    assert hist.window().statement_deltas(("calls",)) == {}
    # pg_stat_statements_reset(): a new series.
    hist = _fill([snap(0, [stmt(10)]), snap(20, [stmt(50)], reset=15)])
    assert hist.window().statement_deltas(("calls",)) == {}


def test_history_is_bounded_and_evenly_thinned() -> None:
    hist = history.History(retention=600, max_samples=10)
    for n in range(200):
        hist.add(history.Sample(_db(n * 5, n, n, tables=[build.table(1, "a")],
                                    sessions=[build.session(1)])))
    assert len(hist.samples) <= 10
    times = [s.collected_at for s in hist.samples]
    assert (times[-1] - times[0]).total_seconds() >= 600  # the longest window is covered
    assert all(s.slim and not s.snapshot.sessions for s in hist.samples[:-1])
    assert hist.samples[-1].snapshot.sessions


def test_older_or_unidentified_snapshots_are_refused() -> None:
    hist = _fill([_db(10, 1, 1)])
    with pytest.raises(ValueError, match="not newer"):
        hist.add(history.Sample(_db(5, 1, 1)))
    disconnected = build.snapshot(20, identity={"system_identifier": 0, "datid": 0})
    with pytest.raises(ValueError, match="no database"):
        hist.add(history.Sample(disconnected))


def test_markers_remember_since_when_a_fact_holds() -> None:
    invalid = build.index(5, 1, "ix", valid=False)
    hist = _fill([build.snapshot(0, indexes=[invalid]), build.snapshot(10, indexes=[invalid])])
    assert hist.window().markers.get("invalid", 5) == build.at(0)
    hist.add(history.Sample(build.snapshot(20, indexes=[build.index(5, 1, "ix")])))
    assert hist.window().markers.get("invalid", 5) is None
    assert hist.window().markers.get("index", 5) == build.at(0)
