"""Database-wide detectors: ``cache_hit_ratio`` (over a window of deltas, never lifetime
counters) and ``xid_wraparound`` (transaction-id and multixact ages against 2^31)."""

from __future__ import annotations

from startupmonkey.analyser import findings
from startupmonkey.analyser.history import Delta, Window
from startupmonkey.models import durations, remediation, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, DetectorId
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section
WRAPAROUND_LIMIT = 2**31
#: At most this many tables are reported per round by cache_hit_ratio (worst first).
MAX_TABLE_FINDINGS = 5
_TABLE_FIELDS = ("heap_blks_hit", "heap_blks_read", "idx_blks_hit", "idx_blks_read")


def _ratio(hit: float, read: float) -> float:
    return hit / (hit + read) if hit + read > 0 else 1.0


def cache_hit_ratio(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """``d(blks_hit) / (d(blks_hit) + d(blks_read))`` over at least ``window`` (between the
    newest snapshot and the newest older one that is at least that far back, same series),
    for the database and for each table (heap and index blocks), when at least ``minBlocks``
    were requested. Until the history covers the window (start-up, after a reset) the
    detector cannot judge."""
    window.require(S.SECTION_DATABASE)
    limits = all_limits.cache_hit_ratio
    span = durations.parse_duration(limits.window)
    db = window.database_delta(("blks_hit", "blks_read"), over=span)
    if db is None:
        raise findings.NoData(f"no history covering the {limits.window} window in this series")
    found = []
    ratio = _ratio(db["blks_hit"], db["blks_read"])
    if db["blks_hit"] + db["blks_read"] >= limits.min_blocks and ratio < limits.min_ratio:
        found.append(_db_finding(window, db, ratio, limits))
    if window.present(S.SECTION_TABLES):
        found += _table_findings(window, span, limits)
    return found


def _db_finding(window: Window, db: Delta, ratio: float, limits: thresholds.CacheHitRatio
                ) -> findings.Finding:
    return findings.Finding(
        detector=DetectorId.CACHE_HIT_RATIO, target_key=f"database/{window.dbname}",
        target=remediation.Target(), action=DEFAULT_ACTION[DetectorId.CACHE_HIT_RATIO],
        severity="warning",
        summary=(f"database {window.dbname}: {ratio:.2%} of block requests hit shared buffers "
                 f"over the last {db.seconds:.0f}s (want {limits.min_ratio:.2%})"),
        evidence={"hit_ratio": round(ratio, 5), "blks_hit": db["blks_hit"],
                  "blks_read": db["blks_read"], "window_s": round(db.seconds, 1),
                  "blocks_read_per_s": round(db.rate("blks_read"), 2)})


def _table_findings(window: Window, span: float, limits: thresholds.CacheHitRatio
                    ) -> list[findings.Finding]:
    tables = window.latest.tables
    bad = []
    for relid, delta in window.table_deltas(_TABLE_FIELDS, over=span).items():
        hit = delta["heap_blks_hit"] + delta["idx_blks_hit"]
        read = delta["heap_blks_read"] + delta["idx_blks_read"]
        if hit + read >= limits.min_blocks and _ratio(hit, read) < limits.min_ratio:
            bad.append((read, relid, delta))
    found = []
    for read, relid, delta in sorted(bad, reverse=True)[:MAX_TABLE_FINDINGS]:
        t = tables[relid]
        hit = delta["heap_blks_hit"] + delta["idx_blks_hit"]
        ratio = _ratio(hit, read)
        name = findings.table_key(t.schema, t.name)
        found.append(findings.Finding(
            detector=DetectorId.CACHE_HIT_RATIO, target_key=name,
            target=remediation.Target(schema_=t.schema, table=t.name),
            action=DEFAULT_ACTION[DetectorId.CACHE_HIT_RATIO], severity="info",
            summary=(f"{name}: {ratio:.2%} of its block requests hit shared buffers over the "
                     f"last {delta.seconds:.0f}s ({read:.0f} blocks read from disk)"),
            evidence={"hit_ratio": round(ratio, 5), "blks_hit": hit, "blks_read": read,
                      "window_s": round(delta.seconds, 1), "table_bytes": t.table_bytes}))
    return found


def xid_wraparound(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """The largest of ``age(datfrozenxid)`` of this database, of the oldest database of the
    cluster (wraparound protection stops the whole server; judged in the home database's
    window only) and ``mxid_age(datminmxid)``,
    divided by 2^31, at or above ``maxRatio``. Evidence names the oldest tables and, from the
    ``next_xid`` rate, the time left."""
    window.require(S.SECTION_DATABASE)
    stats = window.snapshot.database_stats
    ages = {"database": stats.datfrozenxid_age, "cluster": stats.cluster_max_datfrozenxid_age,
            "multixact": stats.datminmxid_age}
    if not window.home:  # the oldest database of the server is judged once (home window)
        del ages["cluster"]
    scope, age = max(ages.items(), key=lambda item: item[1])
    ratio = age / WRAPAROUND_LIMIT
    if ratio < all_limits.xid_wraparound.max_ratio:
        return []
    rate = window.database_delta(("next_xid",))
    per_second = rate.rate("next_xid") if rate is not None else None
    left = (WRAPAROUND_LIMIT - age) / per_second if per_second else None
    oldest = sorted((t for t in window.snapshot.tables if t.HasField("relfrozenxid_age")),
                    key=lambda t: -t.relfrozenxid_age)[:3]
    names = ", ".join(f"{findings.table_key(t.schema, t.name)}={t.relfrozenxid_age}"
                      for t in oldest)
    return [findings.Finding(
        detector=DetectorId.XID_WRAPAROUND, target_key=f"database/{window.dbname}",
        target=remediation.Target(), action=DEFAULT_ACTION[DetectorId.XID_WRAPAROUND],
        severity="critical" if ratio >= 0.8 else "warning",
        summary=(f"{scope} transaction age {age} is {ratio:.0%} of the 2^31 wraparound limit"
                 + (f"; oldest tables: {names}" if names else "")),
        evidence={"datfrozenxid_age": stats.datfrozenxid_age,
                  "cluster_max_datfrozenxid_age": stats.cluster_max_datfrozenxid_age,
                  "datminmxid_age": stats.datminmxid_age, "ratio": round(ratio, 4),
                  "autovacuum_freeze_max_age": window.setting_float("autovacuum_freeze_max_age",
                                                                    200_000_000),
                  "xids_per_s": round(per_second, 2) if per_second is not None else None,
                  "seconds_to_limit": round(left) if left is not None else None,
                  "oldest_tables": names})]


DETECTORS = (
    findings.Detector(DetectorId.CACHE_HIT_RATIO, cache_hit_ratio),
    findings.Detector(DetectorId.XID_WRAPAROUND, xid_wraparound),
)
