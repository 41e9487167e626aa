"""Detection lifecycle: from per-snapshot findings to occurrences with stable ids.

docs/design.md#event-bus: a detection's ``key`` (namespace/monitor/detector/target) is
deterministic; its ``id`` is unique per *occurrence*. The rules, per key:

- **New occurrence**: a finding whose key is not active (and not cooling down) opens an
  occurrence with ``id = new_occurrence_id(key, first_seen)`` and is published at once.
- **Active**: while later snapshots keep finding it, the same detection (same id, updated
  ``lastSeen``, evidence and severity) is re-published every :data:`REPUBLISH_EVERY`
  snapshots, so an executor that was away still sees it; sooner when its severity rises or
  when the previous publication failed.
- **Resolved**: after :data:`RESOLVE_AFTER` consecutive snapshots in which its detector ran
  on complete data and did not find it, the key is resolved and forgotten. If it comes back
  it is a new occurrence with a new id. A snapshot in which the detector could not judge
  (missing section, too little history, truncated data) counts neither way. One in which a
  section it needs was not collected by the collector's choice (pg_stat_statements read every
  few rounds: ``findings.NotCollected``) counts neither way either, but keeps re-publication
  on schedule: the occurrence's last finding is re-published (same ``lastSeen``) when due, and
  a failed publication is retried, as if it had been seen.
- **Cooldown**: a remediation event in a non-fixing terminal state (Rejected, Failed,
  RolledBack, Expired) for the key closes its occurrence and keeps the key quiet until
  ``event.time + thresholds.<detector>.cooldown``; if the problem is still there afterwards it
  is proposed again under a new id. Fixing or advisory terminal states (Succeeded,
  Recommended, Observed) change nothing: the occurrence stays active under its id until the
  problem is gone, so a fix that did not help is not retried in a loop.

Times are the snapshots' server times (``first_seen``/``last_seen``), and event times for
cooldowns. Memory is bounded by :data:`MAX_ACTIVE` occurrences and :data:`MAX_COOLDOWNS`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import Final

from startupmonkey.analyser import findings
from startupmonkey.models import messages
from startupmonkey.models.enums import DetectorId, RemediationState

log = logging.getLogger(__name__)

REPUBLISH_EVERY: Final = 6
"""Snapshots between two publications of an active detection (1 minute at the default 10s
interval)."""
RESOLVE_AFTER: Final = 3
"""Consecutive judged snapshots without the finding after which its key is resolved."""
MAX_ACTIVE: Final = 10_000
"""Active occurrences kept; beyond this new keys are dropped (and logged)."""
MAX_COOLDOWNS: Final = 10_000
"""Keys in cooldown kept; beyond this the soonest to expire are forgotten."""

NON_FIXING: Final = frozenset({RemediationState.REJECTED, RemediationState.FAILED,
                               RemediationState.ROLLED_BACK, RemediationState.EXPIRED})
_SEVERITY_RANK: Final = {"info": 0, "warning": 1, "critical": 2}


@dataclasses.dataclass
class Occurrence:
    """One occurrence of one key: what was last found, and its publication book-keeping."""

    key: str
    id: str
    database: str
    finding: findings.Finding
    first_seen: datetime.datetime
    last_seen: datetime.datetime
    missed: int = 0
    since_published: int = 0
    published: bool = False
    home: bool = True
    """Found in the home database (False: in ``database``, another one the monitor watches)."""

    @property
    def scope(self) -> tuple[bool, str]:
        """Which database's rounds judge it: the home one (whatever its name) or another."""
        return (self.home, self.database)

    @property
    def detector(self) -> DetectorId:
        """The detector that found it."""
        return self.finding.detector


@dataclasses.dataclass(frozen=True)
class Round:
    """What one snapshot of one database produced, for :meth:`Lifecycle.observe`."""

    database: str
    now: datetime.datetime
    findings: list[findings.Finding]
    #: Detectors that judged this round: True with complete data (absence counts as a miss),
    #: False with partial data (findings count, absence does not). Others did not judge.
    judged: Mapping[DetectorId, bool]
    enabled: frozenset[DetectorId]
    #: Detectors that waited this round for a section the collector chose not to read: their
    #: occurrences are neither seen nor missed, but stay on their re-publication schedule.
    waiting: frozenset[DetectorId] = frozenset()
    #: The monitor's home database (False: one the collector also watches; keys name it).
    home: bool = True

    @property
    def scope(self) -> tuple[bool, str]:
        """The database this round judges (see :attr:`Occurrence.scope`)."""
        return (self.home, self.database)


@dataclasses.dataclass
class Outcome:
    """What the lifecycle decided in one round (for publishing, logs and metrics)."""

    due: list[Occurrence] = dataclasses.field(default_factory=list)
    opened: list[Occurrence] = dataclasses.field(default_factory=list)
    resolved: list[Occurrence] = dataclasses.field(default_factory=list)
    suppressed: list[str] = dataclasses.field(default_factory=list)


class Lifecycle:
    """Occurrences of the keys of one monitor."""

    def __init__(self, namespace: str, monitor: str) -> None:
        self.namespace = namespace
        self.monitor = monitor
        self.active: dict[str, Occurrence] = {}
        self.cooldowns: dict[str, datetime.datetime] = {}

    def key_of(self, finding: findings.Finding, other_database: str | None = None) -> str:
        """The deterministic detection key of a finding: the target alone in the home
        database (so its keys stay what they were before a monitor could watch more than
        one), ``db=<database>/<target>`` in ``other_database`` (the name quoted as SQL would
        need it), so ``public.t`` of two databases are two keys."""
        return messages.detection_key(self.namespace, self.monitor, finding.detector,
                                      finding.target_key, other_database)

    def observe(self, round_: Round) -> Outcome:
        """Apply one round of findings; returns what to publish and what changed."""
        outcome = Outcome()
        self._drop_disabled(round_.enabled, outcome)
        self._expire_cooldowns(round_.now)
        seen: set[str] = set()
        for finding in round_.findings:
            key = self.key_of(finding, None if round_.home else round_.database)
            if key in seen:
                continue
            seen.add(key)
            self._seen(key, finding, round_, outcome)
        self._count_misses(seen, round_, outcome)
        self._keep_schedule(seen, round_, outcome)
        return outcome

    def published(self, occurrence: Occurrence) -> None:
        """Record a successful publication (a failed one is retried next snapshot)."""
        current = self.active.get(occurrence.key)
        if current is not None and current.id == occurrence.id:
            current.published = True

    def remediation_event(self, event: messages.RemediationEvent, cooldown: float) -> bool:
        """Apply a remediation event; True when it started a cooldown for its key."""
        if event.state not in NON_FIXING:
            return False
        until = event.time + datetime.timedelta(seconds=cooldown)
        previous = self.cooldowns.get(event.key)
        self.cooldowns[event.key] = max(until, previous) if previous else until
        occurrence = self.active.get(event.key)
        if occurrence is not None and occurrence.id == event.detection_id:
            del self.active[event.key]
        self._bound_cooldowns()
        log.info("detection key cooling down after a %s remediation", event.state.value,
                 extra={"key": event.key, "detection_id": event.detection_id,
                        "until": until.isoformat()})
        return True

    def _seen(self, key: str, finding: findings.Finding, round_: Round, outcome: Outcome
              ) -> None:
        occurrence = self.active.get(key)
        if occurrence is None:
            self._open(key, finding, round_, outcome)
            return
        rising = _SEVERITY_RANK[finding.severity] > _SEVERITY_RANK[occurrence.finding.severity]
        occurrence.finding, occurrence.last_seen = finding, round_.now
        occurrence.missed = 0
        occurrence.since_published += 1
        if rising or not occurrence.published or occurrence.since_published >= REPUBLISH_EVERY:
            self._due(occurrence, outcome)

    def _open(self, key: str, finding: findings.Finding, round_: Round, outcome: Outcome
              ) -> None:
        until = self.cooldowns.get(key)
        if until is not None and round_.now < until:
            outcome.suppressed.append(key)
            return
        if len(self.active) >= MAX_ACTIVE:
            log.warning("too many active detections; dropping a new one",
                        extra={"key": key, "limit": MAX_ACTIVE})
            return
        occurrence = Occurrence(key, messages.new_occurrence_id(key, round_.now),
                                round_.database, finding, round_.now, round_.now,
                                home=round_.home)
        self.active[key] = occurrence
        outcome.opened.append(occurrence)
        self._due(occurrence, outcome)

    @staticmethod
    def _due(occurrence: Occurrence, outcome: Outcome) -> None:
        occurrence.since_published = 0
        occurrence.published = False
        outcome.due.append(occurrence)

    def _count_misses(self, seen: set[str], round_: Round, outcome: Outcome) -> None:
        for key, occurrence in list(self.active.items()):
            if (key in seen or occurrence.scope != round_.scope
                    or not round_.judged.get(occurrence.detector, False)):
                continue
            occurrence.missed += 1
            if occurrence.missed >= RESOLVE_AFTER:
                del self.active[key]
                outcome.resolved.append(occurrence)

    def _keep_schedule(self, seen: set[str], round_: Round, outcome: Outcome) -> None:
        if not round_.waiting:
            return
        for key, occurrence in self.active.items():
            if (key in seen or occurrence.scope != round_.scope
                    or occurrence.detector not in round_.waiting):
                continue
            occurrence.since_published += 1
            if not occurrence.published or occurrence.since_published >= REPUBLISH_EVERY:
                self._due(occurrence, outcome)

    def retire(self, scope: tuple[bool, str]) -> list[Occurrence]:
        """Resolve every occurrence of a database no longer analysed (dropped, no longer
        watched, silent for long): nothing will judge them again."""
        gone = [o for o in self.active.values() if o.scope == scope]
        for occurrence in gone:
            del self.active[occurrence.key]
        return gone

    def _drop_disabled(self, enabled: Iterable[DetectorId], outcome: Outcome) -> None:
        allowed = set(enabled)
        for key, occurrence in list(self.active.items()):
            if occurrence.detector not in allowed:
                del self.active[key]
                outcome.resolved.append(occurrence)

    def _expire_cooldowns(self, now: datetime.datetime) -> None:
        for key in [k for k, until in self.cooldowns.items() if until <= now]:
            del self.cooldowns[key]

    def _bound_cooldowns(self) -> None:
        while len(self.cooldowns) > MAX_COOLDOWNS:
            soonest = min(self.cooldowns, key=self.cooldowns.__getitem__)
            del self.cooldowns[soonest]
