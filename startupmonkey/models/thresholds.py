"""Per-detector thresholds: ``spec.thresholds.<detector_id>``.

Each detector has its own small model with documented units and defaults, so a user who sets
``thresholds.dead_tuples.minDeadRatio`` gets that exact knob validated. Defaults come from
REFERENCE.md (PgHero, pganalyze, the autovacuum formulas) and are stated in docs/configuration.md.
Every window is a duration string, so tests shorten them through this same config.
"""

from __future__ import annotations

from pydantic import Field

from startupmonkey.models import base, durations
from startupmonkey.models.enums import DetectorId


class DetectorThreshold(base.ApiModel):
    """What every detector accepts."""

    enabled: bool = Field(True, description="Turn the detector off without removing its settings.")
    cooldown: durations.Duration = Field(
        "1h",
        description="After a remediation of a key ends without fixing it (rejected, failed, "
        "rolled back), how long the key stays quiet before it may be proposed again.",
    )


class MissingIndex(DetectorThreshold):
    min_table_rows: int = Field(10_000, ge=0, description="Tables with fewer estimated rows "
                                "(reltuples) are never indexed: a seq scan is cheap there.")
    min_seq_scans_per_second: float = Field(
        0.5, ge=0, description="Seq scans per second on the table, over the last interval.")
    min_statement_time_per_second: float = Field(
        0.05, ge=0, description="Seconds of execution per second that the statements the index "
        "would serve must spend, together, before an index is proposed.")
    max_selectivity: float = Field(
        0.05, gt=0, le=1, description="Largest fraction of the table the index's equality "
        "columns may select for an index to be worth it: the analyser skips statements whose "
        "rows per call (when they are the matches) exceed it, and the executor refuses, "
        "before costing, a candidate whose planner row estimate of the filtered scan does "
        "(not for ORDER BY ... LIMIT, which reads LIMIT rows).")
    min_cost_reduction: float = Field(
        0.5, gt=0, le=1, description="The executor's HypoPG pre-check builds only when the "
        "planner cost of the served statements drops by at least this fraction.")
    cooldown: durations.Duration = Field("24h", description="Quiet time for a key after a "
                                         "rejected or reverted index.")


class DeadTuples(DetectorThreshold):
    min_dead_ratio: float = Field(0.2, gt=0, le=1, description="n_dead_tup / (n_live_tup + "
                                  "n_dead_tup) at or above which a table needs VACUUM.")
    min_dead_tuples: int = Field(10_000, ge=0, description="Never act below this many dead rows.")
    autovacuum_grace: durations.Duration = Field(
        "10m", description="How long dead tuples must stay above the autovacuum trigger "
        "(50 + scale_factor * reltuples) before we step in instead of autovacuum.")


class VacuumBlocked(DetectorThreshold):
    min_holder_age: durations.Duration = Field(
        "15m", description="Report what holds the xmin horizon (session, slot, prepared "
        "transaction) once it is this old and dead tuples are waiting on it.")


def uncounted_rows(reltuples: float, n_live_tup: float, maintenance_runs: float) -> float:
    """Rows the catalog knows of (``reltuples``) that the statistics counters do not, when no
    VACUUM or ANALYZE of the table (``maintenance_runs``: vacuum, autovacuum, analyze and
    autoanalyze counts) was counted since the counters started: the mark of statistics lost by
    a crash or a reset. 0 otherwise (after any VACUUM or ANALYZE, ``n_live_tup`` is an
    estimate of its own). The analyser's detection and the executor's re-check share it."""
    if maintenance_runs or reltuples <= 0:
        return 0.0
    return max(reltuples - n_live_tup, 0.0)


class StaleStatistics(DetectorThreshold):
    min_modified_ratio: float = Field(0.1, gt=0, description="n_mod_since_analyze against "
                                      "reltuples, on top of the base of minModifiedRows.")
    min_modified_rows: int = Field(1_000, ge=0, description="Base row count of the trigger "
                                   "(PostgreSQL's own is 50).")

    def trigger(self, reltuples: float) -> float:
        """``minModifiedRows + minModifiedRatio x reltuples``: how many rows changed since the
        last ANALYZE (or uncounted after lost statistics) make the statistics stale."""
        return self.min_modified_rows + self.min_modified_ratio * max(reltuples, 0.0)


class LongRunningQuery(DetectorThreshold):
    max_duration: durations.Duration = Field("5m", description="An active query older than "
                                             "this is cancelled (pg_cancel_backend).")
    terminate_after: durations.Duration | None = Field(
        None, description="If set, a query still running this long after the cancel is "
        "terminated. Unset: cancel only.")


class IdleInTransaction(DetectorThreshold):
    max_duration: durations.Duration = Field("30m", description="A session idle in a "
                                             "transaction longer than this is terminated.")


class BlockingLock(DetectorThreshold):
    min_wait: durations.Duration = Field("1m", description="How long the oldest waiter must "
                                         "have waited on the root blocker.")
    min_blocked: int = Field(3, ge=1, description="How many sessions the root blocker must "
                             "hold up.")
    terminate_after: durations.Duration | None = Field(
        None, description="If set, a root blocker whose statement was cancelled and still runs "
        "it this long after the cancel is terminated. Unset: cancel only. An idle root blocker "
        "(in a transaction or not) is terminated at once.")


class ConnectionSaturation(DetectorThreshold):
    max_ratio: float = Field(0.8, gt=0, le=1, description="Client backends / (max_connections "
                             "- superuser_reserved_connections).")


class CacheHitRatio(DetectorThreshold):
    min_ratio: float = Field(0.99, gt=0, le=1, description="blks_hit / (blks_hit + blks_read) "
                             "over the window, per database and per table.")
    window: durations.Duration = Field("15m", description="Window the ratio is computed over.")
    min_blocks: int = Field(10_000, ge=0, description="Blocks read+hit in the window before "
                            "the ratio means anything.")


class InvalidIndex(DetectorThreshold):
    min_age: durations.Duration = Field(
        "5m", description="An INVALID index must have been seen this long (so a build still "
        "in progress is not flagged).")


class UnusedIndex(DetectorThreshold):
    min_age: durations.Duration = Field("168h", description="Statistics must be at least this "
                                        "old (since stats_reset) and show no scan.")
    min_size: durations.Quantity = Field("10Mi", description="Smaller unused indexes are ignored.")


class DuplicateIndex(DetectorThreshold):
    pass


class XidWraparound(DetectorThreshold):
    max_ratio: float = Field(0.5, gt=0, le=1, description="age(datfrozenxid) / 2^31 at which "
                             "to warn.")


class SlowStatement(DetectorThreshold):
    min_mean_time: durations.Duration = Field("20ms", description="Mean execution time per call.")
    min_calls: int = Field(100, ge=1, description="Calls in the window before a statement counts.")
    min_share: float = Field(0.1, ge=0, le=1, description="Share of the database's statement "
                             "time the statement must take.")
    regression_factor: float = Field(2.0, gt=1, description="Mean time against the statement's "
                                     "own recent baseline that counts as a regression.")


class Thresholds(base.ApiModel):
    """``spec.thresholds``: one optional block per detector id (keys are the frozen ids)."""

    missing_index: MissingIndex = Field(default_factory=MissingIndex, alias="missing_index")
    dead_tuples: DeadTuples = Field(default_factory=DeadTuples, alias="dead_tuples")
    vacuum_blocked: VacuumBlocked = Field(default_factory=VacuumBlocked, alias="vacuum_blocked")
    stale_statistics: StaleStatistics = Field(
        default_factory=StaleStatistics, alias="stale_statistics")
    long_running_query: LongRunningQuery = Field(
        default_factory=LongRunningQuery, alias="long_running_query")
    idle_in_transaction: IdleInTransaction = Field(
        default_factory=IdleInTransaction, alias="idle_in_transaction")
    blocking_lock: BlockingLock = Field(default_factory=BlockingLock, alias="blocking_lock")
    connection_saturation: ConnectionSaturation = Field(
        default_factory=ConnectionSaturation, alias="connection_saturation")
    cache_hit_ratio: CacheHitRatio = Field(default_factory=CacheHitRatio, alias="cache_hit_ratio")
    invalid_index: InvalidIndex = Field(default_factory=InvalidIndex, alias="invalid_index")
    unused_index: UnusedIndex = Field(default_factory=UnusedIndex, alias="unused_index")
    duplicate_index: DuplicateIndex = Field(default_factory=DuplicateIndex, alias="duplicate_index")
    xid_wraparound: XidWraparound = Field(default_factory=XidWraparound, alias="xid_wraparound")
    slow_statement: SlowStatement = Field(default_factory=SlowStatement, alias="slow_statement")

    def for_detector(self, detector: DetectorId) -> DetectorThreshold:
        """The block of one detector."""
        value: DetectorThreshold = getattr(self, detector.value)
        return value
