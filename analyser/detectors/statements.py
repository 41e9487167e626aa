"""Statement detectors: ``slow_statement`` (advice) and ``missing_index`` (create_index).

Inputs: pg_stat_statements deltas by queryid (``Window.statement_deltas``: reset- and
eviction-aware, summed over the roles and nesting levels of one queryid), the statement texts
this stream carried (``Window.texts``), the catalog (``Window.catalog``), and the tables'
counters (seq scans, rows read by them, row writes).

Both look at the **recent window**: the longest span the history of the current counter
series offers, up to :data:`RECENT_WINDOW`. Right after a start or a reset that is a single
interval, and the count minimums (``slow_statement.minCalls``, the time-per-second floors)
keep such a short window from firing on noise. Regressions compare the recent window with the
history behind it (the **baseline**, up to :data:`BASELINE_WINDOW`; the engine keeps that
much history).

``missing_index`` parses hot statements (``analyser/sqlparse.py``), and proposes for a table
that is large, seq-scanned often and fully (rows read per seq scan), the one- or two-column
btree that would serve the most statement time, unless an existing valid, non-partial index leads
with one of the statement's predicate columns, or the statements return too large a fraction
of the table per call (rows per call / reltuples against ``maxSelectivity``: ``pg_stats`` is
not readable with pg_monitor). The executor's HypoPG pre-check is the final judge.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from startupmonkey.analyser import findings, history, sqlparse
from startupmonkey.analyser.history import Window
from startupmonkey.models import durations, remediation, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, DetectorId
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section

RECENT_WINDOW: Final = 300.0
"""Seconds of history the statement numbers are computed over (at most)."""
BASELINE_WINDOW: Final = 900.0
"""Seconds of history behind the recent window a regression is measured against."""
HISTORY_SECONDS: Final = RECENT_WINDOW + BASELINE_WINDOW
"""What these detectors need the engine to keep."""
MAX_HOT: Final = 100
"""Statements (by time per second) parsed for index candidates in one round."""
MAX_PER_TABLE: Final = 2
"""Index candidates proposed for one table in one round."""
MAX_EVIDENCE_STATEMENTS: Final = 3
"""Statements whose text and numbers go into a missing_index detection's evidence."""
TEXT_CHARS: Final = 300
"""Statement text kept in evidence."""
MAX_WANTED_TEXTS: Final = 16
"""Texts of hot statements asked from the collector per snapshot (Ack)."""
FIELDS: Final = ("calls", "total_exec_time_ms", "rows", "shared_blks_hit",
                 "shared_blks_read", "temp_blks_written")
TABLE_FIELDS: Final = ("seq_scan", "seq_tup_read", "n_tup_ins", "n_tup_upd", "n_tup_del")
_STORED: Final = frozenset({"r", "m"})
"""Relation kinds that get an index with CREATE INDEX CONCURRENTLY (partitioned parents
cannot)."""


# ---- statement numbers over the recent window


@dataclasses.dataclass
class Stat:
    """One queryid over a window: the deltas of its entries (roles, nesting levels) summed,
    rates summed per entry (each entry's delta has its own elapsed time)."""

    queryid: int
    calls: float = 0.0
    total_ms: float = 0.0
    rows: float = 0.0
    blks_hit: float = 0.0
    blks_read: float = 0.0
    temp_written: float = 0.0
    time_per_s: float = 0.0
    """Seconds of execution per second."""
    calls_per_s: float = 0.0
    toplevel_time_per_s: float = 0.0
    seconds: float = 0.0

    def add(self, values: Mapping[str, float], seconds: float, toplevel: bool) -> None:
        self.calls += values["calls"]
        self.total_ms += values["total_exec_time_ms"]
        self.rows += values["rows"]
        self.blks_hit += values.get("shared_blks_hit", 0.0)
        self.blks_read += values.get("shared_blks_read", 0.0)
        self.temp_written += values.get("temp_blks_written", 0.0)
        rate = values["total_exec_time_ms"] / 1000.0 / seconds
        self.time_per_s += rate
        self.calls_per_s += values["calls"] / seconds
        if toplevel:
            self.toplevel_time_per_s += rate
        self.seconds = max(self.seconds, seconds)

    @property
    def mean_ms(self) -> float:
        """Mean execution time per call."""
        return self.total_ms / self.calls if self.calls else 0.0

    @property
    def rows_per_call(self) -> float:
        """Rows returned or affected per call."""
        return self.rows / self.calls if self.calls else 0.0

    def per_call(self, value: float) -> float:
        """A counter per call."""
        return value / self.calls if self.calls else 0.0


@dataclasses.dataclass(frozen=True)
class Recent:
    """Statement numbers of one round: the recent window and the baseline behind it."""

    stats: Mapping[int, Stat]
    baseline: Mapping[int, Stat]
    database_time_per_s: float
    """Top-level statement time per second of the whole database (shares are of this)."""
    seconds: float


def _ages(window: Window, section: int, epoch: str) -> list[float]:
    """Ages in seconds (before the newest sample) of the older samples of the current counter
    series that have ``section``, newest first."""
    current = getattr(window.latest, epoch)
    if current is history.UNKNOWN or not window.present(section):
        return []
    now = window.time_of(section)
    ages = []
    for sample in window.behind():
        if not sample.present(section) or getattr(sample, epoch) is history.UNKNOWN:
            continue
        if getattr(sample, epoch) != current:
            break  # a reset lies between
        ages.append((now - sample.time_of(section)).total_seconds())
    return ages


def _span(ages: Sequence[float]) -> float | None:
    """The oldest age within the recent window (None: only the previous sample is usable)."""
    within = [a for a in ages if a <= RECENT_WINDOW]
    return within[-1] if len(within) > 1 else None


_memo: weakref.WeakKeyDictionary[Window, dict[str, Any]] = weakref.WeakKeyDictionary()


def _memoized(window: Window, name: str, compute: Callable[[Window], Any]) -> Any:
    """One computation per window and name (two detectors and the engine share it)."""
    slot = _memo.setdefault(window, {})
    if name not in slot:
        slot[name] = compute(window)
    return slot[name]


def recent(window: Window) -> Recent:
    """Per-queryid statement numbers over the recent window, and the baseline behind it.
    Raises NoData without an earlier sample of the same statement series."""
    result: Recent = _memoized(window, "recent", _recent)
    return result


def _recent(window: Window) -> Recent:
    ages = _ages(window, S.SECTION_STATEMENTS, "stmt_epoch")
    if not ages:
        raise findings.NoData("no earlier sample of the statement counters in this series")
    span = _span(ages)
    latest: Mapping[history.StatementKey, history.Delta] = window.statement_deltas(FIELDS)
    # longest: a statement first run (or run again after an eviction) inside the window is
    # judged over every sample that has it, not over the last interval only. No baseline for
    # an entry whose window needed it (shorter than the span): behind it lies another
    # incarnation of the entry or none, which PostgreSQL before 17 may not tell apart
    # (evicted and re-created between two reads), and whose counters are no baseline.
    longer = (window.statement_deltas(FIELDS, over=span, longest=True)
              if span is not None else {})
    chosen = {**latest, **longer}
    full = (window.statement_deltas(FIELDS, over=min(ages[-1], HISTORY_SECONDS))
            if ages[-1] > (span or ages[0]) else {})
    stats: dict[int, Stat] = {}
    baseline: dict[int, Stat] = {}
    # In key order: the sums are then the same floats however the history holds the entries
    # (every entry in every sample, or only the changed ones: history.Sample.changed_only).
    for key in sorted(chosen, key=_entry_order):
        delta = chosen[key]
        queryid, toplevel = key[0], key[3] is not False
        stats.setdefault(queryid, Stat(queryid)).add(delta.values, delta.seconds, toplevel)
        older = full.get(key) if span is None or delta.seconds >= span else None
        if older is not None and older.since < delta.since:
            values = {f: older[f] - delta[f] for f in FIELDS}
            seconds = (delta.since - older.since).total_seconds()
            if all(v >= 0 for v in values.values()):
                baseline.setdefault(queryid, Stat(queryid)).add(values, seconds, toplevel)
    total = sum(s.toplevel_time_per_s for s in stats.values())
    seconds = max((d.seconds for d in chosen.values()), default=0.0)
    return Recent(stats, baseline, total, seconds)


def _entry_order(key: history.StatementKey) -> tuple[int, int, int, int]:
    return (key[0], key[1], key[2], -1 if key[3] is None else int(key[3]))


def _recent_tables(window: Window, only: Collection[int]) -> dict[int, history.Delta]:
    """Counter deltas over the recent window of the tables ``only`` names (NoData without an
    earlier sample)."""
    ages = _ages(window, S.SECTION_TABLES, "db_epoch")
    if not ages:
        raise findings.NoData("no earlier sample of the table counters in this series")
    span = _span(ages)
    latest = window.table_deltas(TABLE_FIELDS, only=only)
    return {**latest, **(window.table_deltas(TABLE_FIELDS, over=span, only=only, longest=True)
                         if span else {})}


def _text(window: Window, queryid: int, limit: int = TEXT_CHARS) -> str | None:
    text = window.texts.get(queryid)
    return " ".join(text.text.split())[:limit] if text is not None else None


def wanted_texts(window: Window) -> tuple[int, ...]:
    """Hot queryids (by time per second over the recent window) whose text this stream has
    not carried: the engine asks the collector for them (``Ack.want_statement_texts``)."""
    try:
        numbers = recent(window)
    except findings.NoData:
        return ()
    hot = sorted(numbers.stats.values(), key=lambda s: (-s.time_per_s, s.queryid))[:MAX_HOT]
    missing = [s.queryid for s in hot if s.time_per_s > 0 and s.queryid not in window.texts]
    return tuple(missing[:MAX_WANTED_TEXTS])


# ---- slow_statement


def slow_statement(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Statements with at least ``minCalls`` calls in the recent window at a mean of at
    least ``minMeanTime`` that either take ``minShare`` of the database's statement time or
    regressed: a mean at least ``regressionFactor`` times their own baseline mean (the
    baseline also needs ``minCalls``). Advice: nothing is executed."""
    window.require(S.SECTION_STATEMENTS)
    limits = all_limits.slow_statement
    numbers = recent(window)
    min_mean_ms = durations.parse_duration(limits.min_mean_time) * 1000.0
    found = []
    for stat in sorted(numbers.stats.values(), key=lambda s: s.queryid):
        if stat.calls < limits.min_calls or stat.mean_ms < min_mean_ms:
            continue
        share = (stat.time_per_s / numbers.database_time_per_s
                 if numbers.database_time_per_s > 0 else 0.0)
        base = numbers.baseline.get(stat.queryid)
        base_mean = base.mean_ms if base is not None and base.calls >= limits.min_calls else None
        factor = stat.mean_ms / base_mean if base_mean else None
        regressed = factor is not None and factor >= limits.regression_factor
        if share >= limits.min_share or regressed:
            found.append(_slow_finding(window, stat, share, base, factor, regressed))
    return found


def _slow_finding(window: Window, stat: Stat, share: float, base: Stat | None,
                  factor: float | None, regressed: bool) -> findings.Finding:
    text = _text(window, stat.queryid)
    summary = (f"statement {stat.queryid} ran {stat.calls:.0f} times at {stat.mean_ms:.1f} ms "
               f"mean over {stat.seconds:.0f}s, {share:.0%} of the database's statement time")
    if regressed and base is not None and factor is not None:
        summary += f", {factor:.1f}x its baseline mean of {base.mean_ms:.1f} ms"
    if text:
        summary += f": {text[:200]}"
    return findings.Finding(
        detector=DetectorId.SLOW_STATEMENT, target_key=f"queryid={stat.queryid}",
        target=remediation.Target(queryids=[str(stat.queryid)]),
        action=DEFAULT_ACTION[DetectorId.SLOW_STATEMENT],
        severity="critical" if share >= 0.5 else "warning", summary=summary,
        evidence={"queryid": str(stat.queryid), "calls": round(stat.calls),
                  "calls_per_s": round(stat.calls_per_s, 3), "mean_ms": round(stat.mean_ms, 3),
                  "total_ms": round(stat.total_ms, 1), "time_per_s": round(stat.time_per_s, 4),
                  "share": round(share, 4), "rows_per_call": round(stat.rows_per_call, 2),
                  "shared_blks_hit_per_call": round(stat.per_call(stat.blks_hit), 1),
                  "shared_blks_read_per_call": round(stat.per_call(stat.blks_read), 1),
                  "temp_blks_written_per_call": round(stat.per_call(stat.temp_written), 1),
                  "window_s": round(stat.seconds, 1),
                  "baseline_mean_ms": round(base.mean_ms, 3) if base is not None else None,
                  "baseline_calls": round(base.calls) if base is not None else None,
                  "regression_factor": round(factor, 2) if factor is not None else None,
                  "regressed": regressed, "query": text})


# ---- missing_index


@dataclasses.dataclass(frozen=True)
class Need:
    """One statement's candidate on one table, with what the statement costs."""

    stat: Stat
    candidate: sqlparse.Candidate
    rows_match: bool
    """The statement's rows per call are the rows its predicates matched."""
    selectivity: float | None = None
    """Rows per call / table rows; None when unknown (rows are not matches)."""


@dataclasses.dataclass(frozen=True)
class TableFacts:
    """A table's size, scan and write numbers over the recent window."""

    stats: snapshot_pb2.TableStats
    rows: float
    delta: history.Delta
    indexes: tuple[snapshot_pb2.IndexDef, ...]
    calls_per_s: float = 0.0
    """Calls per second of the hot statements with a candidate on this table."""

    @property
    def raw_seq_scans_per_s(self) -> float:
        """``seq_scan`` per second as PostgreSQL counts it: once per parallel worker."""
        return self.delta.rate("seq_scan")

    @property
    def seq_scans_per_s(self) -> float:
        """Seq scans per second counted once per statement: a parallel scan adds one to
        ``seq_scan`` per worker and the leader, so at most one a call of the statements
        that use the table (when they are known)."""
        raw = self.raw_seq_scans_per_s
        return min(raw, self.calls_per_s) if self.calls_per_s > 0 else raw

    @property
    def rows_per_seq_scan(self) -> float:
        scans = min(self.delta["seq_scan"], self.seq_scans_per_s * self.delta.seconds)
        return self.delta["seq_tup_read"] / scans if scans > 0 else 0.0

    def per_s(self, field: str) -> float:
        return self.delta.rate(field)


def missing_index(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Btree candidates (one or two leading columns, equality before range) for large,
    often and fully seq-scanned tables, from the predicates of the statements that spend the
    time; never what an existing valid index already serves, never for statements returning
    more than ``maxSelectivity`` of the table per call. Needs the catalog."""
    window.require(S.SECTION_TABLES, S.SECTION_STATEMENTS)
    if window.catalog is None or not window.catalog_complete:
        raise findings.NoData("no complete catalog for the current catalog hash")
    limits = all_limits.missing_index
    numbers = recent(window)
    needs = _needs(window, numbers, window.catalog)
    by_table: dict[int, list[Need]] = collections.defaultdict(list)
    for need in needs:
        by_table[need.candidate.table.relid].append(need)
    deltas = _recent_tables(window, by_table)  # only the tables a statement wants an index on
    found = []
    for relid, table_needs in sorted(by_table.items()):
        calls = sum({n.stat.queryid: n.stat.calls_per_s for n in table_needs}.values())
        facts = _facts(window, relid, deltas, limits, calls)
        if facts is not None:
            found += _table_findings(window, facts, table_needs, limits)
    return found


def _needs(window: Window, numbers: Recent, catalog: snapshot_pb2.Catalog) -> list[Need]:
    names = sqlparse.names_of(catalog)
    hot = sorted((s for s in numbers.stats.values() if s.calls > 0 and s.time_per_s > 0),
                 key=lambda s: (-s.time_per_s, s.queryid))[:MAX_HOT]
    needs = []
    for stat in hot:
        text = window.texts.get(stat.queryid)
        if text is None:
            continue
        parsed = sqlparse.parse(text.text, text.truncated)
        if isinstance(parsed, sqlparse.Skipped):
            continue
        for use in sqlparse.uses(parsed, names):
            for candidate in sqlparse.candidates(use):
                needs.append(Need(stat, candidate, parsed.rows_match))
    return needs


def _facts(window: Window, relid: int, deltas: Mapping[int, history.Delta],
           limits: thresholds.MissingIndex, calls_per_s: float = 0.0) -> TableFacts | None:
    """The table's numbers when it is worth an index at all: stored, at least
    ``minTableRows`` rows, seq-scanned at least ``minSeqScansPerSecond``, each seq scan
    reading at least ``minTableRows`` rows (scans that stop early are cheap)."""
    table = window.latest.tables.get(relid)
    delta = deltas.get(relid)
    if table is None or delta is None or table.relkind not in _STORED:
        return None
    rows = table.reltuples if table.reltuples >= 0 else float(table.n_live_tup)
    indexes = (window.from_catalog("indexes_by_table", _indexes_by_table).get(relid, ())
               if window.catalog else ())
    facts = TableFacts(table, rows, delta, indexes, calls_per_s)
    if (rows < limits.min_table_rows or facts.seq_scans_per_s <= 0
            or facts.seq_scans_per_s < limits.min_seq_scans_per_second
            or facts.rows_per_seq_scan < limits.min_table_rows):
        return None
    return facts


def _indexes_by_table(catalog: snapshot_pb2.Catalog
                      ) -> dict[int, tuple[snapshot_pb2.IndexDef, ...]]:
    """The catalog's indexes of each table, in catalog order (once per catalog: a scan of every
    index for every candidate table cost about a fifth of a 1,000-table snapshot)."""
    grouped: dict[int, list[snapshot_pb2.IndexDef]] = collections.defaultdict(list)
    for index in catalog.indexes:
        grouped[index.relid].append(index)
    return {relid: tuple(indexes) for relid, indexes in grouped.items()}


def served(candidate: sqlparse.Candidate, indexes: Iterable[snapshot_pb2.IndexDef]) -> bool:
    """True when a valid, live, non-partial index already leads with one of the candidate's
    columns usable for the predicate (btree: equality or range; hash: equality), so the
    statement can already use an index there (the planner, not us, picks between them).

    Deliberately conservative: *any* such index suppresses the candidate, not only one with
    the candidate's own leading columns (docs/analyser.md, missing_index, "Decision").
    A partial index does not count: the planner uses it only when the statement's WHERE
    implies the index predicate, which a normalized text with ``$n`` parameters cannot show.
    """
    usable = {*candidate.equal, *((candidate.range,) if candidate.range else ()),
              *((candidate.order,) if candidate.order else ())}
    for index in indexes:
        if not (index.valid and index.live) or index.has_predicate:
            continue
        if not index.key_attnums or index.key_attnums[0] == 0:
            continue
        first = index.key_columns[0] if index.key_columns else ""
        if (index.method == "btree" and first in usable) or (
                index.method == "hash" and first in candidate.equal):
            return True
    return False


def _usable(needs: Iterable[Need], facts: TableFacts, limits: thresholds.MissingIndex
            ) -> list[Need]:
    """Needs not already served, with a selectivity an index can help."""
    out = []
    for need in needs:
        selectivity = (need.stat.rows_per_call / facts.rows
                       if need.rows_match and facts.rows > 0 else None)
        if selectivity is not None and selectivity > limits.max_selectivity:
            continue
        if served(need.candidate, facts.indexes):
            continue
        out.append(dataclasses.replace(need, selectivity=selectivity))
    return out


def _weights(needs: Iterable[Need]) -> Callable[[str], float]:
    """Statement time per second filtering by each equality column (the key order)."""
    weight: dict[str, float] = collections.defaultdict(float)
    for need in needs:
        for column in need.candidate.equal:
            weight[column] += need.stat.time_per_s
    return lambda c: weight[c]


def _choose(needs: list[Need], limit: float) -> list[tuple[tuple[str, ...], list[Need]]]:
    """Greedy: the key columns serving the most statement time (a key serves a statement
    whose own key is a leading prefix of it), then the next among the rest, while the time
    served is at least ``limit``. Equality columns are ordered by the statement time that
    filters by them (so one index serves more statements), ties by order in the text."""
    rank = _weights(needs)

    def key(need: Need) -> tuple[str, ...]:
        return need.candidate.columns(rank)

    def serves(columns: tuple[str, ...], need: Need) -> bool:
        own = key(need)
        return columns[:len(own)] == own

    def time(group: Iterable[Need]) -> float:
        return sum({n.stat.queryid: n.stat.time_per_s for n in group}.values())

    chosen: list[tuple[tuple[str, ...], list[Need]]] = []
    remaining = list(needs)
    while remaining and len(chosen) < MAX_PER_TABLE:
        options = sorted({key(n) for n in remaining})
        scored = [(time(n for n in remaining if serves(o, n)), o) for o in options]
        best_time, best = max(scored, key=lambda pair: (pair[0], -len(pair[1])))
        if best_time < limit or best_time <= 0:
            break
        group = [n for n in remaining if serves(best, n)]
        chosen.append((best, group))
        remaining = [n for n in remaining if not serves(best, n)]
    return chosen


def _table_findings(window: Window, facts: TableFacts, needs: list[Need],
                    limits: thresholds.MissingIndex) -> list[findings.Finding]:
    usable = _usable(needs, facts, limits)
    chosen = _choose(usable, limits.min_statement_time_per_second)
    rank = _weights(usable)
    return [_index_finding(window, facts, columns, group, limits, rank)
            for columns, group in chosen]


def _key_facts(columns: tuple[str, ...], group: Sequence[Need], time_per_s: float,
               rank: Callable[[str], float]) -> dict[str, findings.EvidenceValue]:
    """What the executor needs to judge the key: how many leading columns every statement
    compares by equality (their selectivity is what it estimates), whether every statement
    stops after ORDER BY ... LIMIT rows through it, and the keys considered."""
    width = 0
    for i, column in enumerate(columns):
        if not all(column in n.candidate.equal for n in group
                   if len(n.candidate.columns(rank)) > i):
            break
        width += 1
    considered = [columns, *sorted({a for n in group for a in n.candidate.alternatives(rank)
                                    if a != columns})]
    names = " | ".join("(" + ", ".join(ident(c) for c in key) + ")" for key in considered)
    why = (f"({', '.join(ident(c) for c in columns)}) serves {time_per_s:.3f}s per second of "
           "statement time, the most of the keys of the table's statements (equality "
           "columns first, by the time filtering on them; then a range column, else the "
           "ORDER BY ... LIMIT column)")
    if len(considered) > 1:
        why += ("; the other key(s) end with the ORDER BY ... LIMIT column instead of the "
                "range column: the executor's HypoPG pre-check costs each")
    return {"equality_columns": width, "candidate_keys": json.dumps([list(k) for k in considered]),
            "limited": all(n.candidate.limited and len(n.candidate.columns(rank)) ==
                           len(columns) for n in group),
            "candidates": names, "candidate_choice": why}


ident = findings.ident


def _saving(selectivity: float | None, limits: thresholds.MissingIndex,
            random_over_seq: float) -> float:
    """Fraction of a statement's time an index could save: a seq scan reads every row at
    sequential cost, an index scan the matching fraction at random cost (unknown
    selectivity: assume the largest allowed)."""
    fraction = selectivity if selectivity is not None else limits.max_selectivity
    return max(0.0, 1.0 - fraction * random_over_seq)


def _index_finding(window: Window, facts: TableFacts, columns: tuple[str, ...],
                   group: list[Need], limits: thresholds.MissingIndex,
                   rank: Callable[[str], float]) -> findings.Finding:
    table = facts.stats
    statements = sorted({n.stat.queryid: n for n in group}.values(),
                        key=lambda n: (-n.stat.time_per_s, n.stat.queryid))
    time_per_s = sum(n.stat.time_per_s for n in statements)
    ratio = (window.setting_float("random_page_cost", 4.0)
             / max(window.setting_float("seq_page_cost", 1.0), 1e-6))
    saving = sum(n.stat.time_per_s * _saving(n.selectivity, limits, ratio) for n in statements)
    known = [n.selectivity for n in statements if n.selectivity is not None]
    writes = sum(facts.per_s(f) for f in ("n_tup_ins", "n_tup_upd", "n_tup_del"))
    name = findings.table_key(table.schema, table.name)
    key_columns = ", ".join(ident(c) for c in columns)
    qualified = f"{ident(table.schema)}.{ident(table.name)}"
    predicates = sorted({n.candidate.predicate for n in statements})
    evidence: dict[str, findings.EvidenceValue] = {
        "columns": key_columns, "predicate": ",".join(predicates),
        "index_definition": f"CREATE INDEX ON {qualified} USING btree ({key_columns})",
        "statements": len(statements),
        "queryids": ",".join(str(n.stat.queryid) for n in statements),
        "statement_time_per_s": round(time_per_s, 4),
        "calls_per_s": round(sum(n.stat.calls_per_s for n in statements), 3),
        "estimated_saving_s_per_s": round(saving, 4),
        "estimated_saving_ratio": round(saving / time_per_s, 3) if time_per_s else None,
        "selectivity": round(max(known), 6) if known else None,
        "selectivity_known": len(known) == len(statements),
        "reltuples": table.reltuples, "table_bytes": table.table_bytes,
        **_key_facts(columns, group, time_per_s, rank),
        "seq_scans_per_s": round(facts.seq_scans_per_s, 3),
        "seq_scans_per_worker_per_s": round(facts.raw_seq_scans_per_s, 3),
        "rows_per_seq_scan": round(facts.rows_per_seq_scan),
        "writes_per_s": round(writes, 3),
        "inserts_per_s": round(facts.per_s("n_tup_ins"), 3),
        "updates_per_s": round(facts.per_s("n_tup_upd"), 3),
        "deletes_per_s": round(facts.per_s("n_tup_del"), 3),
        "existing_indexes": len(facts.indexes), "window_s": round(facts.delta.seconds, 1),
        **_before_evidence(statements[:64])}
    for n, need in enumerate(statements[:MAX_EVIDENCE_STATEMENTS], start=1):
        evidence.update(_statement_evidence(window, n, need))
    return findings.Finding(
        detector=DetectorId.MISSING_INDEX, target_key=f"{name}({key_columns})",
        target=remediation.Target(schema_=table.schema, table=table.name,
                                  columns=list(columns),
                                  queryids=[str(n.stat.queryid) for n in statements[:64]]),
        action=DEFAULT_ACTION[DetectorId.MISSING_INDEX],
        severity="critical" if time_per_s >= 1.0 else "warning",
        summary=(f"{qualified} needs an index on ({key_columns}): {len(statements)} "
                 f"statement(s) spend {time_per_s:.3f}s per second on it "
                 f"({facts.seq_scans_per_s:.1f} seq scans/s of ~"
                 f"{facts.rows_per_seq_scan:.0f} rows); an index could save about "
                 f"{saving:.3f}s per second; writes: {writes:.1f} rows/s"),
        evidence=evidence)


def _before_evidence(needs: Sequence[Need]) -> dict[str, findings.EvidenceValue]:
    """The *before* figure of the executor's keep-or-revert: calls and execution time of the
    target queryids over the window this detection was judged on (the executor builds at
    once and measures only the after window against this; docs/indexes.md)."""
    stats = {n.stat.queryid: n.stat for n in needs}.values()
    calls = sum(s.calls for s in stats)
    total_ms = sum(s.total_ms for s in stats)
    return {"before_calls": round(calls), "before_total_ms": round(total_ms, 3),
            "before_mean_ms": round(total_ms / calls, 4) if calls else None,
            "before_window_s": round(max((s.seconds for s in stats), default=0.0), 1)}


def _statement_evidence(window: Window, n: int, need: Need
                        ) -> dict[str, findings.EvidenceValue]:
    stat = need.stat
    return {f"statement_{n}": _text(window, stat.queryid),
            f"statement_{n}_queryid": str(stat.queryid),
            f"statement_{n}_time_per_s": round(stat.time_per_s, 4),
            f"statement_{n}_calls_per_s": round(stat.calls_per_s, 3),
            f"statement_{n}_mean_ms": round(stat.mean_ms, 3),
            f"statement_{n}_rows_per_call": round(stat.rows_per_call, 2),
            f"statement_{n}_selectivity": (round(need.selectivity, 6)
                                           if need.selectivity is not None else None)}


def within_budget(found: Sequence[findings.Finding], budget: int) -> list[findings.Finding]:
    """missing_index findings the per-table index budget (``spec.limits.
    maxIndexesPerTable``) leaves room for, largest saving first. Existing indexes count in
    any state, as the executor counts them."""
    used: collections.Counter[tuple[str | None, str | None]] = collections.Counter()
    kept = []
    for finding in sorted(found, key=lambda f: -_number(f.evidence.get(
            "estimated_saving_s_per_s"))):
        table = (finding.target.schema_, finding.target.table)
        if _number(finding.evidence.get("existing_indexes")) + used[table] >= budget:
            continue
        used[table] += 1
        kept.append(finding)
    return kept


def _number(value: findings.EvidenceValue) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


DETECTORS = (
    findings.Detector(DetectorId.MISSING_INDEX, missing_index),
    findings.Detector(DetectorId.SLOW_STATEMENT, slow_statement),
)
