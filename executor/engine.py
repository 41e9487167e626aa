"""The executor's engine: detection in, durable Remediation out, action run at most once.

Flow for one detection (DESIGN.md, "Detection and remediation"):

1. parse (malformed: counted and dropped); ignore ids already seen and other monitors;
2. at most one open Remediation per key, and one Remediation per occurrence (its name is
   derived from key and id, so two replicas collide on ``create`` and one wins);
3. re-derive the plan against the database (``executor/derive.py``); a key that recently
   ended without a fix is cooling down (recorded as Rejected, never retried in a loop);
4. record it in its first state (policy: Recommended, Observed, PendingApproval, Approved);
5. approved work starts when the hourly limit and maintenance window allow, after a
   compare-and-set Approved -> Running under a database-wide advisory lock, so the limit and
   the single runner hold across replicas; the action runs under its guard and the outcome
   with its numbers is recorded.

:meth:`Engine.tick` moves the rest along: rejections and approvals (hash checked), expiries,
gated starts, rollback requests, and work a previous executor left Running when it died.

Intake never waits for an action: a detection is done with (acked) once its Remediation is
recorded, and every start, verification and rollback runs as a background task of this engine
(one per record at a time), so a long action (an index build behind a before window) neither
holds a NATS message past its ack wait nor stalls the intake or the tick. :meth:`Engine.close`
cancels them on shutdown; an action cut short that way ends Failed ("interrupted"), as when a
dead executor leaves one Running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import prometheus_client
import psycopg

from startupmonkey import db, settings
from startupmonkey.executor import (
    derive,
    guard,
    index_flow,
    kube,
    maintenance,
    outcome,
    plan,
    policy,
    records,
    sessions,
)
from startupmonkey.models import durations, messages, remediation
from startupmonkey.models.enums import ActionId, RemediationState, RiskClass, risk_of

log = logging.getLogger(__name__)
Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
#: Second key of the advisory lock that serialises starts (and the hourly count) per database.
START_GATE_KEY = 0
#: How long intake waits for another replica to finish opening a Remediation of the same key
#: (lock_timeout of that wait; on timeout the message is retried).
KEY_LOCK_WAIT_MS = 30_000
#: Clean failures (lock timeouts, cancels) of one Remediation retried at most this often.
MAX_ATTEMPTS = 5
#: Evidence key the executor adds to every record: when the analyser first saw the problem.
FIRST_SEEN = "detection_first_seen"
_NOT_FIXED = frozenset({RemediationState.FAILED, RemediationState.REJECTED,
                        RemediationState.ROLLED_BACK, RemediationState.EXPIRED})


class EventSink(Protocol):
    """Where state changes are announced (NATS remediation events, Kubernetes Events)."""

    async def emit(self, record: records.Record) -> None:
        """Announce the record's current state."""


class Metrics:
    """The executor's Prometheus metrics."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.detections = prometheus_client.Counter(
            "startupmonkey_executor_detections_total", "Detections received, by outcome",
            ["outcome"], registry=registry)
        self.malformed = prometheus_client.Counter(
            "startupmonkey_executor_malformed_messages_total", "Messages dropped as malformed",
            ["kind"], registry=registry)
        self.transitions = prometheus_client.Counter(
            "startupmonkey_executor_remediations_total", "Remediation state changes",
            ["state"], registry=registry)


class Engine:
    """Turns detections into Remediations and runs the approved ones."""

    def __init__(self, config: settings.ComponentConfig, store: records.Store,
                 sink: EventSink, connect: Connect, identity: str,
                 registry: prometheus_client.CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.connect = connect
        self.identity = identity
        self.metrics = Metrics(registry)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._malformed_logged: set[str] = set()
        self._active: set[str] = set()  # records this process is running right now
        self._tasks: set[asyncio.Task[None]] = set()  # their tasks (kept referenced)
        # One action per risk class at a time in this process: a second one waits here, still
        # Approved, instead of meeting the guard's advisory lock and ending Rejected.
        self._class_locks: collections.defaultdict[RiskClass, asyncio.Lock] = \
            collections.defaultdict(asyncio.Lock)

    def reconfigure(self, config: settings.ComponentConfig) -> None:
        """Hot reload: policy, thresholds, protect lists and limits apply from now on."""
        self.config = config

    # -- intake ---------------------------------------------------------------------------

    async def handle(self, data: bytes) -> bool:
        """Handle one message. True: done with it (ack); False: redeliver later."""
        try:
            detection = messages.parse_detection(data)
        except messages.MalformedMessage as exc:
            self.metrics.malformed.labels(exc.kind).inc()
            if exc.kind not in self._malformed_logged:
                self._malformed_logged.add(exc.kind)
                log.warning("dropping malformed %s message: %s", exc.kind, exc.reason)
            return True
        try:
            return await self._handle(detection)
        except Exception as exc:  # an API error or a bug: this message only, redelivered
            self.metrics.detections.labels("error").inc()
            if isinstance(exc, kube.API_ERRORS):
                log.warning("detection %s not handled, will retry: %s", detection.id,
                            db.safe_error(exc))
            else:
                log.exception("detection %s not handled, will retry", detection.id)
            return False

    def _remember(self, detection_id: str) -> bool:
        if detection_id in self._seen:
            self._seen.move_to_end(detection_id)
            return False
        self._seen[detection_id] = None
        if len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        return True

    async def _handle(self, detection: messages.Detection) -> bool:
        ref = self.config.monitor
        if (detection.namespace, detection.monitor) != (ref.namespace, ref.name):
            self.metrics.detections.labels("other_monitor").inc()
            return True
        if detection.id in self._seen:
            self.metrics.detections.labels("duplicate").inc()
            return True
        try:
            created = await self._record(detection)
        except (psycopg.Error, OSError, records.Conflict) as exc:
            log.warning("detection %s not recorded yet, will retry: %s", detection.id,
                        db.safe_error(exc))
            self.metrics.detections.labels("retry").inc()
            return False
        self._remember(detection.id)
        self.metrics.detections.labels("recorded" if created else "duplicate").inc()
        if created is not None and created.state is RemediationState.APPROVED:
            self.start(created)  # in the background: the message is done with (acked) now
        return True

    async def _record(self, detection: messages.Detection) -> records.Record | None:
        """Open a Remediation for ``detection`` unless its key already has an open one.

        The check (list) and the create run under a PostgreSQL advisory lock of the key, so two
        replicas handed different occurrences of one key at once cannot both see the key free
        and each open one (the names differ, so ``create`` alone would not refuse the second).
        """
        conn = await self.connect()
        try:
            await conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                               (f"{KEY_LOCK_WAIT_MS}ms",))
            keys = guard.detection_key_lock(detection.key)
            await conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)", keys)
            try:
                return await self._record_locked(detection)
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)",
                                           keys)
        finally:
            await conn.close()  # also releases the lock if the unlock could not run

    async def _record_locked(self, detection: messages.Detection) -> records.Record | None:
        name = remediation.object_name(detection.monitor, detection.key, detection.id)
        existing = await self.store.list()
        if any(r.name == name for r in existing) or any(
                r.open and r.spec.detection_key == detection.key for r in existing):
            return None
        record = self._new_record(name, detection)
        cooling = self._cooling_down(detection, existing)
        if cooling:
            record.move(RemediationState.REJECTED, cooling)
        else:
            await self._plan_into(record, detection)
        if not await self.store.create(record):
            return None
        await self._announce(record)
        return record

    def _new_record(self, name: str, detection: messages.Detection) -> records.Record:
        spec = remediation.RemediationSpec(
            monitor=detection.monitor, detection_key=detection.key, detection_id=detection.id,
            detector=detection.detector, action=detection.proposed_action,
            risk_class=risk_of(detection.proposed_action), target=detection.target,
            sql_hash=remediation.sql_hash("", None), summary=detection.summary[:1024],
            evidence={**{k: str(v)[:4096] for k, v in list(detection.evidence.items())[:63]},
                      FIRST_SEEN: detection.first_seen.isoformat()})
        return records.Record(name=name, namespace=detection.namespace, spec=spec,
                              status=remediation.RemediationStatus(executor=self.identity),
                              created=records.utcnow())

    def _cooling_down(self, detection: messages.Detection,
                      existing: list[records.Record]) -> str | None:
        threshold = self.config.spec.thresholds.for_detector(detection.detector)
        window = datetime.timedelta(seconds=durations.parse_duration(threshold.cooldown))
        now = records.utcnow()
        for record in existing:
            if record.spec.detection_key != detection.key or record.state not in _NOT_FIXED:
                continue
            ended = record.status.history[-1].time if record.status.history else record.created
            if now - ended < window:
                return (f"cooling down until {(ended + window).isoformat()}: {record.name} "
                        f"ended {record.state.value}: {record.status.message}")
        return None

    async def _plan_into(self, record: records.Record, detection: messages.Detection) -> None:
        conn = await self.connect()
        try:
            derived = await derive.derive(conn, detection)
        finally:
            await conn.close()
        spec = record.spec
        if isinstance(derived, derive.Refusal):
            record.move(RemediationState.REJECTED, derived.reason)
            return
        if derived is None:
            note = "advice: nothing to run" if spec.action is ActionId.ADVICE else (
                f"{spec.action.value} is not automated in this version")
            record.move(RemediationState.RECOMMENDED, f"{note}. {detection.summary}")
            return
        spec.sql, spec.rollback_sql, spec.sql_hash = (derived.sql, derived.rollback_sql,
                                                      derived.sql_hash)
        state = policy.first_state(self.config.spec, spec.action)
        if state is RemediationState.PENDING_APPROVAL:
            spec.approval_expires_at = policy.approval_deadline(self.config.spec,
                                                                records.utcnow())
        record.move(state, _first_message(state))

    async def _announce(self, record: records.Record) -> None:
        self.metrics.transitions.labels(record.state.value).inc()
        try:
            await self.sink.emit(record)
        except Exception as exc:
            log.warning("could not announce %s: %s", record.name, db.safe_error(exc))

    async def _move(self, record: records.Record, expected: RemediationState,
                    state: RemediationState, message: str) -> bool:
        record.move(state, message)
        try:
            await self.store.update(record, expected)
        except records.Conflict:
            return False
        await self._announce(record)
        return True

    # -- running ----------------------------------------------------------------------------

    def start(self, record: records.Record) -> None:
        """Start an Approved record in the background if the gates allow; it runs to its
        outcome there (see :meth:`settle`)."""
        due = record.status.next_attempt_time
        if due is not None and records.utcnow() < due:
            return
        self._spawn(record, self._start, "start")

    async def _start(self, record: records.Record) -> None:
        spec = record.spec
        if remediation.sql_hash(spec.sql, spec.rollback_sql) != spec.sql_hash:
            await self._move(record, record.state, RemediationState.FAILED,
                             "refused: the SQL does not match the hash the executor planned")
            return
        async with self._class_locks[spec.risk_class]:
            if not await self._refresh(record, RemediationState.APPROVED):
                return
            if await self._claim(record):
                await self._run(record)

    async def _refresh(self, record: records.Record, expected: RemediationState) -> bool:
        """Reload ``record`` in place (it may have waited); False unless still ``expected``."""
        current = await self.store.get(record.name)
        if current is None or current.state is not expected:
            return False
        record.spec, record.status = current.spec, current.status
        record.annotations, record.version = current.annotations, current.version
        return True

    def _spawn(self, record: records.Record,
               work: Callable[[records.Record], Awaitable[None]], what: str) -> None:
        """Run ``work(record)`` as a tracked background task, never two for one record."""
        if record.name in self._active:
            return
        self._active.add(record.name)
        task = asyncio.create_task(self._tracked(record, work, what),
                                   name=f"{what} {record.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tracked(self, record: records.Record,
                       work: Callable[[records.Record], Awaitable[None]], what: str) -> None:
        try:
            await work(record)
        except asyncio.CancelledError:
            if record.state is RemediationState.RUNNING:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._move(
                        record, RemediationState.RUNNING, RemediationState.FAILED,
                        f"interrupted: executor {self.identity} stopped during the action; "
                        "the problem will be re-detected"), timeout=10)
            raise
        except Exception:
            log.exception("%s of %s failed unexpectedly", what, record.name)
        finally:
            self._active.discard(record.name)

    async def settle(self) -> None:
        """Wait until no start, verification or rollback of this engine is in flight."""
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
        conn = await self.connect()
        try:
            await conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)",
                               (guard.LOCK_NAMESPACE, START_GATE_KEY))
            try:
                starts = [s for r in await self.store.list() if (s := r.started_at())]
                gate = policy.may_start(self.config.spec, record.spec.action, starts,
                                        records.utcnow())
                if not gate.ok:
                    if record.status.message != gate.reason:
                        record.status.message = gate.reason
                        with contextlib.suppress(records.Conflict):
                            await self.store.update(record, record.state)
                    return False
                record.status.executor = self.identity
                return await self._move(record, RemediationState.APPROVED,
                                        RemediationState.RUNNING, "running")
            finally:
                await conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)",
                                   (guard.LOCK_NAMESPACE, START_GATE_KEY))
        finally:
            await conn.close()

    async def _run(self, record: records.Record) -> None:
        risk = record.spec.risk_class
        timeouts = policy.timeouts_for(self.config.spec, risk)
        try:
            conn = await self.connect()
        except (psycopg.Error, OSError) as exc:
            await self._finish(record, outcome.Outcome(
                RemediationState.FAILED, f"cannot connect: {db.safe_error(exc)}"))
            return
        try:
            async with guard.guarded(conn, risk, timeouts.lock_timeout,
                                     timeouts.statement_timeout):
                result = await self._act(conn, record)
        except guard.Refused as exc:
            result = outcome.Outcome.rejected(str(exc))
        except psycopg.Error as exc:
            result = outcome.Outcome(RemediationState.FAILED, db.safe_error(exc))
        except Exception as exc:  # a bug or bad input must never leave the record Running
            log.exception("%s failed unexpectedly", record.name)
            result = outcome.Outcome(RemediationState.FAILED, _unexpected(exc))
        finally:
            await conn.close()
        await self._finish(record, result)

    async def _act(self, conn: psycopg.AsyncConnection[Any],
                   record: records.Record) -> outcome.Outcome:
        spec, target = record.spec, record.spec.target
        step = plan.Plan(spec.action, spec.sql, spec.rollback_sql)
        protect = self.config.spec.protect
        if spec.action is ActionId.CREATE_INDEX:
            return await index_flow.create_index(conn, record, self.config.spec)
        if spec.action in derive.INDEX_ACTIONS:
            return await index_flow.repair(conn, record)
        if spec.action is ActionId.VACUUM:
            return await maintenance.vacuum(conn, step, target.schema_ or "", target.table or "",
                                            _evidence_number(spec.evidence,
                                                             "autovacuum_trigger"),
                                            _evidence_time(spec.evidence, FIRST_SEEN))
        if spec.action is ActionId.ANALYZE:
            return await maintenance.analyze(conn, step, target.schema_ or "",
                                             target.table or "",
                                             _evidence_number(spec.evidence, "trigger"))
        if target.pid is None or target.backend_start is None:
            return outcome.Outcome.rejected("no backend in the target")
        if spec.action is ActionId.CANCEL_QUERY and target.query_start is not None:
            after = self.config.spec.thresholds.long_running_query.terminate_after
            return await sessions.cancel_query(
                conn, step, target.pid, target.backend_start, target.query_start, protect,
                durations.parse_duration(after) if after else None)
        if spec.action is ActionId.TERMINATE_SESSION and target.state_change is not None:
            return await sessions.terminate_idle_transaction(
                conn, step, target.pid, target.backend_start, target.state_change, protect)
        return outcome.Outcome.rejected(f"{spec.action.value} cannot run on this target")

    async def _finish(self, record: records.Record, result: outcome.Outcome,
                      expected: RemediationState = RemediationState.RUNNING) -> None:
        record.status.before = result.before
        record.status.after = result.after
        record.status.executed_sql = [*record.status.executed_sql, *result.executed_sql][-16:]
        retry = index_flow.retry_at(result)
        state, message = result.state, result.message
        if retry is not None and record.status.attempts + 1 >= MAX_ATTEMPTS:
            message = f"{message}; giving up after {MAX_ATTEMPTS} attempts"
        elif retry is not None:
            record.status.attempts += 1
            record.status.next_attempt_time = records.utcnow() + datetime.timedelta(
                seconds=retry)
            state = RemediationState.APPROVED if expected is RemediationState.RUNNING \
                else expected
            message = f"{message}; attempt {record.status.attempts} failed cleanly, " \
                      f"retrying at {record.status.next_attempt_time.isoformat()}"
        if not await self._move(record, expected, state, message):
            log.error("lost the race to record the outcome of %s", record.name)

    # -- housekeeping -----------------------------------------------------------------------

    async def tick(self) -> None:
        """Approvals, expiries, gated starts and interrupted runs (call every interval)."""
        now = records.utcnow()
        for record in await self.store.list():
            try:
                await self._tick_one(record, now)
            except Exception as exc:  # one record's API error must not skip the others
                if not isinstance(exc, (psycopg.Error, OSError, *kube.API_ERRORS)):
                    log.exception("tick of %s failed", record.name)
                else:
                    log.warning("tick of %s failed: %s", record.name, db.safe_error(exc))

    async def _tick_one(self, record: records.Record, now: datetime.datetime) -> None:
        if record.state is RemediationState.PENDING_APPROVAL:
            await self._pending(record, now)
        elif record.state is RemediationState.APPROVED:
            self.start(record)
        elif record.state is RemediationState.VERIFYING:
            self.verify(record)
        elif (record.state is RemediationState.SUCCEEDED and record.spec.rollback_sql
              and remediation.ANNOTATION_ROLLBACK in record.annotations):
            self.rollback(record)
        elif record.state is RemediationState.RUNNING and self._orphaned(record):
            await self._orphan(record, now)
        elif record.state is RemediationState.PROPOSED and self._unplanned(record, now):
            # Created, but its executor died before it wrote the plan (the Kubernetes store
            # creates the object, then patches its status): it would block its key forever.
            await self._move(record, RemediationState.PROPOSED, RemediationState.FAILED,
                             "interrupted: the executor stopped before planning it; nothing "
                             "ran, and the problem will be re-detected")

    def verify(self, record: records.Record) -> None:
        """Keep-or-revert of a Verifying record once its after window is complete
        (in the background)."""
        due = record.status.next_attempt_time
        if due is not None and records.utcnow() < due:
            return
        self._spawn(record, self._verify, "verification")

    async def _verify(self, record: records.Record) -> None:
        conn = await self.connect()
        try:
            result = await index_flow.verify(conn, record, self.config.spec)
        except (guard.Refused, psycopg.Error) as exc:
            log.info("verification of %s postponed: %s", record.name, db.safe_error(exc))
            return
        except Exception as exc:  # a bug or bad input must never leave it Verifying for ever
            log.exception("verification of %s failed unexpectedly", record.name)
            result = outcome.Outcome(RemediationState.FAILED, _unexpected(exc))
        finally:
            await conn.close()
        if result is not None:
            await self._finish(record, result, expected=RemediationState.VERIFYING)

    def rollback(self, record: records.Record) -> None:
        """Revert a kept change on request: run its planned rollback SQL (hash checked), in
        the background."""
        self._spawn(record, self._rollback, "rollback")

    async def _rollback(self, record: records.Record) -> None:
        spec = record.spec
        if remediation.sql_hash(spec.sql, spec.rollback_sql) != spec.sql_hash:
            await self._move(record, record.state, RemediationState.FAILED,
                             "refused: the rollback SQL does not match the planned hash")
            return
        async with self._class_locks[spec.risk_class]:
            if await self._refresh(record, RemediationState.SUCCEEDED):
                await self._roll_back(record)

    async def _roll_back(self, record: records.Record) -> None:
        spec = record.spec
        request = record.annotations[remediation.ANNOTATION_ROLLBACK]
        if not await self._move(record, RemediationState.SUCCEEDED, RemediationState.RUNNING,
                                f"rolling back on request of {request}"):
            return
        timeouts = policy.timeouts_for(self.config.spec, spec.risk_class)
        conn = await self.connect()
        try:
            async with guard.guarded(conn, spec.risk_class, timeouts.lock_timeout,
                                     timeouts.statement_timeout):
                await conn.execute((spec.rollback_sql or "").encode())
            result = outcome.Outcome(RemediationState.ROLLED_BACK,
                                     f"rolled back on request of {request}",
                                     executed_sql=[spec.rollback_sql or ""])
        except (guard.Refused, psycopg.Error) as exc:
            result = outcome.Outcome(RemediationState.FAILED,
                                     f"rollback failed: {db.safe_error(exc)}")
        finally:
            await conn.close()
        record.status.executed_sql = [*record.status.executed_sql, *result.executed_sql]
        await self._move(record, RemediationState.RUNNING, result.state, result.message)

    def _unplanned(self, record: records.Record, now: datetime.datetime) -> bool:
        """Proposed for longer than planning could take (15 s, or three intervals): planning
        happens before the record is stored, so only a create whose status patch never came
        is Proposed for more than one API round trip (and the patch carries the
        resourceVersion, so a late one loses to this move instead of overwriting it)."""
        grace = max(15.0, 3 * durations.parse_duration(self.config.spec.interval))
        return record.name not in self._active and (
            now - record.created > datetime.timedelta(seconds=grace))

    async def _orphan(self, record: records.Record, now: datetime.datetime) -> None:
        """End a Running record whose executor is gone. A create_index build (not a rollback)
        is retried: its INVALID leftover is dropped (and recorded) by the next attempt before it
        builds again, as after a clean failure; anything else ends Failed."""
        gone = f"interrupted: executor {record.status.executor} stopped during the action"
        build = record.spec.action is ActionId.CREATE_INDEX and _run_from_approved(record)
        if build and record.status.attempts + 1 < MAX_ATTEMPTS:
            record.status.attempts += 1
            record.status.next_attempt_time = now
            await self._move(record, RemediationState.RUNNING, RemediationState.APPROVED,
                             f"{gone}; attempt {record.status.attempts} did not finish, "
                             "retrying now (an INVALID leftover is dropped first)")
            return
        giving_up = f"; giving up after {MAX_ATTEMPTS} attempts" if build else ""
        await self._move(record, RemediationState.RUNNING, RemediationState.FAILED,
                         f"{gone}{giving_up}; the problem will be re-detected")

    def _orphaned(self, record: records.Record) -> bool:
        """Running, but nobody runs it: ours from an earlier life, or past every timeout
        (counted from the latest start: a retried record may have started long ago)."""
        if record.name in self._active:
            return False
        if record.status.executor == self.identity:
            return True
        started = _last_started(record)
        timeout = policy.timeouts_for(self.config.spec, record.spec.risk_class)
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
            await self._move(record, RemediationState.PENDING_APPROVAL,
                             RemediationState.REJECTED, f"rejected by {rejected}; nothing ran")
        elif expires is not None and now >= expires:
            late = "; approved, but not before the deadline" if record.spec.approved else ""
            await self._move(record, RemediationState.PENDING_APPROVAL, RemediationState.EXPIRED,
                             f"not approved before {expires.isoformat()}{late}; nothing ran")
        elif record.spec.approved:
            approver = record.annotations.get(remediation.ANNOTATION_APPROVED_BY, "unknown")
            record.status.approved_by = approver
            if await self._move(record, RemediationState.PENDING_APPROVAL,
                                RemediationState.APPROVED, f"approved by {approver}"):
                self.start(record)


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


def _first_message(state: RemediationState) -> str:
    return {
        RemediationState.OBSERVED: "observe mode: would have run the planned SQL",
        RemediationState.PENDING_APPROVAL: "waiting for approval (set spec.approved to true)",
        RemediationState.APPROVED: "approved by policy",
    }.get(state, state.value)



def _unexpected(exc: Exception) -> str:
    return f"unexpected error, nothing more was done: {type(exc).__name__}: " \
           f"{db.safe_error(exc)}"


def _evidence_time(evidence: dict[str, str], key: str) -> datetime.datetime | None:
    """A timezone-aware time from a record's evidence, or None."""
    try:
        value = datetime.datetime.fromisoformat(evidence[key])
    except (KeyError, ValueError):
        return None
    return value if value.tzinfo is not None else None


def _evidence_number(evidence: dict[str, str], key: str) -> float | None:
    """A number from a detection's evidence (kept as strings on the record), or None."""
    try:
        value = float(evidence[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
