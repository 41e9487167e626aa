"""Admission: one Detection v1 message in, at most one durable Remediation out.

``executor/intake.py`` delivers the bytes (Core NATS or JetStream) to :meth:`Admission.handle`,
whose answer says whether the message is done with (acked) or must come again. Here the message
is parsed (malformed: counted and dropped), ids already seen and other monitors' detections are
ignored, and under a PostgreSQL advisory lock of the detection key a Remediation is opened
unless the key has one open: its name is derived from key and id, so two replicas collide on
``create`` and one wins. A key that recently ended without a fix is cooling down (recorded as
Rejected, never retried in a loop); otherwise the plan is re-derived against the database
(``executor/derive.py``) and the record stored in its first state (policy: Recommended,
Observed, PendingApproval, Approved). An Approved one is handed to the runs
(``executor/runs.py``) without waiting for it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable

import psycopg

from startupmonkey import db, observability, settings
from startupmonkey.executor import context, dbcheck, derive, guard, policy, records, runs
from startupmonkey.models import durations, messages, remediation
from startupmonkey.models.enums import ActionId, RemediationState, risk_of

log = logging.getLogger(__name__)
#: How long intake waits for another replica to finish opening a Remediation of the same key
#: (lock_timeout of that wait; on timeout the message is retried).
KEY_LOCK_WAIT_MS = 30_000
_NOT_FIXED = frozenset({RemediationState.FAILED, RemediationState.REJECTED,
                        RemediationState.ROLLED_BACK, RemediationState.EXPIRED})


_COOLING = "cooling down until "


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a detection's action would run: ``database`` None is the home database; a
    ``refusal`` says why it runs nowhere (then ``database`` means nothing), ``outcome`` how it
    is counted (``detections_total{outcome=...}``): ``other_database`` (not a database the
    executor acts in, or the key disagrees), ``bad_database`` (a name no database can have:
    a NUL, over 63 bytes), ``database_refused`` (the database refused the login for good
    not long ago)."""

    database: str | None = None
    refusal: str | None = None
    outcome: str = "other_database"


def route(database: str, key: str, home: str, covers: Callable[[str], bool]) -> Route:
    """The database a detection is about, or why it is refused.

    Home: ``database`` is the home database as PostgreSQL names it (``home``, its
    ``current_database()``) and the key has no ``db=`` part right after the detector. Another
    database: ``covers(database)`` (the executor's ``databases``, template0 and template1
    never) and the key's target starts with exactly ``db=<database quoted as SQL needs>/``.
    Anything else is refused: the detection and its key disagree, or nobody asked the
    executor to act there; so is a name no database can have
    (``settings.database_name_problem``: libpq would cut it at a NUL, the server would cut
    it at 63 bytes, each to another database's name). Never raises, whatever the strings.
    """
    shown = _shown(database)
    problem = settings.database_name_problem(database)
    if problem is not None:
        return Route(refusal=f"database {shown} cannot be acted in: {problem}",
                     outcome="bad_database")
    if database == home:
        if messages.key_names_database(key):
            return Route(refusal=f"database {shown} is the home database but the key names "
                                 f"another one ({_shown(messages.key_target(key))})")
        return Route()
    if not covers(database):
        return Route(refusal=f"database {shown} is not one this executor acts in "
                             "(executor.databases)")
    if not messages.key_in_database(key, database):
        return Route(refusal=f"the key ({_shown(messages.key_target(key))}) does not name "
                             f"database {shown}")
    return Route(database=database)


def _shown(text: str, most: int = 60) -> str:
    """``repr(text)`` cut to about ``most`` characters: names from a message may be hostile
    (long, control characters)."""
    shown = repr(text)
    return shown if len(shown) <= most else shown[:most] + "..."


class Admission:
    """Turns detections into Remediations."""

    def __init__(self, ctx: context.Context, background: runs.Runs) -> None:
        self.ctx = ctx
        self.runs = background
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._malformed_log = observability.RateLimitedLog(log)
        self._refused_log = observability.RateLimitedLog(log)

    async def handle(self, data: bytes) -> bool:
        """Handle one message. True: done with it (ack); False: redeliver later."""
        metrics = self.ctx.metrics
        try:
            detection = messages.parse_detection(data)
        except messages.MalformedMessage as exc:
            metrics.malformed.labels(exc.kind).inc()
            self._malformed_log.warning(exc.kind, "dropping malformed %s message: %s",
                                        exc.kind, exc.reason)
            return True
        try:
            return await self._handle(detection)
        except Exception as exc:  # an API error or a bug: this message only, redelivered
            metrics.detections.labels("error").inc()
            if isinstance(exc, records.api_errors()):
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
        ref, counted = self.ctx.config.monitor, self.ctx.metrics.detections
        if (detection.namespace, detection.monitor) != (ref.namespace, ref.name):
            counted.labels("other_monitor").inc()
            return True
        if detection.id in self._seen:
            counted.labels("duplicate").inc()
            return True
        try:
            created = await self._record(detection)
        except (psycopg.Error, OSError, records.Conflict) as exc:
            log.warning("detection %s not recorded yet, will retry: %s", detection.id,
                        db.safe_error(exc))
            counted.labels("retry").inc()
            return False
        if isinstance(created, Route):
            counted.labels(created.outcome).inc()
            self._refused_log.warning(created.outcome, "dropping detection %s: %s",
                                      detection.id, created.refusal)
            return True
        self._remember(detection.id)
        counted.labels("recorded" if created else "duplicate").inc()
        if created is not None and created.state is RemediationState.APPROVED:
            self.runs.schedule_start(created)  # in the background: the message is acked now
        return True

    async def _record(self, detection: messages.Detection) -> records.Record | Route | None:
        """Open a Remediation for ``detection`` unless its key already has an open one; the
        :class:`Route` refusing it when it is about a database the executor does not act in.

        The home database's name is learnt on this (home) connection, from PostgreSQL: behind
        a pooler the configured name may be an alias. The check (list) and the create run
        under a PostgreSQL advisory lock of the key, so two replicas handed different
        occurrences of one key at once cannot both see the key free and each open one (the
        names differ, so ``create`` alone would not refuse the second).
        """
        conn = await self.ctx.connect()
        try:
            cursor = await conn.execute(
                "SELECT pg_catalog.set_config('lock_timeout', %s, false), "
                "pg_catalog.current_database()", (f"{KEY_LOCK_WAIT_MS}ms",))
            row = await cursor.fetchone()
            assert row is not None
            self.ctx.home_database = str(row[1])
            where = route(detection.database, detection.key, self.ctx.home_database,
                          await self._covers(conn, detection.database))
            if where.refusal is not None:
                return where
            known = self.ctx.refusal(where.database)
            if known is not None:
                return Route(refusal=known, outcome="database_refused")
            keys = guard.detection_key_lock(detection.key)
            await conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)", keys)
            try:
                return await self._record_locked(detection, where.database)
            finally:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)",
                                           keys)
        finally:
            await conn.close()  # also releases the lock if the unlock could not run

    async def _covers(self, conn: db.Conn, database: str) -> Callable[[str], bool]:
        """Which databases the executor acts in besides the home one, as ``status.databases``
        lists them: the listed ones, or with ``all`` those :func:`dbcheck.other_databases`
        reads from the server on ``conn`` (the home connection), the same set the collector
        watches. The server is asked only for a database ``all`` would cover."""
        executor = self.ctx.config.executor
        if executor is None or executor.databases != "all" or database == \
                self.ctx.home_database or not self.ctx.acts_in(database) or \
                settings.database_name_problem(database) is not None:
            return self.ctx.acts_in
        listed = frozenset(await dbcheck.other_databases(conn, executor,
                                                         self.ctx.home_database or ""))
        return listed.__contains__

    async def _record_locked(self, detection: messages.Detection,
                             database: str | None) -> records.Record | None:
        name = remediation.object_name(detection.monitor, detection.key, detection.id)
        existing = await self.ctx.store.list(key=detection.key)
        if any(r.name == name for r in existing) or any(
                r.open and r.spec.detection_key == detection.key for r in existing):
            return None
        record = self._new_record(name, detection, database)
        cooling = self._cooling_down(detection, existing)
        if cooling:
            record.move(RemediationState.REJECTED, cooling)
        else:
            await self._plan_into(record, detection)
        if not await self.ctx.store.create(record):
            return None
        await self.ctx.announce(record)
        return record

    def _new_record(self, name: str, detection: messages.Detection,
                    database: str | None) -> records.Record:
        """The record of ``detection`` in ``database`` (None: the home one), its summary
        saying which database when not the home one (approvers read it)."""
        summary = detection.summary if database is None else \
            f"{detection.summary.rstrip('.')}{remediation.where(database)}"
        spec = remediation.RemediationSpec(
            monitor=detection.monitor, detection_key=detection.key, detection_id=detection.id,
            detector=detection.detector, action=detection.proposed_action,
            risk_class=risk_of(detection.proposed_action), target=detection.target,
            database=database,
            sql_hash=remediation.sql_hash("", None), summary=summary[:1024],
            evidence={**{k: str(v)[:4096] for k, v in list(detection.evidence.items())[:63]},
                      context.FIRST_SEEN: detection.first_seen.isoformat()})
        return records.Record(name=name, namespace=detection.namespace, spec=spec,
                              status=remediation.RemediationStatus(executor=self.ctx.identity),
                              created=records.utcnow())

    def _cooling_down(self, detection: messages.Detection,
                      existing: list[records.Record]) -> str | None:
        threshold = self.ctx.config.spec.thresholds.for_detector(detection.detector)
        window = datetime.timedelta(seconds=durations.parse_duration(threshold.cooldown))
        now = records.utcnow()
        for record in existing:
            if record.spec.detection_key != detection.key or record.state not in _NOT_FIXED:
                continue
            if record.status.message.startswith(policy.MODE_CHANGED):
                continue  # never tried: ended because the mode changed after its approval
            ended = record.status.history[-1].time if record.status.history else record.created
            if now - ended < window:
                return (f"cooling down until {(ended + window).isoformat()}: {record.name} "
                        f"ended {record.state.value}: {_cause(record.status.message)}")
        return None

    async def _plan_into(self, record: records.Record, detection: messages.Detection) -> None:
        try:
            conn = await self.ctx.connect(record.spec.database)
        except context.DatabaseRefused as exc:
            # Gone, closed to connections or not ours: nothing to plan or run there; new
            # detections of it are dropped while the refusal is remembered.
            record.move(RemediationState.REJECTED, f"refused: {exc.reason}; nothing ran")
            return
        try:
            # Re-checked against the monitor's own thresholds, not the message's numbers: a
            # condition that never held is Rejected here, before anyone is asked to approve.
            derived = await derive.derive(conn, detection, self.ctx.config.spec.thresholds)
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
        if derived.columns and list(derived.columns) != spec.target.columns:
            # create_index: intake chose another of the detection's keys by HypoPG cost; the
            # target is the key the SQL builds (its index name follows from it).
            spec.target.columns, spec.target.index = list(derived.columns), None
        if derived.note:
            if derive.KEY_CHOICE not in spec.evidence and len(spec.evidence) >= derive.MAX_EVIDENCE:
                spec.evidence.pop("candidate_choice", None)  # the analyser's; superseded
            if len(spec.evidence) < derive.MAX_EVIDENCE or derive.KEY_CHOICE in spec.evidence:
                spec.evidence[derive.KEY_CHOICE] = derived.note[:4096]
        state = policy.first_state(self.ctx.config.spec, spec.action)
        if state is RemediationState.PENDING_APPROVAL:
            spec.approval_expires_at = policy.approval_deadline(self.ctx.config.spec,
                                                                records.utcnow())
        message = _first_message(state)
        record.move(state, f"{message}; {derived.note}" if derived.note else message)


def _first_message(state: RemediationState) -> str:
    return {
        RemediationState.OBSERVED: "observe mode: would have run the planned SQL",
        RemediationState.PENDING_APPROVAL: "waiting for approval (set spec.approved to true)",
        RemediationState.APPROVED: "approved by policy",
    }.get(state, state.value)


def _cause(message: str) -> str:
    """What an earlier occurrence ended with, quoted once: when it was itself refused for a
    cooldown, only the original cause it quoted (the reasons grew with every occurrence)."""
    while message.startswith(_COOLING):
        _, _, message = message.partition(": ")  # past "cooling down until <time>"
        _, _, message = message.partition(": ")  # past "<name> ended <state>"
    return message
