"""Table maintenance detectors: ``dead_tuples``, ``vacuum_blocked``, ``stale_statistics``.

Inputs are gauges of ``pg_stat_user_tables`` (``n_dead_tup``, ``n_live_tup``,
``n_mod_since_analyze``), ``pg_class.reltuples`` and ``reloptions``, the server's autovacuum
settings, and for the horizon the sessions, slots and prepared transactions (``horizon.py``).
A statistics reset (or a crash) zeroes these gauges, which would hide the dead rows a table
already has; stale_statistics therefore also flags tables whose counters were lost, so that an
ANALYZE counts them again.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import horizon
from startupmonkey.analyser.history import Window
from startupmonkey.models import durations, remediation, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, DetectorId
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section
#: Relation kinds with storage that VACUUM and ANALYZE work on.
_STORED = frozenset({"r", "m"})


def _option(window: Window, table: snapshot_pb2.TableStats, name: str, default: float) -> float:
    """A per-table storage parameter, else the server setting, else PostgreSQL's default."""
    text = table.reloptions.get(name)
    if text is not None:
        try:
            return float(text)
        except ValueError:
            pass  # not a number (PostgreSQL validates reloptions): the server setting applies
    return window.setting_float(name, default)


def autovacuum_enabled(window: Window, table: snapshot_pb2.TableStats) -> bool:
    """Whether autovacuum will look at this table at all."""
    per_table = table.reloptions.get("autovacuum_enabled", "true").lower()
    return (window.setting_on("autovacuum") and window.setting_on("track_counts")
            and per_table not in ("false", "off", "0", "no"))


@dataclasses.dataclass(frozen=True)
class DeadState:
    """The dead-tuple numbers of one table in one sample."""

    dead: int
    live: int
    ratio: float
    trigger: float
    over: bool


def dead_state(window: Window, table: snapshot_pb2.TableStats,
               limits: thresholds.DeadTuples) -> DeadState:
    """Dead rows against our minimums and against the autovacuum trigger
    ``autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor * reltuples``."""
    dead, live = table.n_dead_tup, table.n_live_tup
    ratio = dead / (dead + live) if dead + live > 0 else 0.0
    trigger = (_option(window, table, "autovacuum_vacuum_threshold", 50.0)
               + _option(window, table, "autovacuum_vacuum_scale_factor", 0.2)
               * max(table.reltuples, 0.0))
    over = dead >= limits.min_dead_tuples and ratio >= limits.min_dead_ratio and dead > trigger
    return DeadState(dead, live, ratio, trigger, over)


def _held_since(window: Window, relid: int,
                holds: Callable[[snapshot_pb2.TableStats], bool]) -> datetime.datetime:
    """Start of the current unbroken run of samples in which ``holds`` was true of the table
    (samples without the tables section do not break the run)."""
    since = window.now
    for sample in window.behind():
        table = sample.tables.get(relid)
        if not sample.present(S.SECTION_TABLES) or (table is None and S.SECTION_TABLES
                                                     in sample.partial):
            continue  # unknown in that sample (missing or truncated section)
        if table is None or not holds(table):
            break
        since = sample.time_of(S.SECTION_TABLES)
    return since


def _vacuuming(window: Window) -> set[int]:
    if not window.present(S.SECTION_VACUUM_PROGRESS):
        return set()
    return {v.relid for v in window.snapshot.vacuum_progress}


def dead_tuples(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Tables whose dead rows passed our minimums and stayed above the autovacuum trigger for
    the grace period (no grace when autovacuum is off for the table); quiet while a VACUUM is
    running on the table, or when one already ran after the xmin horizon was taken (the rows
    cannot be removed yet: that is vacuum_blocked)."""
    window.require(S.SECTION_TABLES)
    limits = all_limits.dead_tuples
    grace = durations.parse_duration(limits.autovacuum_grace)
    busy = _vacuuming(window)
    holder = horizon.oldest(window)
    found = []
    for table in window.snapshot.tables:
        if table.relkind not in _STORED or table.relid in busy:
            continue
        state = dead_state(window, table, limits)
        if not state.over or horizon.vacuumed_in_vain(table, holder):
            continue
        auto = autovacuum_enabled(window, table)
        held = (window.now - _held_since(
            window, table.relid, lambda t: dead_state(window, t, limits).over)).total_seconds()
        if auto and held < grace:
            continue
        found.append(_dead_finding(table, state, held, auto))
    return found


def _dead_finding(table: snapshot_pb2.TableStats, state: DeadState, held: float,
                  auto: bool) -> findings.Finding:
    name = findings.table_key(table.schema, table.name)
    return findings.Finding(
        detector=DetectorId.DEAD_TUPLES, target_key=name,
        target=remediation.Target(schema_=table.schema, table=table.name),
        action=DEFAULT_ACTION[DetectorId.DEAD_TUPLES],
        severity="critical" if state.ratio >= 0.5 else "warning",
        summary=(f"{name} has {state.dead} dead rows ({state.ratio:.0%} of its rows), above "
                 f"the autovacuum trigger of {state.trigger:.0f} for {held:.0f}s"
                 + ("" if auto else " with autovacuum off for it")),
        evidence={"n_dead_tup": state.dead, "n_live_tup": state.live,
                  "dead_ratio": round(state.ratio, 4), "autovacuum_trigger": round(state.trigger),
                  "reltuples": table.reltuples, "over_trigger_for_s": round(held, 1),
                  "autovacuum_enabled": auto, "table_bytes": table.table_bytes,
                  "last_vacuum": findings.iso(horizon.last_vacuum(table))})


def vacuum_blocked(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """The oldest holder of the xmin horizon, once it is older than ``minHolderAge`` and a
    VACUUM that ran after it took its xmin left dead rows behind (over dead_tuples' minimums
    and the autovacuum trigger). Names the holder, never proposes another VACUUM."""
    window.require(S.SECTION_TABLES, S.SECTION_SESSIONS)
    holder = horizon.oldest(window)
    min_age = durations.parse_duration(all_limits.vacuum_blocked.min_holder_age)
    if holder is None or holder.since is None:
        return []
    age = (window.now - holder.since).total_seconds()
    if age < min_age:
        return []
    waiting = [t for t in window.snapshot.tables if t.relkind in _STORED
               and dead_state(window, t, all_limits.dead_tuples).over
               and horizon.vacuumed_in_vain(t, holder)]
    if not waiting:
        return []
    return [_blocked_finding(holder, age, waiting)]


def _blocked_finding(holder: horizon.Holder, age: float,
                     waiting: list[snapshot_pb2.TableStats]) -> findings.Finding:
    worst = sorted(waiting, key=lambda t: -t.n_dead_tup)
    dead = sum(t.n_dead_tup for t in waiting)
    names = ", ".join(findings.table_key(t.schema, t.name) for t in worst[:5])
    return findings.Finding(
        detector=DetectorId.VACUUM_BLOCKED, target_key=holder.target_key, target=holder.target,
        action=DEFAULT_ACTION[DetectorId.VACUUM_BLOCKED], severity="warning",
        summary=(f"{holder.name} has held the xmin horizon for {age:.0f}s "
                 f"({holder.xmin_age} transactions): VACUUM cannot remove {dead} dead rows "
                 f"in {len(waiting)} table(s) ({names})"),
        evidence={**holder.evidence, "held_for_s": round(age, 1), "tables_waiting": len(waiting),
                  "dead_rows_waiting": dead, "tables": names})


def stale_statistics(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Tables whose rows changed since the last ANALYZE more than ``minModifiedRows +
    minModifiedRatio * reltuples`` (a never-analysed table has reltuples -1 or 0, so any
    ``minModifiedRows`` changes count). Partitioned parents are left out: their statistics
    come from a manual ANALYZE of the parent, which PostgreSQL never schedules.

    Also tables whose counters were lost (:func:`uncounted_rows`): after a crash, an immediate
    shutdown, ``pg_stat_reset()`` or an upgrade the statistics system starts from zero, so the
    dead rows already in a table are invisible to autovacuum and to dead_tuples until an
    ANALYZE counts them again (it re-estimates ``n_live_tup`` and ``n_dead_tup``)."""
    window.require(S.SECTION_TABLES)
    limits = all_limits.stale_statistics
    counting = window.setting_on("track_counts")
    found = []
    for table in window.snapshot.tables:
        if table.relkind not in _STORED:
            continue
        trigger = limits.trigger(table.reltuples)
        if table.n_mod_since_analyze > trigger:
            found.append(_stale_finding(table, trigger,
                                        window.snapshot.database.server_version_num))
        elif counting and uncounted_rows(table) > trigger and _lost_for(
                window, table.relid, limits) >= LOST_GRACE:
            found.append(_lost_finding(table, trigger))
    return found


#: How long a table's counters must look lost before it is flagged: a bulk load's counters
#: reach the statistics system up to 10 s after its commit made reltuples visible (a backend
#: flushes its pending counters at most every second, and when idle after 10 s), so a loaded
#: table looks "uncounted" for a moment; counters lost by a crash stay lost until something
#: maintains the table.
LOST_GRACE = 30.0


def _lost_for(window: Window, relid: int, limits: thresholds.StaleStatistics) -> float:
    """Seconds the table's counters have looked lost, in an unbroken run of samples."""
    return (window.now - _held_since(
        window, relid, lambda t: uncounted_rows(t) > limits.trigger(t.reltuples))
            ).total_seconds()


def uncounted_rows(table: snapshot_pb2.TableStats) -> float:
    """:func:`thresholds.uncounted_rows` of one table of the snapshot."""
    return thresholds.uncounted_rows(
        table.reltuples, table.n_live_tup, table.vacuum_count + table.autovacuum_count
        + table.analyze_count + table.autoanalyze_count)


def _stale_finding(table: snapshot_pb2.TableStats, trigger: float,
                   server_version_num: int) -> findings.Finding:
    name = findings.table_key(table.schema, table.name)
    analysed = [findings.when(t) for has, t in (
        (table.HasField("last_analyze"), table.last_analyze),
        (table.HasField("last_autoanalyze"), table.last_autoanalyze)) if has]
    last = max(analysed) if analysed else None
    # reltuples is -1 until the first VACUUM or ANALYZE from PostgreSQL 14; 13 says 0, so
    # there "never" is 0 with no analyze recorded (docs/postgres-support.md).
    never = table.reltuples < 0 or (
        0 < server_version_num < 140000 and table.reltuples == 0 and last is None)
    return findings.Finding(
        detector=DetectorId.STALE_STATISTICS, target_key=name,
        target=remediation.Target(schema_=table.schema, table=table.name),
        action=DEFAULT_ACTION[DetectorId.STALE_STATISTICS], severity="warning",
        summary=(f"{name}: {table.n_mod_since_analyze} rows changed since "
                 + ("it was never analysed" if never else "the last ANALYZE")
                 + f" (trigger {trigger:.0f})"),
        evidence={"n_mod_since_analyze": table.n_mod_since_analyze,
                  "trigger": round(trigger), "reltuples": table.reltuples,
                  "n_live_tup": table.n_live_tup, "last_analyze": findings.iso(last),
                  "never_analysed": never})


def _lost_finding(table: snapshot_pb2.TableStats, trigger: float) -> findings.Finding:
    name = findings.table_key(table.schema, table.name)
    uncounted = uncounted_rows(table)
    return findings.Finding(
        detector=DetectorId.STALE_STATISTICS, target_key=name,
        target=remediation.Target(schema_=table.schema, table=table.name),
        action=DEFAULT_ACTION[DetectorId.STALE_STATISTICS], severity="warning",
        summary=(f"{name}: its statistics counters were lost (a crash, an immediate shutdown, "
                 f"a statistics reset or an upgrade): they count {table.n_live_tup} of its "
                 f"{table.reltuples:.0f} rows and no VACUUM or ANALYZE since, so autovacuum "
                 f"cannot see its dead rows until an ANALYZE counts them (trigger "
                 f"{trigger:.0f})"),
        evidence={"statistics_lost": True, "uncounted_rows": round(uncounted),
                  "trigger": round(trigger), "reltuples": table.reltuples,
                  "n_live_tup": table.n_live_tup, "n_dead_tup": table.n_dead_tup,
                  "n_mod_since_analyze": table.n_mod_since_analyze})


DETECTORS = (
    findings.Detector(DetectorId.DEAD_TUPLES, dead_tuples),
    findings.Detector(DetectorId.VACUUM_BLOCKED, vacuum_blocked),
    findings.Detector(DetectorId.STALE_STATISTICS, stale_statistics),
)
