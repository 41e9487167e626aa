"""Runs: approved Remediations are claimed, run under their guard and finished, each as a
background task of the engine (at most one per record at a time).

:meth:`Runs.schedule_start` hands an Approved record to a task that checks its SQL against the
planned hash, waits while another action of its risk class runs in this process, re-reads it,
claims it (:meth:`Runs._claim`: only while this executor holds its lease, under a database-wide
advisory lock waited for at most 10 s, so the hourly limit and the maintenance window hold
across replicas, a compare-and-set Approved -> Running), runs the
action (``executor/actions.py``) under the guard and records the outcome
(:meth:`Runs.finish`, which also schedules a clean failure's retry, and retries the write
itself while the store does not answer). The housekeeping's
verifications and rollbacks run as tasks of the same kind (:meth:`Runs.spawn`), a rollback
behind the same checks as a start (:meth:`Runs.ready_to_run`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg

from startupmonkey import db, observability, settings
from startupmonkey.executor import (
    actions,
    context,
    guard,
    index_flow,
    outcome,
    policy,
    records,
)
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, RemediationState, RiskClass

log = logging.getLogger(__name__)
#: Second key of the advisory lock that serialises starts (and the hourly count) per database.
START_GATE_KEY = 0
#: How long a start waits for the start gate another replica holds (its ``lock_timeout``).
GATE_WAIT_MS = 10_000
Work = Callable[[records.Record], Awaitable[None]]


def no_longer_acts_in(database: str | None) -> str:
    """Why nothing runs in ``database`` any more: the configuration no longer lists it."""
    return f"the executor no longer acts in database {database!r} (executor.databases)"


def index_of(record: records.Record) -> str:
    """``index "schema"."name"`` of a create_index record (the planned name), for messages;
    ``its index`` when the target cannot name one."""
    try:
        target = index_flow.target_of(record)
    except ValueError:
        return "its index"
    return f'index "{target.schema}"."{target.name}"'


def left_in_place(record: records.Record) -> str:
    """What a rollback or verification that cannot run leaves behind, for messages: the
    index a create_index built, else the change the action made."""
    if record.spec.action is ActionId.CREATE_INDEX:
        return index_of(record)
    return f"the change of {record.spec.action.value}"


def _unanswered() -> tuple[type[BaseException], ...]:
    """What a store raises when it does not answer (the API server, the journal's file
    system)."""
    return (OSError, *records.api_errors())


class Runs:
    """The engine's background work: starts here, verifications and rollbacks for the
    housekeeping."""

    def __init__(self, ctx: context.Context) -> None:
        self.ctx = ctx
        self.active: set[str] = set()  # records this process is running right now
        self._tasks: set[asyncio.Task[None]] = set()  # their tasks (kept referenced)
        # One action per risk class at a time in this process: a second one waits here, still
        # Approved, instead of meeting the guard's advisory lock and ending Rejected.
        self._class_locks: collections.defaultdict[RiskClass, asyncio.Lock] = \
            collections.defaultdict(asyncio.Lock)
        self._waiting_log = observability.RateLimitedLog(log)

    def schedule_start(self, record: records.Record) -> None:
        """Start an Approved record in the background if its next attempt is due; it runs to
        its outcome there (see :meth:`settle`)."""
        due = record.status.next_attempt_time
        if due is not None and records.utcnow() < due:
            return
        self.spawn(record, self._claim_and_run, "start")

    async def _claim_and_run(self, record: records.Record) -> None:
        """Hash check, wait for the risk class, re-read, claim through the gates, run."""
        async with self.ready_to_run(record, RemediationState.APPROVED, "refused: the SQL "
                                     "does not match the hash the executor planned") as ready:
            if not ready:
                return
            # The mode as it is now (a hot reload may have changed it since the approval).
            ended = policy.no_longer_allowed(self.ctx.config.spec, record.spec.risk_class,
                                             record.spec.approved)
            if ended is not None:
                await self.ctx.move(record, RemediationState.APPROVED, *ended)
                return
            await self._run(record)

    @contextlib.asynccontextmanager
    async def ready_to_run(self, record: records.Record, expected: RemediationState,
                           refused: str) -> AsyncIterator[bool]:
        """True inside the block when ``record`` may run now: its SQL matches the planned hash
        (else it ends Failed with ``refused``), no other action of its risk class runs in this
        process (waited for, and held through the block) and, re-read, it is still
        ``expected``."""
        spec = record.spec
        if remediation.sql_hash(spec.sql, spec.rollback_sql) != spec.sql_hash:
            await self.ctx.move(record, record.state, RemediationState.FAILED, refused)
            yield False
            return
        async with self._class_locks[spec.risk_class]:
            yield await self.refresh(record, expected)

    async def refresh(self, record: records.Record, expected: RemediationState) -> bool:
        """Reload ``record`` in place (it may have waited); False unless still ``expected``."""
        current = await self.ctx.store.get(record.name)
        if current is None or current.state is not expected:
            return False
        record.spec, record.status = current.spec, current.status
        record.annotations, record.version = current.annotations, current.version
        return True

    def spawn(self, record: records.Record, work: Work, what: str) -> None:
        """Run ``work(record)`` as a tracked background task, never two for one record."""
        if record.name in self.active:
            return
        self.active.add(record.name)
        task = asyncio.create_task(self._tracked(record, work, what),
                                   name=f"{what} {record.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tracked(self, record: records.Record, work: Work, what: str) -> None:
        try:
            await work(record)
        except asyncio.CancelledError:
            if record.state is RemediationState.RUNNING:
                try:
                    await asyncio.wait_for(self.ctx.move(
                        record, RemediationState.RUNNING, RemediationState.FAILED,
                        f"interrupted: executor {self.ctx.identity} stopped during the action; "
                        "the problem will be re-detected"), timeout=10)
                except Exception as exc:  # stopping: the record stays Running for a peer
                    log.warning("could not record %s as interrupted (%s); it stays Running "
                                "until another executor sees this one's lease lapse",
                                record.name, db.safe_error(exc))
            raise
        except Exception:
            log.exception("%s of %s failed unexpectedly", what, record.name)
        finally:
            self.active.discard(record.name)

    async def settle(self) -> None:
        """Wait until no start, verification or rollback is in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the work in flight and wait for it (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim(self, record: records.Record) -> bool:
        """Approved -> Running through the start gate; False: not now (it stays Approved and
        the tick retries it).

        The gate is a database-wide advisory lock, so the hourly count (from the store) and the
        compare-and-set are one step across replicas. It is the one database lock held across
        Kubernetes calls (the list and the claim itself), and that is bounded: every API call
        times out (``startupmonkey.kubeapi.REQUEST_TIMEOUT``), a replica waits for the gate at
        most :data:`GATE_WAIT_MS` (``lock_timeout``) and then retries at its next tick, and the
        gate's session ends with its holder. Nothing else (the gate's message, the
        announcement) happens under it.
        """
        lease = self.ctx.lease
        if lease is not None and not lease.held:
            self._waiting_log.warning("lease", "starts wait until this executor holds its lease "
                                   "(%s is still Approved)", record.name)
            return False
        conn = await self.ctx.connect()
        try:
            await conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                               (f"{GATE_WAIT_MS}ms",))
            try:
                await conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)",
                                   (guard.LOCK_NAMESPACE, START_GATE_KEY))
            except psycopg.errors.LockNotAvailable:
                log.info("start of %s postponed: another replica held the start gate for "
                         "%d ms", record.name, GATE_WAIT_MS)
                return False
            try:
                claimed, refusal = await self._through_gate(record)
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)",
                                           (guard.LOCK_NAMESPACE, START_GATE_KEY))
        finally:
            await conn.close()  # also releases the gate if the unlock could not run
        if refusal is not None and record.status.message != refusal:
            record.status.message = refusal
            # moved on by someone else meanwhile: the next tick looks again
            with contextlib.suppress(records.Conflict):
                await self.ctx.store.update(record, record.state)
        if claimed:
            await self.ctx.announce(record)
        return claimed

    async def _through_gate(self, record: records.Record) -> tuple[bool, str | None]:
        """Under the gate: (claimed, why the gate refused)."""
        mine = policy.budget(record.spec.evidence)
        starts = [s for r in await self.ctx.store.list()
                  if (s := r.started_at()) and policy.budget(r.spec.evidence) == mine]
        gate = policy.may_start(self.ctx.config.spec, record.spec.action, starts,
                                records.utcnow())
        if not gate.ok:
            return False, gate.reason
        record.status.executor = self.ctx.identity
        record.move(RemediationState.RUNNING, "running")
        try:
            await self.ctx.store.update(record, RemediationState.APPROVED)
        except records.Conflict:
            return False, None
        except _unanswered() as exc:
            # The claim may or may not have landed: look (a claim of ours is ours to run).
            log.warning("claim of %s unanswered (%s); checking whether it landed",
                        record.name, db.safe_error(exc))
            return await self._claim_landed(record), None
        return True, None

    async def _claim_landed(self, record: records.Record) -> bool:
        try:
            current = await self.ctx.store.get(record.name)
        except _unanswered() as exc:
            # Unknown: if it is Running under our name, the tick ends it as ours ("interrupted"
            # or, a build, another attempt); nothing has run.
            log.warning("cannot tell whether %s was claimed, leaving it to the tick: %s",
                        record.name, db.safe_error(exc))
            return False
        if current is None or current.state is not RemediationState.RUNNING or \
                current.status.executor != self.ctx.identity or \
                current.status.history[-1:] != record.status.history[-1:]:
            return False
        record.version = current.version
        return True

    async def _run(self, record: records.Record) -> None:
        """Connect, take the class's advisory lock (the guard), then claim, then act: an
        unreachable database or a class lock someone else holds leaves the record Approved and
        unclaimed (no Running step, no start counted against the hourly limit, no attempt, no
        cooldown) with a message saying why, and the next tick tries again."""
        spec = record.spec
        if not self.ctx.acts_in(spec.database):
            # Admitted when the executor acted there; the configuration no longer lets it.
            await self._refuse(record, no_longer_acts_in(spec.database))
            return
        timeouts = policy.timeouts_for(self.ctx.config.spec, spec.risk_class)
        try:
            conn = await self.ctx.connect(spec.database)
        except context.DatabaseRefused as exc:
            # Gone, closed to connections, not ours: waiting would never end.
            await self._refuse(record, exc.reason)
            return
        except (psycopg.Error, OSError) as exc:
            await self._wait(record, f"cannot connect: {db.safe_error(exc)}")
            return
        claimed, started, result = False, None, None
        try:
            async with guard.guarded(conn, spec.risk_class, timeouts.lock_timeout,
                                     timeouts.statement_timeout):
                started = await guard.server_started(conn)
                claimed = await self._claim(record)
                if claimed:
                    result = await actions.act(conn, record, self.ctx.config.spec)
        except (guard.Busy, guard.Standby) as exc:  # on entering the guard: never claimed
            # Busy, or a standby / read-only server (a failover not finished, a replica the
            # login reached): temporary, so it waits Approved, as a busy class lock does.
            await self._wait(record, str(exc))
            return
        except guard.Refused as exc:
            result = outcome.Outcome.rejected(str(exc))
        except (psycopg.Error, OSError) as exc:
            result = await self._failed(record, exc, started)
        except Exception as exc:  # a bug or bad input must never leave the record Running
            log.exception("%s failed unexpectedly", record.name)
            result = outcome.Outcome(RemediationState.FAILED, context.unexpected(exc))
        finally:
            await conn.close()
        if claimed:
            assert result is not None
            await self.finish(record, result)
        elif result is not None and result.retry_after is not None:
            await self._wait(record, result.message)  # the server went away before the claim
        elif result is not None:  # refused (a standby) or broken before the claim: nothing ran
            await self.ctx.move(record, RemediationState.APPROVED, result.state, result.message)

    async def _refuse(self, record: records.Record, why: str) -> None:
        """End an Approved ``record`` its database refuses (``why``) without connecting there.

        No attempt ran yet: Rejected, "nothing ran". An earlier attempt did (a clean failure
        retried, a build interrupted and sent back to Approved): Failed, saying so, never
        "nothing ran"; a create_index names the INVALID index an interrupted build may have
        left, which the next attempt would have dropped first: no DDL runs in a database the
        executor cannot act in, so it stays for someone to drop."""
        attempts = record.status.attempts
        if attempts == 0:
            await self.ctx.move(record, RemediationState.APPROVED, RemediationState.REJECTED,
                                f"refused: {why}; nothing ran")
            return
        where = f"database {record.spec.database!r}" if record.spec.database is not None \
            else "the home database"
        ran = f"refused: {why}; {attempts} earlier attempt(s) ran in {where}"
        if record.spec.action is ActionId.CREATE_INDEX:
            ran += (f", and an INVALID {index_of(record)} an unfinished build left may "
                    f"remain there: not dropped (the executor runs no DDL in a database it "
                    f"cannot act in); drop it yourself (DROP INDEX CONCURRENTLY IF EXISTS) "
                    f"or let the executor act there again")
        else:
            ran += " (see the history)"
        await self.ctx.move(record, RemediationState.APPROVED, RemediationState.FAILED, ran)

    async def database_gone(self, database: str) -> bool:
        """Whether ``database`` does not exist (or could never be named), asked on a home
        connection; False when the home database cannot say (then it is treated as a
        temporary refusal: a wait)."""
        if settings.database_name_problem(database) is not None:
            return True
        try:
            conn = await self.ctx.connect()
        except (psycopg.Error, OSError):
            return False
        try:
            cursor = await conn.execute("SELECT 1 FROM pg_catalog.pg_database "
                                        "WHERE datname = %s", (database,))
            return await cursor.fetchone() is None
        except psycopg.Error:
            return False
        finally:
            await conn.close()

    async def _wait(self, record: records.Record, why: str) -> None:
        """Leave ``record`` Approved with ``waiting: why`` as its message."""
        await self.note(record, f"waiting: {why}", RemediationState.APPROVED)

    async def note(self, record: records.Record, message: str,
                   state: RemediationState) -> None:
        """Leave ``record`` in ``state`` with ``message`` (written only when it changes, so a
        long wait costs no writes; no history step)."""
        if record.status.message == message:
            return
        record.status.message = message
        with contextlib.suppress(records.Conflict):  # moved on meanwhile: the tick looks again
            await self.ctx.store.update(record, state)

    async def _failed(self, record: records.Record, exc: BaseException,
                      started: float | None) -> outcome.Outcome:
        """Failed with the error; retried (with backoff, counted) when the server went away,
        since every action re-checks its target before it acts again. Not when someone
        terminated our session on purpose (57P01 with the server still up since the action
        began, ``started``): an operator who kills our VACUUM means it."""
        result = outcome.Outcome(RemediationState.FAILED, db.safe_error(exc))
        if not db.server_gone(exc):
            return result
        if getattr(exc, "sqlstate", None) == "57P01" and started is not None \
                and await self._still_up_since(started, record.spec.database):
            result.message = f"terminated by someone else (pg_terminate_backend), not " \
                             f"retried: {result.message}"
            return result
        return result.with_retry(record.status.attempts + 1)

    async def _still_up_since(self, started: float, database: str | None) -> bool:
        """True when a new connection (to ``database``, the record's) sees the server
        incarnation ``started``: it did not restart (a server shutting down refuses the
        connection)."""
        try:
            conn = await self.ctx.connect(database)
        except (psycopg.Error, OSError, context.DatabaseRefused):
            return False
        try:
            return await guard.server_started(conn) == started
        except psycopg.Error:
            return False
        finally:
            await conn.close()

    def class_lock(self, risk: RiskClass) -> asyncio.Lock:
        """The in-process lock of a risk class: held by every start and rollback of the class,
        and by a verification that may revert, so none of them meets another's advisory lock
        in this process."""
        return self._class_locks[risk]

    async def finish(self, record: records.Record, result: outcome.Outcome,
                     expected: RemediationState = RemediationState.RUNNING) -> None:
        """Record ``result`` (numbers, SQL run, next state); a clean failure goes back to
        Approved (or stays ``expected``) with its next attempt scheduled, at most
        :data:`~startupmonkey.executor.context.MAX_ATTEMPTS` times."""
        record.status.before = result.before
        record.status.after = result.after
        record.status.executed_sql = [*record.status.executed_sql, *result.executed_sql][-16:]
        retry = result.retry_after
        state, message = result.state, result.message
        if retry is not None and record.status.attempts + 1 >= context.MAX_ATTEMPTS:
            message = f"{message}; giving up after {context.MAX_ATTEMPTS} attempts"
        elif retry is not None:
            record.status.attempts += 1
            record.status.next_attempt_time = records.utcnow() + datetime.timedelta(
                seconds=retry)
            state = RemediationState.APPROVED if expected is RemediationState.RUNNING \
                else expected
            message = f"{message}; attempt {record.status.attempts} failed cleanly, " \
                      f"retrying at {record.status.next_attempt_time.isoformat()}"
        record.move(state, message)
        if await self._persist(record, expected):
            await self.ctx.announce(record)
        else:
            log.error("lost the race to record the outcome of %s", record.name)

    async def _persist(self, record: records.Record, expected: RemediationState) -> bool:
        """Write the outcome in ``record`` (compare-and-set on ``expected``), retried with
        backoff for as long as the store does not answer (an API server stopped, a journal
        that cannot be written): the action ran, so its outcome must not be lost, and the
        record stays ours (:attr:`active`) meanwhile, so no tick takes it for orphaned. False
        when another writer got there first."""
        backoff = db.Backoff(base=1.0, cap=30.0)
        retrying = False
        while True:
            try:
                return await self._update_once(record, expected, retrying)
            except _unanswered() as exc:
                retrying = True
                delay = backoff.next_delay()
                log.warning("could not record that %s is %s yet, retrying in %.1fs: %s",
                            record.name, record.state.value, delay, db.safe_error(exc))
                await asyncio.sleep(delay)

    async def _update_once(self, record: records.Record, expected: RemediationState,
                           retrying: bool) -> bool:
        try:
            await self.ctx.store.update(record, expected)
            return True
        except records.Conflict:
            if not retrying:
                return False
            # An earlier attempt may have landed before its answer was lost.
            current = await self.ctx.store.get(record.name)
            return current is not None and \
                current.status.history[-1:] == record.status.history[-1:]
