"""How the engine drives the index actions through their states (``executor/index_*.py``).

create_index: (Running, under the ddl guard) HypoPG pre-check with the served statements'
text from pg_stat_statements -> at once CREATE INDEX CONCURRENTLY (INVALID leftovers cleaned,
lock timeouts retried) -> Verifying with the start of the *after* window (the statements'
counters and the index's own ``idx_scan``) stored in the status. The *before* figure is not
waited for: it is the window the analyser measured, carried in the detection's evidence, with
the cumulative pg_stat_statements counters read at plan time as the cross-check (and the
figure used when the evidence has none, or too few calls). Each tick, :func:`verify` looks
again; once the after window is long enough (and has the calls, or ``maxWait`` passed) it
decides keep-or-revert and either keeps the index (Succeeded) or drops it (RolledBack): an
index whose ``idx_scan`` did not grow is dropped whatever the timing says. The state lives in
the Remediation status, so a restarted executor resumes a verification where the last one
stopped.
"""

from __future__ import annotations

from startupmonkey import db
from startupmonkey.executor import (
    guard,
    index_build,
    index_precheck,
    index_repair,
    index_verify,
    indexes,
    outcome,
    plan,
    policy,
    records,
)
from startupmonkey.models import durations, monitor
from startupmonkey.models.enums import ActionId, RemediationState, RiskClass

VERIFY_START = "verify_start."
BEFORE_WINDOW = "before_window_"
AFTER_WINDOW = "after_window_"
CROSS_CHECK = "plan_time_cumulative_"
"""The target queryids' counters since their entries began, read at plan time."""
INDEX_SCANS = "idx_scan"


def target_of(record: records.Record) -> indexes.IndexTarget:
    """The index target of a create_index record (its name is the planned one)."""
    t = record.spec.target
    name = t.index or indexes.index_name(t.schema_ or "", t.table or "", t.columns)
    return indexes.IndexTarget(t.schema_ or "", t.table or "", tuple(t.columns), name)


def equality_columns(record: records.Record) -> int | None:
    """How many leading target columns the statements compare by equality: the
    detection's ``equality_columns``, else from its ``predicate`` (a range column is last;
    join and range-only candidates have none to estimate); None (all) without either."""
    evidence = record.spec.evidence
    try:
        return max(0, min(len(record.spec.target.columns), int(evidence["equality_columns"])))
    except (KeyError, ValueError):
        pass
    predicates = set(filter(None, evidence.get("predicate", "").split(",")))
    if not predicates:
        return None
    if predicates & {"join", "range"}:
        return 0
    width = len(record.spec.target.columns)
    return width - 1 if "equality+range" in predicates else width


def candidate_keys(record: records.Record, limit: int = 4) -> list[tuple[str, ...]]:
    """The keys the detection considered (``candidate_keys``, a JSON list of column
    lists), at most ``limit``; anything else in that place is ignored."""
    return index_precheck.parse_candidate_keys(
        record.spec.evidence.get("candidate_keys", "[]"), limit)


def _flag(record: records.Record, key: str) -> bool:
    return record.spec.evidence.get(key, "").lower() == "true"


def _seconds(value: str) -> float:
    return durations.parse_duration(value)


async def create_index(conn: db.Conn, record: records.Record,
                       spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome:
    """Pre-check, measure before, build; ends Verifying, Rejected, or Failed (maybe retried)."""
    t, step = record.spec.target, plan.Plan(record.spec.action, record.spec.sql,
                                            record.spec.rollback_sql)
    target = target_of(record)
    statements = await index_precheck.statements_for(conn, t.queryids)
    if not statements:
        return outcome.Outcome.rejected("the statements to serve are no longer in "
                                        "pg_stat_statements; nothing to plan")
    if record.status.attempts and await index_build.built_earlier(conn, target):
        # A retry whose earlier attempt built the index and died before recording it: the
        # pre-check would now refuse ("already covers", the index budget) because of our own
        # index. Straight to the build step, which records it as built by that attempt and
        # goes on to keep-or-revert, so the record tells what was done.
        return await _build_and_measure(conn, record, step, target, spec, {})
    limits = spec.limits
    verdict = await index_precheck.precheck_create_index(
        conn, target.schema, target.table, target.columns, statements,
        min_cost_reduction=spec.thresholds.missing_index.min_cost_reduction,
        max_build_bytes=durations.parse_quantity(limits.max_index_build_size),
        max_indexes_per_table=limits.max_indexes_per_table,
        max_selectivity=spec.thresholds.missing_index.max_selectivity,
        equality_columns=equality_columns(record), limited=_flag(record, "limited"),
        alternatives=candidate_keys(record))
    if not verdict.build:
        if verdict.retry:
            return indexes.IndexOutcome(RemediationState.FAILED, verdict.reason,
                                        before=verdict.numbers(),
                                        retry_after=outcome.backoff(record.status.attempts + 1))
        return verdict.rejected()
    return await _build_and_measure(conn, record, step, target, spec, verdict.numbers())


async def _build_and_measure(conn: db.Conn, record: records.Record, step: plan.Plan,
                             target: indexes.IndexTarget, spec: monitor.DatabaseMonitorSpec,
                             checked: dict[str, float]) -> indexes.IndexOutcome:
    """The before figure, the build (or the earlier attempt's, found), the after window's
    start; ``checked``: the pre-check's numbers, if it ran."""
    t = record.spec.target
    verification = spec.verification
    before, source, numbers = await _before(conn, record, verification.min_calls)
    built = await index_build.build_index(conn, step, target, attempt=record.status.attempts + 1)
    built.before.update(checked)
    built.before.update(numbers)
    if built.state is RemediationState.VERIFYING:
        start = await index_verify.sample(conn, t.queryids)
        built.after.update(await _start_window(conn, target, start))
        mean = f"{before.mean_ms:.3f} ms" if before.mean_ms is not None else "unknown"
        built.message = (f"{built.message}; verifying for {verification.window} against the "
                         f"before figure from {source} (mean {mean} per call over "
                         f"{before.calls} calls)")
    return built


async def _before(conn: db.Conn, record: records.Record,
                  min_calls: int) -> tuple[index_verify.Window, str, dict[str, float]]:
    """The before window, where it came from, and the numbers for the status.

    The analyser's window (the detection's evidence) is the figure; the cumulative counters
    now are the cross-check, and the figure when the evidence has none or fewer than
    ``min_calls`` calls while the counters have enough."""
    measured = index_verify.cumulative_window(
        await index_verify.sample(conn, record.spec.target.queryids))
    history = index_verify.history_window(record.spec.evidence)
    numbers = measured.numbers(CROSS_CHECK)
    numbers.pop(f"{CROSS_CHECK}seconds", None)
    numbers.pop(f"{CROSS_CHECK}reset", None)
    if history is not None and (history.calls >= min_calls or measured.calls < min_calls):
        before, source = history, "the analyser's window"
    else:
        before, source = measured, "pg_stat_statements since the entries began"
    numbers.update(before.numbers(BEFORE_WINDOW))
    numbers[f"{BEFORE_WINDOW}from_history"] = float(before is history)
    if history is not None and history.mean_ms and measured.mean_ms:
        numbers["before_cross_check_ratio"] = measured.mean_ms / history.mean_ms
    return before, source, numbers


async def repair(conn: db.Conn, record: records.Record,
                 monitor_spec: monitor.DatabaseMonitorSpec | None = None) -> outcome.Outcome:
    """drop_invalid_index, reindex or drop_index of the target index. ``monitor_spec``: a
    builder that is not the executor's own is signalled only when its protection check
    passes (without it, only the executor's own builders are)."""
    t, spec = record.spec.target, record.spec
    step = plan.Plan(spec.action, spec.sql, spec.rollback_sql)
    schema, index, attempt = t.schema_ or "", t.index or "", record.status.attempts + 1
    if spec.action is ActionId.DROP_INVALID_INDEX:
        return await index_repair.drop_invalid_index(conn, step, schema, index, attempt=attempt,
                                                     spec=monitor_spec)
    if spec.action is ActionId.REINDEX:
        return await index_repair.reindex(conn, step, schema, index, attempt=attempt,
                                          spec=monitor_spec)
    scans = spec.evidence.get("idx_scan")
    return await index_repair.drop_index(
        conn, step, schema, index, attempt=attempt,
        expected_scans=int(float(scans)) if scans else None)


def _before_window(record: records.Record) -> index_verify.Window:
    numbers = record.status.before
    return index_verify.Window(seconds=numbers.get(f"{BEFORE_WINDOW}seconds", 0.0),
                               calls=int(numbers.get(f"{BEFORE_WINDOW}calls", 0)),
                               total_ms=numbers.get(f"{BEFORE_WINDOW}total_ms", 0.0))


async def _start_window(conn: db.Conn, target: indexes.IndexTarget,
                        start: index_verify.Sample) -> dict[str, float]:
    """The after window's start in status numbers: the statements' counters and the index's
    own ``idx_scan``."""
    numbers = start.as_status(VERIFY_START)
    scans = await index_verify.index_scans(conn, target.schema, target.name)
    if scans is not None:
        numbers[f"{VERIFY_START}{INDEX_SCANS}"] = float(scans)
    return numbers


async def _window_again(conn: db.Conn, record: records.Record,
                        start: index_verify.Sample) -> outcome.Outcome:
    """The server restarted during the after window: its counters (the index's ``idx_scan``
    too) may have been reset, so nothing measured across it is judged; the window starts
    again now, still Verifying."""
    target = target_of(record)
    if await index_verify.index_scans(conn, target.schema, target.name) is None:
        return outcome.Outcome(RemediationState.FAILED, f"{target.schema}.{target.name} is gone "
                               "after a PostgreSQL restart during the after window; nothing "
                               "is kept", before=record.status.before, after=record.status.after)
    kept = {k: v for k, v in record.status.after.items() if not k.startswith(VERIFY_START)}
    numbers = await _start_window(conn, target, start)
    return outcome.Outcome(
        RemediationState.VERIFYING, "PostgreSQL restarted during the after window (its "
        "counters may have been reset): the window starts again", before=record.status.before,
        after={**kept, **numbers})


async def verify(conn: db.Conn, record: records.Record,
                 spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome | None:
    """Decide keep-or-revert once the after window is complete; None: not yet."""
    start = index_verify.Sample.from_status(record.status.after, VERIFY_START)
    if start is None:
        return outcome.Outcome(RemediationState.FAILED, "no verification window was started")
    verification = spec.verification
    end = await index_verify.sample(conn, record.spec.target.queryids)
    if index_verify.restarted(start, end):
        return await _window_again(conn, record, end)
    after = index_verify.window(start, end)
    if after.seconds < _seconds(verification.window):
        return None
    if after.calls < verification.min_calls and after.seconds < _seconds(verification.max_wait):
        return None
    target = target_of(record)
    scans_start = record.status.after.get(f"{VERIFY_START}{INDEX_SCANS}")
    scans_now = await index_verify.index_scans(conn, target.schema, target.name)
    grown = (None if scans_start is None or scans_now is None
             else scans_now - int(scans_start))
    if grown is not None and grown < 0:  # the counter was reset: what was measured is void
        return await _window_again(conn, record, end)
    decision = index_verify.decide(_before_window(record), after, verification.min_calls,
                                   verification.min_improvement, index_scans=grown)
    timeouts = policy.timeouts_for(spec, RiskClass.DDL)
    step = plan.Plan(record.spec.action, record.spec.sql, record.spec.rollback_sql)
    async with guard.guarded(conn, RiskClass.DDL, timeouts.lock_timeout,
                             timeouts.statement_timeout):
        final = await index_verify.keep_or_revert(conn, step, target, decision,
                                                  attempt=record.status.attempts + 1)
    record.status.decision = decision
    scans = {} if grown is None else {f"{AFTER_WINDOW}{INDEX_SCANS}": float(grown)}
    final.after = {**record.status.after, **after.numbers(AFTER_WINDOW), **scans, **final.after}
    final.before = record.status.before
    return final

