"""How the engine drives the index actions through their states (``executor/index_*.py``).

create_index: (Running, under the ddl guard) HypoPG pre-check with the served statements'
text from pg_stat_statements -> a *before* window of those statements' mean time per call ->
CREATE INDEX CONCURRENTLY (INVALID leftovers cleaned, lock timeouts retried) -> Verifying with
the start of the *after* window stored in the status. Each tick, :func:`verify` looks again;
once the after window is long enough (and has the calls, or ``maxWait`` passed) it decides
keep-or-revert from the two windows and either keeps the index (Succeeded) or drops it
(RolledBack). The state lives in the Remediation status, so a restarted executor resumes a
verification where the last one stopped.
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


def target_of(record: records.Record) -> indexes.IndexTarget:
    """The index target of a create_index record (its name is the planned one)."""
    t = record.spec.target
    name = t.index or indexes.index_name(t.schema_ or "", t.table or "", t.columns)
    return indexes.IndexTarget(t.schema_ or "", t.table or "", tuple(t.columns), name)


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
    limits = spec.limits
    verdict = await index_precheck.precheck_create_index(
        conn, target.schema, target.table, target.columns, statements,
        min_cost_reduction=spec.thresholds.missing_index.min_cost_reduction,
        max_build_bytes=durations.parse_quantity(limits.max_index_build_size),
        max_indexes_per_table=limits.max_indexes_per_table)
    if not verdict.build:
        if verdict.retry:
            return indexes.IndexOutcome(RemediationState.FAILED, verdict.reason,
                                        before=verdict.numbers(),
                                        retry_after=indexes.backoff(record.status.attempts + 1))
        return verdict.rejected()
    verification = spec.verification
    before = await index_verify.measure(
        conn, t.queryids, _seconds(verification.window), min_calls=verification.min_calls,
        max_wait=_seconds(verification.max_wait))
    built = await index_build.build_index(conn, step, target, attempt=record.status.attempts + 1)
    built.before.update(verdict.numbers())
    built.before.update(before.numbers(BEFORE_WINDOW))
    if built.state is RemediationState.VERIFYING:
        start = await index_verify.sample(conn, t.queryids)
        built.after.update(start.as_status(VERIFY_START))
        built.message = f"{built.message}; verifying for {verification.window}"
    return built


async def repair(conn: db.Conn, record: records.Record) -> outcome.Outcome:
    """drop_invalid_index, reindex or drop_index of the target index."""
    t, spec = record.spec.target, record.spec
    step = plan.Plan(spec.action, spec.sql, spec.rollback_sql)
    schema, index, attempt = t.schema_ or "", t.index or "", record.status.attempts + 1
    if spec.action is ActionId.DROP_INVALID_INDEX:
        return await index_repair.drop_invalid_index(conn, step, schema, index, attempt=attempt)
    if spec.action is ActionId.REINDEX:
        return await index_repair.reindex(conn, step, schema, index, attempt=attempt)
    scans = spec.evidence.get("idx_scan")
    return await index_repair.drop_index(
        conn, step, schema, index, attempt=attempt,
        expected_scans=int(float(scans)) if scans else None)


def _before_window(record: records.Record) -> index_verify.Window:
    numbers = record.status.before
    return index_verify.Window(seconds=numbers.get(f"{BEFORE_WINDOW}seconds", 0.0),
                               calls=int(numbers.get(f"{BEFORE_WINDOW}calls", 0)),
                               total_ms=numbers.get(f"{BEFORE_WINDOW}total_ms", 0.0))


async def verify(conn: db.Conn, record: records.Record,
                 spec: monitor.DatabaseMonitorSpec) -> outcome.Outcome | None:
    """Decide keep-or-revert once the after window is complete; None: not yet."""
    start = index_verify.Sample.from_status(record.status.after, VERIFY_START)
    if start is None:
        return outcome.Outcome(RemediationState.FAILED, "no verification window was started")
    verification = spec.verification
    end = await index_verify.sample(conn, record.spec.target.queryids)
    after = index_verify.window(start, end)
    if after.seconds < _seconds(verification.window):
        return None
    if after.calls < verification.min_calls and after.seconds < _seconds(verification.max_wait):
        return None
    decision = index_verify.decide(_before_window(record), after, verification.min_calls,
                                   verification.min_improvement)
    timeouts = policy.timeouts_for(spec, RiskClass.DDL)
    step = plan.Plan(record.spec.action, record.spec.sql, record.spec.rollback_sql)
    async with guard.guarded(conn, RiskClass.DDL, timeouts.lock_timeout,
                             timeouts.statement_timeout):
        final = await index_verify.keep_or_revert(conn, step, target_of(record), decision,
                                                  attempt=record.status.attempts + 1)
    record.status.decision = decision
    final.after = {**record.status.after, **after.numbers(AFTER_WINDOW), **final.after}
    final.before = record.status.before
    return final


def retry_at(result: outcome.Outcome) -> float | None:
    """Seconds until a retry, when the outcome asks for one."""
    return result.retry_after if isinstance(result, indexes.IndexOutcome) else None

