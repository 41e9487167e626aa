"""dead_tuples, vacuum_blocked, stale_statistics, cache_hit_ratio, xid_wraparound on hand-built
snapshots: each fires on the problem and stays quiet on a healthy twin."""

from __future__ import annotations

import functools

import pytest

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import database, tables
from startupmonkey.models.enums import ActionId, DetectorId
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

#: An hour of history: the vacuum_blocked tests look back 1,000 seconds.
window = functools.partial(build.window, retention=3600)


def bloated(**fields: object) -> pb.TableStats:
    values: dict[str, object] = {"n_live_tup": 100_000, "n_dead_tup": 60_000,
                                 "reltuples": 100_000.0}
    values.update(fields)
    return build.table(1, "orders", **values)


def healthy(**fields: object) -> pb.TableStats:
    return build.table(2, "customers", n_live_tup=100_000, n_dead_tup=2_000, **fields)


NO_GRACE = build.limits(dead_tuples={"autovacuumGrace": "0s"})


# ---- dead_tuples


def test_dead_tuples_fires_after_the_grace_and_not_on_the_healthy_twin() -> None:
    limits = build.limits(dead_tuples={"autovacuumGrace": "60s"})
    snaps = [build.snapshot(t, tables=[bloated(), healthy()]) for t in (0, 30, 61)]
    assert tables.dead_tuples(window(*snaps[:2]), limits) == []  # within the grace
    found = tables.dead_tuples(window(*snaps), limits)
    assert [f.target_key for f in found] == ["public.orders"]
    finding = found[0]
    assert finding.action is ActionId.VACUUM and finding.detector is DetectorId.DEAD_TUPLES
    assert finding.target.table == "orders" and finding.target.schema_ == "public"
    assert finding.evidence["n_dead_tup"] == 60_000
    assert finding.evidence["autovacuum_trigger"] == 20_050


def test_dead_tuples_respects_per_table_autovacuum_settings() -> None:
    # Autovacuum would only start at 50 + 0.9 * 100k dead rows for this table: not yet due.
    lenient = bloated(reloptions={"autovacuum_vacuum_scale_factor": "0.9"})
    assert tables.dead_tuples(window(build.snapshot(0, tables=[lenient])), NO_GRACE) == []
    # Autovacuum off for the table: no grace, we step in at once.
    off = bloated(reloptions={"autovacuum_enabled": "false"})
    limits = build.limits(dead_tuples={"autovacuumGrace": "1h"})
    found = tables.dead_tuples(window(build.snapshot(0, tables=[off])), limits)
    assert found and found[0].evidence["autovacuum_enabled"] is False


def test_dead_tuples_minimums_and_running_vacuum() -> None:
    small = build.table(3, "tiny", n_live_tup=100, n_dead_tup=900, reltuples=100.0)
    assert tables.dead_tuples(window(build.snapshot(0, tables=[small])), NO_GRACE) == []
    running = build.snapshot(0, tables=[bloated()], vacuum_progress=[pb.VacuumProgress(relid=1)])
    assert tables.dead_tuples(window(running), NO_GRACE) == []


def test_dead_tuples_stays_quiet_when_a_vacuum_already_ran_behind_the_horizon() -> None:
    holder = build.session(77, state="idle in transaction", xact_start=build.at(-1800),
                           backend_xmin=1000, backend_xmin_age=5_000)
    vacuumed = bloated(last_autovacuum=build.at(-60))  # after the holder's transaction began
    snap = build.snapshot(0, tables=[vacuumed], sessions=[holder])
    assert tables.dead_tuples(window(snap), NO_GRACE) == []
    found = tables.vacuum_blocked(window(snap), NO_GRACE)
    assert len(found) == 1
    finding = found[0]
    assert finding.detector is DetectorId.VACUUM_BLOCKED and finding.action is ActionId.ADVICE
    assert finding.target.pid == 77 and finding.target.xact_start == build.at(-1800)
    assert finding.evidence["holder"] == "session" and finding.evidence["tables_waiting"] == 1


def test_vacuum_blocked_names_slots_and_prepared_transactions() -> None:
    vacuumed = bloated(last_vacuum=build.at(-10))
    slot = pb.ReplicationSlot(slot_name="lagging", slot_type="physical", xmin=900, xmin_age=9000)
    old = [build.snapshot(-1000, tables=[vacuumed], replication_slots=[slot])]
    snaps = [*old, build.snapshot(0, tables=[vacuumed], replication_slots=[slot])]
    found = tables.vacuum_blocked(window(*snaps), NO_GRACE)
    assert [f.target_key for f in found] == ["slot:lagging"]
    prepared = pb.PreparedXact(gid="forgotten", transaction=5, xid_age=20_000,
                               database=build.DBNAME, prepared=build.ts(-3600))
    found = tables.vacuum_blocked(window(build.snapshot(0, tables=[vacuumed],
                                                        replication_slots=[slot],
                                                        prepared_xacts=[prepared])), NO_GRACE)
    assert [f.target_key for f in found] == ["prepared:forgotten"]  # the oldest xmin wins


def test_vacuum_blocked_is_quiet_for_young_holders_or_without_a_vacuum_in_vain() -> None:
    young = build.session(77, state="active", xact_start=build.at(-5), backend_xmin=1000,
                          backend_xmin_age=5)
    assert tables.vacuum_blocked(window(build.snapshot(
        0, tables=[bloated(last_autovacuum=build.at(-1))], sessions=[young])), NO_GRACE) == []
    old = build.session(77, state="idle in transaction", xact_start=build.at(-1800),
                        backend_xmin=1000, backend_xmin_age=5_000)
    never_vacuumed = build.snapshot(0, tables=[bloated()], sessions=[old])
    assert tables.vacuum_blocked(window(never_vacuumed), NO_GRACE) == []
    assert tables.dead_tuples(window(never_vacuumed), NO_GRACE)  # vacuum first, then judge


# ---- stale_statistics


def test_stale_statistics_fires_over_the_trigger_and_on_never_analysed_tables() -> None:
    stale = build.table(1, "orders", n_mod_since_analyze=30_000, reltuples=100_000.0)
    fresh = build.table(2, "customers", n_mod_since_analyze=500, reltuples=100_000.0)
    never = build.table(3, "imports", n_mod_since_analyze=5_000, reltuples=-1.0)
    limits = build.limits()
    found = tables.stale_statistics(window(build.snapshot(0, tables=[stale, fresh, never])),
                                    limits)
    assert sorted(f.target_key for f in found) == ["public.imports", "public.orders"]
    assert all(f.action is ActionId.ANALYZE for f in found)
    never_finding = next(f for f in found if f.target_key == "public.imports")
    assert never_finding.evidence["never_analysed"] is True


def test_stale_statistics_skips_partitioned_parents() -> None:
    parent = build.table(1, "events", relkind="p", partitioned=True, n_mod_since_analyze=10**6)
    assert tables.stale_statistics(window(build.snapshot(0, tables=[parent])),
                                   build.limits()) == []


def test_statistics_reset_raises_nothing_at_once() -> None:
    # pg_stat_reset() zeroes the gauges and the last (auto)vacuum/analyze times.
    reset = build.table(1, "orders", n_live_tup=0, n_dead_tup=0, n_mod_since_analyze=0)
    snap = build.snapshot(0, tables=[reset], stats_reset=-1)
    w = window(snap)
    for run in (tables.dead_tuples, tables.vacuum_blocked, tables.stale_statistics):
        assert run(w, NO_GRACE) == []


def _lost(at_s: float, **fields: object) -> pb.Snapshot:
    """A table the catalog says has 100,000 rows whose counters know of 2,000 and of no
    VACUUM or ANALYZE: its statistics were lost (a crash) and 2,000 rows came since."""
    values: dict[str, object] = {"n_live_tup": 2_000, "n_dead_tup": 0,
                                 "n_mod_since_analyze": 2_000}
    values.update(fields)
    return build.snapshot(at_s, tables=[build.table(1, "orders", **values)])


def test_lost_statistics_are_flagged_for_analyze_once_they_stay_lost() -> None:
    assert tables.stale_statistics(window(_lost(0), _lost(tables.LOST_GRACE - 1)),
                                   build.limits()) == []
    (found,) = tables.stale_statistics(window(_lost(0), _lost(tables.LOST_GRACE)),
                                       build.limits())
    assert found.action is ActionId.ANALYZE and found.target_key == "public.orders"
    assert found.evidence["statistics_lost"] is True
    assert found.evidence["uncounted_rows"] == 98_000
    assert found.evidence["trigger"] == 1_000 + 0.1 * 100_000
    assert "lost" in found.summary and "100000 rows" in found.summary


def test_a_bulk_load_whose_counters_arrive_late_is_not_flagged() -> None:
    late, counted = _lost(0), _lost(5, n_live_tup=100_000)
    assert tables.stale_statistics(window(late, counted, _lost(tables.LOST_GRACE + 5,
                                                               n_live_tup=100_000)),
                                   build.limits()) == []
    # A run broken by a counted sample starts again.
    assert tables.stale_statistics(window(late, counted, _lost(tables.LOST_GRACE)),
                                   build.limits()) == []


@pytest.mark.parametrize("fields", [
    {"vacuum_count": 1}, {"autovacuum_count": 1}, {"analyze_count": 1},
    {"autoanalyze_count": 1},  # maintained since the counters started: n_live_tup is its own
    {"n_live_tup": 90_000},  # under the trigger of 11,000 uncounted rows
    {"reltuples": -1.0, "n_mod_since_analyze": 0},  # never vacuumed or analysed: none lost
])
def test_counted_or_maintained_tables_are_not_lost(fields: dict[str, object]) -> None:
    assert tables.stale_statistics(window(_lost(0, **fields), _lost(60, **fields)),
                                   build.limits()) == []


def test_lost_statistics_are_not_flagged_with_track_counts_off() -> None:
    off = {**build.SETTINGS, "track_counts": "off"}
    snaps = [build.snapshot(at_s, settings=off, tables=[build.table(1, "orders", n_live_tup=0)])
             for at_s in (0, 60)]
    assert tables.stale_statistics(window(*snaps), build.limits()) == []


def test_rows_changed_since_the_last_analyze_win_over_lost_counters() -> None:
    (found,) = tables.stale_statistics(
        window(_lost(0, n_mod_since_analyze=50_000), _lost(60, n_mod_since_analyze=50_000)),
        build.limits())
    assert "statistics_lost" not in found.evidence
    assert found.evidence["n_mod_since_analyze"] == 50_000


# ---- cache_hit_ratio


def _cache(at_s: float, hit: int, read: int, stats_reset: float | None = None,
           heap: tuple[int, int] = (0, 0)) -> pb.Snapshot:
    t = build.table(1, "orders", heap_blks_hit=heap[0], heap_blks_read=heap[1])
    return build.snapshot(at_s, database={"blks_hit": hit, "blks_read": read},
                          stats_reset=stats_reset, tables=[t])


CACHE = build.limits(cache_hit_ratio={"window": "60s", "minBlocks": 1000, "minRatio": 0.99})


def test_cache_hit_ratio_uses_window_deltas_not_lifetime_counters() -> None:
    # Lifetime ratio is excellent (10M hits), the last minute is bad: 90%.
    w = window(_cache(0, 10_000_000, 1_000), _cache(30, 10_004_500, 1_500),
               _cache(60, 10_009_000, 2_000, heap=(9_000, 1_000)))
    found = database.cache_hit_ratio(w, CACHE)
    db = next(f for f in found if f.target_key == "database/shop")
    assert db.evidence["hit_ratio"] == pytest.approx(0.9)
    assert db.evidence["window_s"] == 60


def test_cache_hit_ratio_healthy_twin_and_bad_lifetime() -> None:
    # Lifetime ratio is bad (recovering from a cold start), the last minute is perfect.
    w = window(_cache(0, 1_000, 9_000), _cache(60, 101_000, 9_000))
    assert database.cache_hit_ratio(w, CACHE) == []


def test_cache_hit_ratio_cannot_judge_without_a_covered_window_or_across_a_reset() -> None:
    with pytest.raises(findings.NoData):
        database.cache_hit_ratio(window(_cache(0, 0, 0), _cache(30, 100, 5_000)), CACHE)
    after_reset = window(_cache(0, 10_000, 10), _cache(60, 20, 5_000, stats_reset=50))
    with pytest.raises(findings.NoData):
        database.cache_hit_ratio(after_reset, CACHE)


def test_cache_hit_ratio_judges_a_table_only_over_its_whole_window() -> None:
    """A table created after the sample ``window`` back (cold at first, as new tables are)
    is not judged on the shorter span it has: the ratio is taken over the window or not at
    all (the statement detectors' ``longest`` deltas are not used here)."""
    def snap(at_s: float, fresh: tuple[int, int] | None) -> pb.Snapshot:
        tables = [build.table(1, "orders", heap_blks_hit=int(at_s) * 1_000)]
        if fresh is not None:
            tables.append(build.table(2, "fresh", heap_blks_hit=fresh[0],
                                      heap_blks_read=fresh[1]))
        return build.snapshot(at_s, database={"blks_hit": int(at_s) * 1_000, "blks_read": 0},
                              tables=tables)
    w = window(snap(0, None), snap(30, (0, 0)), snap(60, (1_000, 40_000)))
    assert [f.target_key for f in database.cache_hit_ratio(w, CACHE)] == []
    # Once the window is covered it is judged.
    w = window(snap(0, (0, 0)), snap(30, (0, 0)), snap(60, (1_000, 40_000)))
    assert [f.target_key for f in database.cache_hit_ratio(w, CACHE)] == ["public.fresh"]


# ---- xid_wraparound


def test_xid_wraparound_fires_on_the_oldest_age_and_names_tables() -> None:
    old = build.table(1, "ledger", relfrozenxid_age=1_200_000_000)
    w = window(build.snapshot(0, tables=[old], database={
        "datfrozenxid_age": 1_200_000_000, "cluster_max_datfrozenxid_age": 1_300_000_000,
        "next_xid": 10}), build.snapshot(10, tables=[old], database={
            "datfrozenxid_age": 1_200_000_000, "cluster_max_datfrozenxid_age": 1_300_000_000,
            "next_xid": 1_010}))
    found = database.xid_wraparound(w, build.limits())
    assert len(found) == 1
    assert found[0].evidence["xids_per_s"] == 100.0
    assert "public.ledger" in str(found[0].evidence["oldest_tables"])
    young = window(build.snapshot(0, database={"datfrozenxid_age": 200_000_000,
                                               "cluster_max_datfrozenxid_age": 200_000_000}))
    assert database.xid_wraparound(young, build.limits()) == []


def test_the_horizon_holder_is_the_oldest_hold_when_snapshots_tie_on_age() -> None:
    # While pid 77 holds xid 1000, a query that just started (pid 5, say the collector) has
    # snapshot xmin 1000 too: the same age. The holder is the one holding it longest.
    holder = build.session(77, state="idle in transaction", xact_start=build.at(-1800),
                           backend_xid=1000, backend_xid_age=5_000)
    busy = build.session(5, state="active", xact_start=build.at(-0.01), backend_xmin=1000,
                         backend_xmin_age=5_000)
    snap = build.snapshot(0, tables=[bloated(last_vacuum=build.at(-60))],
                          sessions=[busy, holder])
    found = tables.vacuum_blocked(window(snap), NO_GRACE)
    assert [f.target.pid for f in found] == [77]
    assert tables.dead_tuples(window(snap), NO_GRACE) == []  # that VACUUM ran in vain
