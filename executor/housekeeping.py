"""Housekeeping: what the engine's tick (every interval) does with the records it did not just
open.

A pending approval is rejected, expires or is approved (a "no" first, then the deadline, then a
"yes"); an Approved record starts (gated starts are retried); a Verifying one is judged once its
after window is complete; a rollback request on a Succeeded one runs the planned rollback SQL
(hash checked); a Running record nobody runs any more (its executor died: same identity as ours,
its lease lapsed, or older than every timeout) ends Failed ("interrupted"), except a
``create_index`` build, which goes back to Approved as one more attempt; a record its executor
created but never planned ends Failed. Starts, verifications and rollbacks run in the background
(``executor/runs.py``)."""

from __future__ import annotations

import datetime
import logging

import psycopg

from startupmonkey import db
from startupmonkey.executor import (
    context,
    guard,
    index_flow,
    outcome,
    policy,
    records,
    runs,
)
from startupmonkey.models import durations, remediation
from startupmonkey.models.enums import ActionId, RemediationState

log = logging.getLogger(__name__)
#: How the message of a rollback that could not start yet (nothing claimed) begins.
ROLLBACK_WAITING = "rollback waiting"
#: How the message of a rollback attempt that met a busy lock (or lost the server) begins; the
#: history's count of them bounds the retries.
ROLLBACK_POSTPONED = "rollback postponed"
#: The rollback SQL that may run again after a lock timeout or a lost server.
IDEMPOTENT_ROLLBACK = "DROP INDEX CONCURRENTLY IF EXISTS "
#: How the message of a verification waiting for its database to let the executor in begins.
VERIFICATION_WAITING = "verification waiting"


class Housekeeping:
    """The engine's tick: approvals, expiries, gated starts, verifications, rollbacks and
    interrupted runs."""

    def __init__(self, ctx: context.Context, background: runs.Runs) -> None:
        self.ctx = ctx
        self.runs = background

    async def tick(self) -> None:
        """Approvals, expiries, gated starts and interrupted runs (call every interval)."""
        now = records.utcnow()
        active = await self.ctx.store.list(active=True)
        used = [record.approval_time_used(now) for record in active
                if record.state is RemediationState.PENDING_APPROVAL]
        self.ctx.metrics.approval_time_used.set(max((u for u in used if u is not None),
                                                    default=0.0))
        for record in active:
            try:
                await self._tick_one(record, now)
            except Exception as exc:  # one record's API error must not skip the others
                if not isinstance(exc, (psycopg.Error, OSError, *records.api_errors())):
                    log.exception("tick of %s failed", record.name)
                else:
                    log.warning("tick of %s failed: %s", record.name, db.safe_error(exc))

    async def _tick_one(self, record: records.Record, now: datetime.datetime) -> None:
        if record.state is RemediationState.PENDING_APPROVAL:
            await self._pending(record, now)
        elif record.state is RemediationState.APPROVED:
            self.runs.schedule_start(record)
        elif record.state is RemediationState.VERIFYING:
            self.schedule_verification(record)
        elif (record.state is RemediationState.SUCCEEDED and record.spec.rollback_sql
              and remediation.ANNOTATION_ROLLBACK in record.annotations):
            self.schedule_rollback(record)
        elif record.state is RemediationState.RUNNING and await self._orphaned(record):
            await self._orphan(record, now)
        elif record.state is RemediationState.PROPOSED and self._unplanned(record, now):
            # Created, but its executor died before it wrote the plan (the Kubernetes store
            # creates the object, then patches its status): it would block its key forever.
            await self.ctx.move(record, RemediationState.PROPOSED, RemediationState.FAILED,
                                "interrupted: the executor stopped before planning it; nothing "
                                "ran, and the problem will be re-detected")

    def schedule_verification(self, record: records.Record) -> None:
        """Keep-or-revert of a Verifying record once its after window is complete
        (in the background)."""
        due = record.status.next_attempt_time
        if due is not None and records.utcnow() < due:
            return
        self.runs.spawn(record, self._verify, "verification")

    async def _verify(self, record: records.Record) -> None:
        # A revert is an action of the record's class: a start of that class waits for it
        # here, still Approved, instead of meeting its advisory lock.
        # Re-read once the lock is ours: it may have waited for a long build, and a peer may
        # have decided meanwhile.
        async with self.runs.class_lock(record.spec.risk_class):
            if await self.runs.refresh(record, RemediationState.VERIFYING):
                await self._verify_now(record)

    async def _verify_now(self, record: records.Record) -> None:
        database = record.spec.database
        if not self.ctx.acts_in(database):
            # No DDL (a revert) in a database the configuration no longer lets us act in.
            await self.runs.finish(record, outcome.Outcome(
                RemediationState.FAILED,
                f"verification stopped: {runs.no_longer_acts_in(database)}; "
                f"{runs.left_in_place(record)} left in place, judge it yourself or list the "
                "database again"), expected=RemediationState.VERIFYING)
            return
        try:
            conn = await self._connect_again(database)
        except context.DatabaseRefused as exc:
            if database is not None and await self.runs.database_gone(database):
                # Gone: nothing is left to measure or revert.
                await self.runs.finish(record, outcome.Outcome(
                    RemediationState.FAILED, f"verification impossible: {exc.reason}"),
                    expected=RemediationState.VERIFYING)
            else:  # closed for a while (maintenance): judged once it lets us in again
                await self.runs.note(record, f"{VERIFICATION_WAITING}: {exc.reason}; "
                                     "retried at every tick", RemediationState.VERIFYING)
            return
        except (psycopg.Error, OSError) as exc:  # unreachable for now: the next tick retries
            log.info("verification of %s postponed: cannot connect: %s", record.name,
                     db.safe_error(exc))
            return
        try:
            result = await index_flow.verify(conn, record, self.ctx.config.spec)
        except (guard.Refused, psycopg.Error) as exc:
            log.info("verification of %s postponed: %s", record.name, db.safe_error(exc))
            return
        except Exception as exc:  # a bug or bad input must never leave it Verifying for ever
            log.exception("verification of %s failed unexpectedly", record.name)
            result = outcome.Outcome(RemediationState.FAILED, context.unexpected(exc))
        finally:
            await conn.close()
        if result is not None:
            await self.runs.finish(record, result, expected=RemediationState.VERIFYING)

    def schedule_rollback(self, record: records.Record) -> None:
        """Revert a kept change on request: run its planned rollback SQL (hash checked), in
        the background, once a postponed attempt's retry is due."""
        due = record.status.next_attempt_time
        if due is not None and records.utcnow() < due:
            return
        self.runs.spawn(record, self._claim_and_roll_back, "rollback")

    async def _claim_and_roll_back(self, record: records.Record) -> None:
        """Hash check, wait for the risk class, re-read: still Succeeded, roll it back."""
        async with self.runs.ready_to_run(record, RemediationState.SUCCEEDED, "refused: the "
                                          "rollback SQL does not match the planned hash") as ready:
            if ready:
                await self._run_rollback_sql(record)

    async def _run_rollback_sql(self, record: records.Record) -> None:
        """Connect and take the class's guard, then Succeeded -> Running, the rollback SQL,
        then RolledBack, back to Succeeded with a retry due (a lock timeout or a server that
        went away: nothing was undone, the request stands) or Failed. An unreachable
        database, a class lock someone else holds or a standby leave it Succeeded, unclaimed,
        with a message saying why, and the next tick tries again."""
        spec = record.spec
        request = record.annotations[remediation.ANNOTATION_ROLLBACK]
        timeouts = policy.timeouts_for(self.ctx.config.spec, spec.risk_class)
        if not self.ctx.acts_in(spec.database):
            # No DDL in a database the configuration no longer lets us act in; waiting could
            # last for ever, so the request ends.
            await self.ctx.move(
                record, RemediationState.SUCCEEDED, RemediationState.FAILED,
                f"not rolled back: {runs.no_longer_acts_in(spec.database)}, so nothing ran "
                f"there; {runs.left_in_place(record)} left in place: roll it back yourself "
                "(its rollback SQL) or list the database again")
            return
        try:
            conn = await self._connect_again(spec.database)
        except context.DatabaseRefused as exc:
            if spec.database is not None and await self.runs.database_gone(spec.database):
                # Nothing to roll back in a database that is gone: the request ends instead
                # of waiting for ever.
                await self.ctx.move(record, RemediationState.SUCCEEDED,
                                    RemediationState.FAILED,
                                    f"rollback impossible: {exc.reason}; nothing ran")
            else:  # closed for a while (maintenance): the request stands
                await self._rollback_waits(record, f"{exc.reason}; retried at every tick")
            return
        except (psycopg.Error, OSError) as exc:
            await self._rollback_waits(record, f"cannot connect: {db.safe_error(exc)}")
            return
        result: outcome.Outcome | None = None
        try:
            async with guard.guarded(conn, spec.risk_class, timeouts.lock_timeout,
                                     timeouts.statement_timeout):
                # The claim names this executor, as a start's does: a peer must not take the
                # running rollback for an orphan of the executor that ran the action.
                record.status.executor = self.ctx.identity
                if not await self.ctx.move(record, RemediationState.SUCCEEDED,
                                           RemediationState.RUNNING,
                                           f"rolling back on request of {request}"):
                    return
                try:
                    await conn.execute((spec.rollback_sql or "").encode())
                    result = outcome.Outcome(RemediationState.ROLLED_BACK,
                                             f"rolled back on request of {request}",
                                             executed_sql=[spec.rollback_sql or ""])
                except psycopg.Error as exc:
                    result = self._rollback_error(record, exc)
        except (guard.Refused, psycopg.Error, OSError) as exc:  # entering the guard
            if result is None:
                await self._rollback_waits(record, db.safe_error(exc)
                                           if not isinstance(exc, guard.Refused) else str(exc))
                return
        finally:
            await conn.close()
        assert result is not None  # the guarded block ran to its end
        record.status.executed_sql = [*record.status.executed_sql, *result.executed_sql]
        if not await self.ctx.move(record, RemediationState.RUNNING, result.state,
                                   result.message):
            log.error("lost the race to record the rollback of %s (%s: %s)", record.name,
                      result.state.value, result.message)

    async def _connect_again(self, database: str | None) -> db.Conn:
        """A connection to ``database`` for a verification or a rollback, asked anew even
        when a refusal is remembered (a database closed during maintenance opens again; these
        records wait for it, one attempt per tick); a success forgets the refusal, so starts
        and detections there resume too."""
        conn = await self.ctx.connect(database, remembered=False)
        if database is not None:
            self.ctx.forget_refusal(database)
        return conn

    async def _rollback_waits(self, record: records.Record, why: str) -> None:
        """Leave ``record`` Succeeded, its rollback request standing, with ``rollback
        waiting: why`` as its message."""
        await self.runs.note(record, f"{ROLLBACK_WAITING}: {why}", RemediationState.SUCCEEDED)

    def _rollback_error(self, record: records.Record, exc: psycopg.Error) -> outcome.Outcome:
        """A lock timeout or a server that went away postpones an idempotent rollback (back to
        Succeeded, a retry due, at most MAX_ATTEMPTS attempts, counted in the history); any
        other error, or any error of another rollback, ends it Failed."""
        error = db.safe_error(exc)
        # Only a rollback that may simply run again is retried: DROP INDEX CONCURRENTLY IF
        # EXISTS (a create_index's). A CREATE INDEX CONCURRENTLY (a drop_index's) that timed
        # out has already committed an INVALID index of the same name, so running it again
        # would fail "already exists": it ends Failed, and invalid_index proposes the repair.
        retryable = (isinstance(exc, psycopg.errors.LockNotAvailable) or db.server_gone(exc)) \
            and (record.spec.rollback_sql or "").startswith(IDEMPOTENT_ROLLBACK)
        postponed = sum(1 for step in record.status.history
                        if step.message.startswith(ROLLBACK_POSTPONED))
        if not retryable:
            return outcome.Outcome(RemediationState.FAILED, f"rollback failed: {error}")
        if postponed + 1 >= context.MAX_ATTEMPTS:
            return outcome.Outcome(RemediationState.FAILED, f"rollback failed: {error}; giving "
                                   f"up after {context.MAX_ATTEMPTS} attempts")
        record.status.next_attempt_time = records.utcnow() + datetime.timedelta(
            seconds=outcome.backoff(postponed + 1))
        return outcome.Outcome(
            RemediationState.SUCCEEDED,
            f"{ROLLBACK_POSTPONED}: {error}; attempt {postponed + 1} of "
            f"{context.MAX_ATTEMPTS}, retrying at {record.status.next_attempt_time.isoformat()}"
            "; the change stays in place until then and the request stands")

    def _unplanned(self, record: records.Record, now: datetime.datetime) -> bool:
        """Proposed for longer than planning could take (15 s, or three intervals): planning
        happens before the record is stored, so only a create whose status patch never came
        is Proposed for more than one API round trip (and the patch carries the
        resourceVersion, so a late one loses to this move instead of overwriting it)."""
        grace = max(15.0, 3 * durations.parse_duration(self.ctx.config.spec.interval))
        return record.name not in self.runs.active and (
            now - record.created > datetime.timedelta(seconds=grace))

    async def _orphan(self, record: records.Record, now: datetime.datetime) -> None:
        """End a Running record whose executor is gone. A create_index build (not a rollback)
        is retried: its INVALID leftover is dropped (and recorded) by the next attempt before it
        builds again, as after a clean failure; anything else ends Failed."""
        gone = f"interrupted: executor {record.status.executor} stopped during the action"
        build = record.spec.action is ActionId.CREATE_INDEX and _run_from_approved(record)
        if build and record.status.attempts + 1 < context.MAX_ATTEMPTS:
            record.status.attempts += 1
            record.status.next_attempt_time = now
            await self.ctx.move(record, RemediationState.RUNNING, RemediationState.APPROVED,
                                f"{gone}; attempt {record.status.attempts} did not finish, "
                                "retrying now (an INVALID leftover is dropped first)")
            return
        giving_up = f"; giving up after {context.MAX_ATTEMPTS} attempts" if build else ""
        await self.ctx.move(record, RemediationState.RUNNING, RemediationState.FAILED,
                            f"{gone}{giving_up}; the problem will be re-detected")

    async def _orphaned(self, record: records.Record) -> bool:
        """Running, but nobody runs it: ours from an earlier life, its executor's lease lapsed
        (``executor/lease.py``: gone for the lease's grace, seen by us while we hold ours), or
        past every timeout (counted from the latest start: a retried record may have started
        long ago; the last resort when leases cannot tell, e.g. without a lease of our own)."""
        if record.name in self.runs.active:
            return False
        if record.status.executor == self.ctx.identity:
            return True
        lease = self.ctx.lease
        if lease is not None and record.status.executor and \
                await lease.lapsed(record.status.executor):
            log.warning("taking over %s: executor %s holds no lease any more", record.name,
                        record.status.executor)
            return True
        started = _last_started(record)
        timeout = policy.timeouts_for(self.ctx.config.spec, record.spec.risk_class)
        limit = datetime.timedelta(seconds=durations.parse_duration(timeout.statement_timeout)
                                   + 300)
        return started is not None and records.utcnow() - started > limit

    async def _pending(self, record: records.Record, now: datetime.datetime) -> None:
        # A rejection first (a "no" beats a "yes" seen at the same tick), then the deadline: an
        # approval the executor sees only after it does not count (the plan was reviewed
        # against a database that may have changed since).
        expires = record.spec.approval_expires_at
        rejected = record.annotations.get(records.ANNOTATION_REJECT)
        if rejected is not None:
            who = (f"by {rejected}" if self._vouched() else
                   f"as requested ({rejected}; the requester is not verified)")
            await self.ctx.move(record, RemediationState.PENDING_APPROVAL,
                                RemediationState.REJECTED, f"rejected {who}; nothing ran")
        elif expires is not None and now >= expires:
            late = "; approved, but not before the deadline" if record.spec.approved else ""
            await self.ctx.move(record, RemediationState.PENDING_APPROVAL,
                                RemediationState.EXPIRED,
                                f"not approved before {expires.isoformat()}{late}; nothing ran")
        elif record.spec.approved:
            approver = self._approver(record)
            record.status.approved_by = approver
            if await self.ctx.move(record, RemediationState.PENDING_APPROVAL,
                                   RemediationState.APPROVED, f"approved by {approver}"):
                self.runs.schedule_start(record)


    def _approver(self, record: records.Record) -> str:
        """Who approved, as far as anyone vouches for it: the annotation when the API server
        guards it (the chart's policy, the webhook) or only the executor writes it (the JSONL
        store); otherwise anyone with ``patch`` could have written any name there."""
        written = record.annotations.get(remediation.ANNOTATION_APPROVED_BY)
        if written is None:
            return "unknown"
        return written if self._vouched() else (
            "unknown (the approved-by annotation is not verified)")

    def _vouched(self) -> bool:
        """Whether the request annotations name who really sent them."""
        executor = self.ctx.config.executor
        return self.ctx.store.vouches_for_annotations or (
            executor is not None and executor.approver_verified)


def _last_started(record: records.Record) -> datetime.datetime | None:
    """When the latest run of ``record`` started (its last Running step), if it did."""
    running = [s.time for s in record.status.history if s.state is RemediationState.RUNNING]
    return running[-1] if running else None


def _run_from_approved(record: records.Record) -> bool:
    """The latest Running step of ``record`` started its action (from Approved), not a
    rollback (from Succeeded)."""
    history = record.status.history
    last = max((i for i, s in enumerate(history) if s.state is RemediationState.RUNNING),
               default=None)
    return last is not None and last > 0 and \
        history[last - 1].state is RemediationState.APPROVED
