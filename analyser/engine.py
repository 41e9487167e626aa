"""The analyser's core: one complete snapshot in, detections out.

Where it sits: ``server.py`` reassembles chunks into a snapshot and calls :meth:`Engine.apply`;
the engine checks the snapshot belongs to this monitor and is new (deduplication by
``(collector_id, sequence)`` and by time), adds it to its database's ``History``, runs every
enabled detector of the registry on the resulting ``Window``, hands the findings to the
``Lifecycle`` and returns the Detection v1 messages due for publication, which the caller
publishes (``publisher.py``) and confirms with :meth:`Engine.published`. Remediation events
from NATS come in through :meth:`Engine.remediation_event` (cooldowns).

Thresholds come from ``spec.thresholds`` of the mounted config and are swapped atomically by
:meth:`Engine.configure` on hot reload. The engine does no I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Final

import pydantic

from startupmonkey import settings
from startupmonkey.analyser import findings, history, lifecycle, metrics, privacy, sqlparse
from startupmonkey.analyser.detectors import REGISTRY, statements
from startupmonkey.models import durations, messages, monitor, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, ActionId, DetectorId, risk_of
from startupmonkey.v1 import ingest_pb2, snapshot_pb2

log = logging.getLogger(__name__)
Status = ingest_pb2.AckStatus

MAX_COLLECTORS: Final = 64
"""Collector ids whose last applied sequence is remembered (for DUPLICATE answers)."""
RETIRE_AFTER: Final = 600.0
"""Seconds of server time after which the problems of another database that sent nothing are
retired (resolved): it was dropped, renamed or is no longer watched."""
Scope = tuple[bool, str]
"""A database as the analyser tells them apart: (home, name). The home database (the
collector's login database) and another of the same name never mix."""
MAX_DATABASES: Final = 2 * settings.MAX_DATABASES
"""Databases with a history: twice what one collector may watch, so re-created and renamed
databases have room; the least recently seen goes first."""
SUMMARY_MAX: Final = 1024
TEXT_ASK_AGAIN: Final = 300.0
"""Seconds before the text of the same queryid is asked for again (the collector gives up on
a queryid pg_stat_statements no longer has; reading texts is the expensive query)."""
MAX_ASKED: Final = 1024
"""Queryids whose last request for text is remembered."""


_WAITING: Final = object()
"""What :meth:`Engine._run` returns for a detector waiting for a section not collected this
round."""


@dataclasses.dataclass(frozen=True)
class Applied:
    """How a snapshot was handled: the ack fields and the detections due for publication."""

    status: ingest_pb2.AckStatus.ValueType
    message: str = ""
    want_catalog: bool = False
    want_statement_texts: tuple[int, ...] = ()
    want_full_statements: bool = False
    """The snapshot carried only the changed statements and its history could not read them
    (``History.unreadable_statements``)."""
    due: tuple[tuple[lifecycle.Occurrence, messages.Detection], ...] = ()

    def ack(self, sequence: int) -> ingest_pb2.Ack:
        """The Ack of snapshot ``sequence`` (this analyser reads changed-only statement
        snapshots: every ack says so)."""
        return ingest_pb2.Ack(sequence=sequence, status=self.status, message=self.message,
                              want_catalog=self.want_catalog,
                              want_statement_texts=self.want_statement_texts,
                              want_full_statements=self.want_full_statements,
                              understands_changed_only_statements=True)


@dataclasses.dataclass(frozen=True)
class Watched:
    """The databases whose snapshots this monitor takes besides its home database (the
    collector's login database, whose snapshots are always taken): those of
    ``analyser.databases`` (a list, or every database but ``analyser.excludeDatabases`` with
    ``all``)."""

    others: frozenset[str] | None  # None: every database
    excluded: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: settings.ComponentConfig) -> Watched:
        """From a component config (no analyser block: the home database only)."""
        block = config.analyser
        if block is None or not block.databases:
            return cls(frozenset())
        if block.databases == "all":
            return cls(None, frozenset(block.exclude_databases))
        return cls(frozenset(block.databases))

    def covers(self, dbname: str) -> bool:
        """Whether snapshots of ``dbname`` (not the home database) are analysed."""
        if self.others is None:
            return dbname not in self.excluded and dbname not in TEMPLATES
        return dbname in self.others


TEMPLATES: Final = settings.TEMPLATE_DATABASES


class Engine:
    """Histories, detectors and the lifecycle of one monitor."""

    def __init__(self, config: settings.ComponentConfig, meters: metrics.Metrics) -> None:
        self.monitor = config.monitor
        self.meters = meters
        self.spec: monitor.DatabaseMonitorSpec = config.spec
        self.lifecycle = lifecycle.Lifecycle(config.monitor.namespace, config.monitor.name)
        self.watched = Watched.of(config)
        self.histories: collections.OrderedDict[Scope, history.History] = (
            collections.OrderedDict())
        """By database (:data:`Scope`), the least recently seen first."""
        self._last_round: dict[Scope, datetime.datetime] = {}
        self._applied: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._failing: set[tuple[DetectorId, bool, str]] = set()
        self._asked: collections.OrderedDict[tuple[bool, str, int], datetime.datetime] = (
            collections.OrderedDict())

    # ---- configuration

    @property
    def thresholds(self) -> thresholds.Thresholds:
        """The thresholds in force."""
        return self.spec.thresholds

    def configure(self, config: settings.ComponentConfig) -> None:
        """Hot reload: new thresholds apply from the next snapshot on."""
        if (config.monitor.namespace, config.monitor.name) != (self.monitor.namespace,
                                                               self.monitor.name):
            log.error("config names another monitor; a new analyser is needed for it")
            return
        self.spec = config.spec
        self.watched = Watched.of(config)
        for scope in [s for s in self.histories if not s[0] and not self.watched.covers(s[1])]:
            del self.histories[scope]
            self._retire(scope, "the monitor no longer watches it")
        for hist in self.histories.values():
            hist.retention = max(retention(self.thresholds), history.MIN_RETENTION)
        log.info("thresholds reloaded")

    # ---- snapshots

    def apply(self, snapshot: snapshot_pb2.Snapshot,
              texts: Mapping[int, snapshot_pb2.StatementText] | None = None) -> Applied:
        """Handle one complete snapshot (chunks already merged)."""
        refusal = self._refusal(snapshot)
        if refusal is not None:
            return refusal
        self._remember(snapshot.collector_id, snapshot.sequence)
        if snapshot.collector.connection_error:
            # Nothing was read, and collected_at may not even be the server's clock.
            return Applied(Status.ACK_STATUS_ACCEPTED, "the collector could not reach the "
                           "database: nothing to analyse")
        sample = history.Sample(snapshot)
        if sample.identity is None:
            return Applied(Status.ACK_STATUS_ACCEPTED, "no database data in this snapshot")
        hist = self._history(snapshot.database.dbname, snapshot.database.also_watched)
        try:
            resets = hist.add(sample)
        except ValueError as exc:
            return Applied(Status.ACK_STATUS_DUPLICATE, str(exc))
        self._log_resets(snapshot.database.dbname, resets)
        if hist.unreadable_statements:
            self.meters.statement_reads_unreadable.labels(hist.unreadable_statements).inc()
            log.info("changed-only statements that cannot be read: ignored, the full set asked "
                     "for", extra={"database": snapshot.database.dbname,
                                   "sequence": snapshot.sequence,
                                   "reason": hist.unreadable_statements})
        window = hist.window(texts)
        window.home = not snapshot.database.also_watched
        self._last_round[(window.home, window.dbname)] = window.now
        if window.home:
            self._retire_silent(window.now)
        due = self._detect(window)
        return Applied(Status.ACK_STATUS_ACCEPTED, want_catalog=hist.wants_catalog,
                       want_statement_texts=self._want_texts(window),
                       want_full_statements=hist.wants_full_statements, due=due)

    def _want_texts(self, window: history.Window) -> tuple[int, ...]:
        """Hot statements without text on this stream, each asked at most every
        :data:`TEXT_ASK_AGAIN` seconds (missing_index parses them)."""
        if not self.thresholds.missing_index.enabled:
            return ()
        wanted = []
        for queryid in statements.wanted_texts(window):
            key = (window.home, window.dbname, queryid)  # a queryid may recur in a clone
            asked = self._asked.get(key)
            if asked is not None and (window.now - asked).total_seconds() < TEXT_ASK_AGAIN:
                continue
            self._asked[key] = window.now
            self._asked.move_to_end(key)
            wanted.append(queryid)
        while len(self._asked) > MAX_ASKED:
            self._asked.popitem(last=False)
        return tuple(wanted)

    def _refusal(self, snapshot: snapshot_pb2.Snapshot) -> Applied | None:
        ref = snapshot.monitor
        if (ref.namespace, ref.name) != (self.monitor.namespace, self.monitor.name):
            return Applied(Status.ACK_STATUS_REJECTED,
                           f"snapshot for monitor {ref.namespace}/{ref.name}; this analyser "
                           f"serves {self.monitor.namespace}/{self.monitor.name}")
        if not snapshot.collector_id or snapshot.sequence < 1:
            return Applied(Status.ACK_STATUS_REJECTED, "collector_id and sequence are required")
        dbname = snapshot.database.dbname
        if snapshot.database.also_watched and not self.watched.covers(dbname):
            return Applied(Status.ACK_STATUS_REJECTED,
                           f"snapshot of database {dbname!r}, which monitor "
                           f"{self.monitor.namespace}/{self.monitor.name} does not watch "
                           "besides its own (analyser.databases)")
        last = self._applied.get(snapshot.collector_id)
        if last is not None and snapshot.sequence <= last:
            return Applied(Status.ACK_STATUS_DUPLICATE,
                           f"sequence {last} of this collector was already applied")
        return None

    def is_duplicate(self, collector_id: str, sequence: int) -> bool:
        """True when this or a newer sequence of the collector was applied."""
        last = self._applied.get(collector_id)
        return last is not None and sequence <= last

    def _remember(self, collector_id: str, sequence: int) -> None:
        self._applied[collector_id] = sequence
        self._applied.move_to_end(collector_id)
        while len(self._applied) > MAX_COLLECTORS:
            self._applied.popitem(last=False)

    def _history(self, dbname: str, also_watched: bool = False) -> history.History:
        """The history of a database (by :data:`Scope`: a home database may be called like
        another behind a pooler alias; they never share a history)."""
        scope = (not also_watched, dbname)
        hist = self.histories.get(scope)
        if hist is None:
            hist = history.History(retention(self.thresholds))
            self.histories[scope] = hist
        self.histories.move_to_end(scope)
        while len(self.histories) > MAX_DATABASES:
            evicted, _ = self.histories.popitem(last=False)
            self._retire(evicted, "its history made room for another database's")
        return hist

    def _retire_silent(self, now: datetime.datetime) -> None:
        """Retire the problems of other databases that sent nothing for
        :data:`RETIRE_AFTER` seconds of server time (dropped, renamed, no longer listed by
        the collector): no round of theirs will ever judge them again."""
        for scope, last in list(self._last_round.items()):
            if not scope[0] and (now - last).total_seconds() > RETIRE_AFTER:
                del self._last_round[scope]
                self.histories.pop(scope, None)
                self._retire(scope, f"nothing from it for {RETIRE_AFTER:.0f} s")

    def _retire(self, scope: Scope, why: str) -> None:
        for occurrence in self.lifecycle.retire(scope):
            self.meters.resolved.labels(occurrence.detector.value).inc()
            log.info("detection retired: %s", why, extra={
                "key": occurrence.key, "detection_id": occurrence.id,
                "database": occurrence.database})

    def _log_resets(self, dbname: str, resets: list[str]) -> None:
        for scope in resets:
            self.meters.resets.labels(scope).inc()
            log.info("counter reset detected (%s): new baseline, no delta crosses it", scope,
                     extra={"database": dbname, "scope": scope})

    # ---- detectors and lifecycle

    def _detect(self, window: history.Window
                ) -> tuple[tuple[lifecycle.Occurrence, messages.Detection], ...]:
        found, judged, enabled, waiting = self._run_detectors(window)
        outcome = self.lifecycle.observe(lifecycle.Round(
            window.dbname, window.now, found, judged, frozenset(enabled), frozenset(waiting),
            window.home))
        self._count(outcome)
        due = []
        for occurrence in outcome.due:
            try:
                due.append((occurrence, self._detection(occurrence)))
            except pydantic.ValidationError as exc:  # a finding no consumer could read
                self.meters.publish_errors.inc()
                log.error("cannot build the detection message: %s", exc,
                          extra={"key": occurrence.key})
        return tuple(due)

    def _run_detectors(self, window: history.Window
                       ) -> tuple[list[findings.Finding], dict[DetectorId, bool],
                                  list[DetectorId], list[DetectorId]]:
        """Findings; which detectors judged (and on complete data); which are enabled; which
        waited for a section the collector did not read this round (NotCollected)."""
        complete = not window.latest.partial
        standby = window.snapshot.database.in_recovery
        found: list[findings.Finding] = []
        judged: dict[DetectorId, bool] = {}
        enabled: list[DetectorId] = []
        waiting: list[DetectorId] = []
        for detector in REGISTRY:
            if not self.thresholds.for_detector(detector.id).enabled:
                continue
            enabled.append(detector.id)
            if standby and DEFAULT_ACTION[detector.id] is not ActionId.ADVICE:
                judged[detector.id] = True  # nothing is ever executed on a standby
                continue
            result = self._run(detector, window)
            if result is _WAITING:
                waiting.append(detector.id)
            elif isinstance(result, list):
                found += result
                judged[detector.id] = complete
        return found, judged, enabled, waiting

    def _run(self, detector: findings.Detector, window: history.Window
             ) -> list[findings.Finding] | object | None:
        """The detector's findings; :data:`_WAITING` when a section it needs was not
        collected this round (the collector's choice, not counted as no data); None when it
        could not judge or failed."""
        try:
            result = detector.run(window, self.thresholds)
        except findings.NotCollected:
            return _WAITING
        except findings.NoData:
            self.meters.not_judged.labels(detector.id.value).inc()
            return None
        except Exception:
            self.meters.detector_errors.labels(detector.id.value).inc()
            failing = (detector.id, window.home, window.dbname)
            if failing not in self._failing:
                self._failing.add(failing)
                log.exception("detector %s failed (logged once; it is skipped until it "
                              "works again)", detector.id.value)
            return None
        self._failing.discard((detector.id, window.home, window.dbname))
        if detector.id is DetectorId.MISSING_INDEX:
            result = statements.within_budget(result, self.spec.limits.max_indexes_per_table)
        for reason, count in sqlparse.take_skipped().items():
            self.meters.statements_skipped.labels(reason).inc(count)
        result = privacy.redact_findings(result, self.spec.privacy.query_text)
        for finding in result:
            self.meters.findings.labels(finding.detector.value).inc()
        return result

    def _count(self, outcome: lifecycle.Outcome) -> None:
        for occurrence in outcome.opened:
            log.info("new detection: %s", occurrence.finding.summary,
                     extra={"key": occurrence.key, "detection_id": occurrence.id,
                            "detector": occurrence.detector.value})
        for occurrence in outcome.resolved:
            self.meters.resolved.labels(occurrence.detector.value).inc()
            log.info("detection resolved", extra={"key": occurrence.key,
                                                  "detection_id": occurrence.id})
        for key in outcome.suppressed:
            self.meters.suppressed.labels(key.split("/")[2]).inc()
        per_detector = collections.Counter(o.detector for o in self.lifecycle.active.values())
        for detector_id in DetectorId:
            self.meters.active.labels(detector_id.value).set(per_detector.get(detector_id, 0))

    def _detection(self, occurrence: lifecycle.Occurrence) -> messages.Detection:
        finding = occurrence.finding
        return messages.Detection(
            id=occurrence.id, key=occurrence.key, namespace=self.monitor.namespace,
            monitor=self.monitor.name, database=occurrence.database,
            detector=finding.detector, proposed_action=finding.action,
            risk_class=risk_of(finding.action), severity=finding.severity,
            target=finding.target, summary=finding.summary[:SUMMARY_MAX],
            evidence=dict(finding.evidence), first_seen=occurrence.first_seen,
            last_seen=occurrence.last_seen,
            published_at=datetime.datetime.now(datetime.UTC))

    def published(self, occurrence: lifecycle.Occurrence) -> None:
        """Confirm a publication (an unconfirmed one is retried on the next snapshot)."""
        self.lifecycle.published(occurrence)
        kind = "new" if occurrence.first_seen == occurrence.last_seen else "republish"
        self.meters.published.labels(occurrence.detector.value, kind).inc()

    # ---- remediation events

    def remediation_event(self, event: messages.RemediationEvent) -> bool:
        """Apply a remediation event (cooldown after a non-fixing end); True if it did."""
        block = self.thresholds.for_detector(event.detector)
        return self.lifecycle.remediation_event(event, durations.parse_duration(block.cooldown))


def retention(limits: thresholds.Thresholds) -> float:
    """Seconds of history the thresholds need: the longest window a detector looks back
    over (cache-hit window, dead-tuples grace, the statement detectors' recent window plus
    baseline), with a quarter more for thinning."""
    longest = max(durations.parse_duration(limits.cache_hit_ratio.window),
                  durations.parse_duration(limits.dead_tuples.autovacuum_grace),
                  statements.HISTORY_SECONDS)
    return longest * 1.25
