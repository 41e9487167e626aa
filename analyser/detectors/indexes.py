"""Index detectors: ``invalid_index``, ``unused_index``, ``duplicate_index``.

Inputs: ``pg_stat_user_indexes``/``pg_index`` (IndexStats) and, for anything about
definitions, the catalog the collector sends (IndexDef, Constraint). Indexes that enforce
something (primary key, unique, exclusion, replica identity, any constraint) or that back a
foreign key of their own table are never proposed for dropping as unused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

from startupmonkey.analyser import findings
from startupmonkey.analyser.history import Window
from startupmonkey.models import durations, remediation, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, ActionId, DetectorId
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section
IndexDef = snapshot_pb2.IndexDef
FOREIGN_KEY = snapshot_pb2.ConstraintType.CONSTRAINT_TYPE_FOREIGN_KEY
log = logging.getLogger(__name__)


def _definitions(window: Window) -> Mapping[int, IndexDef]:
    """Each index of the catalog by its oid, built once per catalog."""
    if window.catalog is None:
        return {}
    return window.from_catalog(
        "index_definitions", lambda catalog: {i.indexrelid: i for i in catalog.indexes})


def _index_target(schema: str, table: str, index: str) -> remediation.Target:
    return remediation.Target(schema_=schema, table=table, index=index)


# ---- invalid_index

#: ``application_name`` of the executor's connections (``executor/main.py``
#: ``APPLICATION_NAME``; components never import each other, a unit test keeps them equal).
EXECUTOR_APPLICATION = "startupmonkey-executor"


@dataclasses.dataclass(frozen=True)
class _Builders:
    """The index builds of the newest snapshot, by what they build.

    ``by_index``: builds whose index is known. ``by_table``: builds that may be building any
    INVALID index of their table (REINDEX CONCURRENTLY reports the index it rebuilds, not the
    ``_ccnew`` copy it builds). ``anywhere``: builds the collector may not see the target of
    (another role's build without pg_read_all_stats), which may be building any index."""

    by_index: Mapping[int, Sequence[snapshot_pb2.IndexBuild]]
    by_table: Mapping[int, Sequence[snapshot_pb2.IndexBuild]]
    anywhere: Sequence[snapshot_pb2.IndexBuild]

    @classmethod
    def of(cls, builds: Iterable[snapshot_pb2.IndexBuild]) -> _Builders:
        by_index: dict[int, list[snapshot_pb2.IndexBuild]] = {}
        by_table: dict[int, list[snapshot_pb2.IndexBuild]] = {}
        anywhere: list[snapshot_pb2.IndexBuild] = []
        for build in builds:
            if build.HasField("index_relid"):
                by_index.setdefault(build.index_relid, []).append(build)
            if build.HasField("relid") and (not build.HasField("index_relid")
                                            or "REINDEX" in build.command):
                by_table.setdefault(build.relid, []).append(build)
            elif not build.HasField("relid") and not build.HasField("index_relid"):
                anywhere.append(build)
        return cls(by_index, by_table, anywhere)

    def of_index(self, index: snapshot_pb2.IndexStats) -> list[snapshot_pb2.IndexBuild]:
        """Every live build that is, or may be, building ``index``."""
        return [*self.by_index.get(index.indexrelid, ()),
                *self.by_table.get(index.relid, ()), *self.anywhere]


def _who(build: snapshot_pb2.IndexBuild) -> str:
    what = build.command or "an index build"
    phase = f", {build.phase}" if build.phase else ""
    return (f"pid {build.pid} ({what}{phase}; application {build.application_name!r}, "
            f"user {build.usename!r})")


def _own(build: snapshot_pb2.IndexBuild) -> bool:
    return build.application_name == EXECUTOR_APPLICATION


def invalid_index(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Indexes with ``indisvalid = false`` (a failed or interrupted CREATE INDEX
    CONCURRENTLY or REINDEX CONCURRENTLY) seen invalid for at least ``minAge``, that no live
    backend is building (``pg_stat_progress_create_index``) unless that backend is the
    executor's own build. Proposes dropping it; an index that implements a constraint
    cannot be dropped on its own, so for it the proposal is REINDEX."""
    window.require(S.SECTION_INDEXES, S.SECTION_INDEX_BUILDS)
    if S.SECTION_INDEX_BUILDS not in window.latest.complete:
        raise findings.NoData("the index builds section is truncated: a missing build proves "
                              "nothing")
    min_age = durations.parse_duration(all_limits.invalid_index.min_age)
    definitions = _definitions(window)
    builders = _Builders.of(window.snapshot.index_builds)
    found = []
    for index in window.snapshot.indexes:
        since = window.markers.get("invalid", index.indexrelid)
        if index.valid or not index.live or since is None:
            continue
        age = (window.now - since).total_seconds()
        if age < min_age:
            continue
        live = builders.of_index(index)
        others = [b for b in live if not _own(b)]
        if others:
            log.debug("invalid_index: %s is INVALID for %.0fs but not flagged: still being "
                      "built by %s", findings.table_key(index.schema, index.name), age,
                      ", ".join(_who(b) for b in others))
            continue
        found.append(_invalid_finding(index, definitions.get(index.indexrelid), age, live))
    return found


def _invalid_finding(index: snapshot_pb2.IndexStats, definition: IndexDef | None, age: float,
                     own: Sequence[snapshot_pb2.IndexBuild] = ()) -> findings.Finding:
    constraint = index.HasField("constraint_oid")
    action = ActionId.REINDEX if constraint else DEFAULT_ACTION[DetectorId.INVALID_INDEX]
    name = findings.table_key(index.schema, index.name)
    leftover = index.name.endswith(("_ccnew", "_ccold")) or "_ccnew" in index.name
    cause = ("left by an interrupted REINDEX CONCURRENTLY" if leftover
             else "left by a failed or interrupted CREATE INDEX CONCURRENTLY")
    builder = ("no live backend is building it" if not own else
               "only the executor's own build is still at it: "
               + ", ".join(_who(b) for b in own))
    return findings.Finding(
        detector=DetectorId.INVALID_INDEX, target_key=name,
        target=_index_target(index.schema, index.table, index.name), action=action,
        severity="warning",
        summary=(f"index {name} on {index.table} is INVALID ({cause}) and has been for "
                 f"{age:.0f}s: never used by queries"
                 + (", still maintained on every write" if index.ready else "")
                 + f"; {builder}"),
        evidence={"size_bytes": index.size_bytes, "invalid_for_s": round(age, 1),
                  "ready": index.ready, "constraint": index.constraint_name or None,
                  "definition": definition.definition if definition else None,
                  "builder": builder,
                  "builder_pids": ",".join(str(b.pid) for b in own) or None})


# ---- unused_index


def _protected(index: snapshot_pb2.IndexStats) -> str | None:
    """Why an index must never be dropped as unused, or None."""
    for flag, why in ((index.primary, "primary key"), (index.unique, "unique"),
                      (index.exclusion, "exclusion"), (index.replica_identity,
                                                       "replica identity"),
                      (index.HasField("constraint_oid"), "constraint")):
        if flag:
            return why
    return None


def backs_foreign_key(definition: IndexDef, constraints: Iterable[snapshot_pb2.Constraint]
                      ) -> bool:
    """True when the index's leading key columns are exactly the columns of a foreign key of
    its own table (in any order): deleting or updating a referenced row looks them up."""
    keys = list(definition.key_attnums)
    for c in constraints:
        if c.type != FOREIGN_KEY or c.relid != definition.relid or not c.attnums:
            continue
        if set(keys[:len(c.attnums)]) == set(c.attnums):
            return True
    return False


def unused_index(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Valid indexes never scanned (lifetime ``idx_scan`` 0) whose statistics are at least
    ``minAge`` old (since ``stats_reset``) and that this analyser has itself watched for
    ``minAge`` (so an index created recently, whose count started at zero, is not mistaken
    for an unused one), of at least ``minSize``. Needs the catalog (foreign keys)."""
    window.require(S.SECTION_INDEXES, S.SECTION_DATABASE)
    if window.catalog is None or not window.catalog_complete:
        raise findings.NoData("no complete catalog for the current catalog hash")
    limits = all_limits.unused_index
    min_age = durations.parse_duration(limits.min_age)
    min_size = durations.parse_quantity(limits.min_size)
    stats_age = _stats_age(window)
    definitions = _definitions(window)
    constraints = list(window.catalog.constraints)
    found = []
    for index in window.snapshot.indexes:
        definition = definitions.get(index.indexrelid)
        seen = window.markers.get("index", index.indexrelid)
        if (definition is None or seen is None or not index.valid or index.idx_scan > 0
                or index.size_bytes < min_size or _protected(index) or definition.partitioned
                or backs_foreign_key(definition, constraints)):
            continue
        watched = (window.now - seen).total_seconds()
        if min(stats_age, watched) >= min_age:
            found.append(_unused_finding(index, definition, stats_age, watched))
    return found


def _stats_age(window: Window) -> float:
    stats = window.snapshot.database_stats
    if not stats.HasField("stats_reset"):
        return float("inf")  # never reset: counting since the cluster's statistics began
    return (window.now - findings.when(stats.stats_reset)).total_seconds()


def _unused_finding(index: snapshot_pb2.IndexStats, definition: IndexDef, stats_age: float,
                    watched: float) -> findings.Finding:
    name = findings.table_key(index.schema, index.name)
    age = min(stats_age, watched)
    return findings.Finding(
        detector=DetectorId.UNUSED_INDEX, target_key=name,
        target=_index_target(index.schema, index.table, index.name),
        action=DEFAULT_ACTION[DetectorId.UNUSED_INDEX], severity="info",
        summary=(f"index {name} on {index.table} ({index.size_bytes} bytes) has not been "
                 f"scanned once in {age:.0f}s of statistics"),
        evidence={"idx_scan": index.idx_scan, "size_bytes": index.size_bytes,
                  "stats_age_s": None if stats_age == float("inf") else round(stats_age),
                  "watched_s": round(watched), "definition": definition.definition})


# ---- duplicate_index


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What makes two indexes interchangeable for reads."""

    method: str
    keys: tuple[int, ...]
    opclasses: tuple[str, ...]
    options: tuple[int, ...]
    expressions: str
    predicate: str

    @classmethod
    def of(cls, d: IndexDef) -> _Shape:
        return cls(d.method, tuple(d.key_attnums), tuple(d.opclasses), tuple(d.key_options),
                   d.expressions, d.predicate)


def covers(big: IndexDef, small: IndexDef) -> bool:
    """True when ``big`` serves every read ``small`` serves: same table, method, predicate
    and expressions, ``small``'s key columns (with opclasses and ordering) are a leading
    prefix of ``big``'s (btree only when strictly shorter), its INCLUDE columns are in
    ``big``, and ``small`` enforces nothing ``big`` does not (uniqueness on fewer columns
    is a different rule)."""
    b, s = _Shape.of(big), _Shape.of(small)
    n = len(s.keys)
    if (big.relid != small.relid or b.method != s.method or b.predicate != s.predicate
            or b.expressions != s.expressions or b.keys[:n] != s.keys
            or b.opclasses[:n] != s.opclasses or b.options[:n] != s.options):
        return False
    if len(b.keys) > n and (s.method != "btree" or small.unique):
        return False
    if small.unique and not (big.unique and big.nulls_not_distinct == small.nulls_not_distinct):
        return False
    return set(small.include_attnums) <= set(big.key_attnums) | set(big.include_attnums)


def _same_shape(a: IndexDef, b: IndexDef) -> bool:
    return _Shape.of(a) == _Shape.of(b) and set(a.include_attnums) == set(b.include_attnums)


def _droppable(d: IndexDef) -> bool:
    return not (d.primary or d.exclusion or d.replica_identity or d.HasField("constraint_oid"))


def _keep_order(d: IndexDef, scans: Mapping[int, int]) -> tuple[int, int, int]:
    """Sort key: the index to keep first (enforces something, most scans, oldest oid)."""
    return (0 if not _droppable(d) else 1, -scans.get(d.indexrelid, 0), d.indexrelid)


def _redundant(table: Sequence[IndexDef], scans: Mapping[int, int]
               ) -> list[tuple[IndexDef, IndexDef]]:
    """(redundant index, the index that covers it) for one table. Exact duplicates first
    (of twins the best to keep is kept), then prefixes, each against the widest index left,
    so two indexes are never flagged against each other."""
    ordered = sorted(table, key=lambda d: _keep_order(d, scans))
    rank = {d.indexrelid: n for n, d in enumerate(ordered)}
    widest = sorted(ordered, key=lambda d: -len(d.key_attnums))
    flagged: dict[int, IndexDef] = {}
    for exact_pass in (True, False):
        for small in ordered:
            if not _droppable(small) or small.indexrelid in flagged:
                continue
            for big in ordered if exact_pass else widest:
                if (big is small or big.indexrelid in flagged or not covers(big, small)
                        or _same_shape(big, small) != exact_pass):
                    continue
                if exact_pass and rank[big.indexrelid] > rank[small.indexrelid]:
                    continue  # the better one of two exact twins is kept
                flagged[small.indexrelid] = big
                break
    return [(d, flagged[d.indexrelid]) for d in ordered if d.indexrelid in flagged]


def duplicate_index(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Indexes another valid index of the same table makes redundant: the same definition
    (method, key columns, opclasses, ordering, expressions, predicate), or a non-unique btree
    whose key columns are a leading prefix of another's. Needs the catalog."""
    if window.catalog is None or not window.catalog_complete:
        raise findings.NoData("no complete catalog for the current catalog hash")
    stats = window.latest.indexes
    scans = {relid: i.idx_scan for relid, i in stats.items()}
    candidates: _Candidates = window.from_catalog("duplicate_index", _overlapping)
    found = []
    for relid, defs in candidates.tables:
        relation = candidates.relations.get(relid)
        for small, big in _redundant(defs, scans):
            found.append(_duplicate_finding(small, big, relation, stats))
    return found


@dataclasses.dataclass(frozen=True)
class _Candidates:
    """The tables of a catalog where one index covers another, with their indexes: the only
    ones ``_redundant`` can flag anything in (which one it flags depends on the scans)."""

    tables: tuple[tuple[int, tuple[IndexDef, ...]], ...]
    relations: Mapping[int, snapshot_pb2.Relation]


def _overlapping(catalog: snapshot_pb2.Catalog) -> _Candidates:
    by_table: dict[int, list[IndexDef]] = {}
    for d in catalog.indexes:
        if d.valid and d.live and not d.partitioned:
            by_table.setdefault(d.relid, []).append(d)
    tables = tuple((relid, tuple(defs)) for relid, defs in sorted(by_table.items())
                   if any(big is not small and _droppable(small) and covers(big, small)
                          for small in defs for big in defs))
    wanted = {relid for relid, _ in tables}
    relations = {r.relid: r for r in catalog.relations if r.relid in wanted}
    return _Candidates(tables, relations)


def _duplicate_finding(small: IndexDef, big: IndexDef, relation: snapshot_pb2.Relation | None,
                       stats: Mapping[int, snapshot_pb2.IndexStats]) -> findings.Finding:
    table = relation.name if relation else ""
    name = findings.table_key(small.schema, small.name)
    exact = _same_shape(small, big)
    small_stats = stats.get(small.indexrelid)
    return findings.Finding(
        detector=DetectorId.DUPLICATE_INDEX, target_key=name,
        target=_index_target(small.schema, table, small.name),
        action=DEFAULT_ACTION[DetectorId.DUPLICATE_INDEX], severity="info",
        summary=(f"index {name} on {table} is "
                 + ("a duplicate of" if exact else "a leading prefix of")
                 + f" {big.schema}.{big.name}, which serves the same reads"),
        evidence={"duplicate_of": f"{big.schema}.{big.name}", "exact": exact,
                  "definition": small.definition, "kept_definition": big.definition,
                  "size_bytes": small_stats.size_bytes if small_stats else None,
                  "idx_scan": small_stats.idx_scan if small_stats else None})


DETECTORS = (
    findings.Detector(DetectorId.INVALID_INDEX, invalid_index),
    findings.Detector(DetectorId.UNUSED_INDEX, unused_index),
    findings.Detector(DetectorId.DUPLICATE_INDEX, duplicate_index),
)
