"""The JSONL store: Remediation records as an append-only audit log (standalone runner).

Every write appends the whole record as one JSON line with a timestamp, so the file is both the
durable state (the last line of a name wins when the executor starts again) and the audit trail
a person reads. One executor process owns the file; compare-and-set happens in memory under a
lock, so the guarantees match the Kubernetes store's.

What a crash or a full disk leaves behind never stops the executor (``startupmonkey.auditlog``):
a line that is not a valid entry is skipped at start, copied to ``<file>.quarantine`` and
logged with its line number; every append starts on a fresh line, so a torn fragment never
glues itself to the next record; the file is created 0600. When the file holds many more
lines than records, the start compacts it to the last line of each record (the generation
before is kept as ``<file>.1``), so start-up and intake do not grow with the history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydantic

from startupmonkey import auditlog
from startupmonkey.executor import records
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState

log = logging.getLogger(__name__)

#: Compact at start when the file has more than this many lines per live record (and at
#: least COMPACT_MIN_LINES lines): each record's own history keeps its story.
COMPACT_RATIO = 4
COMPACT_MIN_LINES = 1000


class JournalStore:
    """A :class:`records.Store` over a JSONL file."""

    vouches_for_annotations = True

    def __init__(self, path: Path, namespace: str, monitor: str) -> None:
        self.path = path
        self.namespace = namespace
        self.monitor = monitor
        self._records: dict[str, records.Record] = {}
        self._by_key: dict[str, set[str]] = {}
        self._active: set[str] = set()
        self._lock = asyncio.Lock()
        #: This process's name for the store (random) and its count of Remediation commits:
        #: :meth:`revision`, which no other process (an executor started again) repeats.
        self._epoch = secrets.token_hex(6)
        self._commits = 0
        self._last_database: dict[str, Any] | None = None
        #: The last ``status.database`` reported (or journaled before a restart), as the
        #: executor API's DescribeMonitor answers it; None before the first.
        self.database: dict[str, Any] | None = None
        #: The last ``status.databases`` reported (or journaled), None when none was.
        self.databases: list[dict[str, Any]] | None = None
        self._appender = auditlog.Appender(path)
        self.quarantined = 0
        self._load()

    def _load(self) -> None:
        contents = auditlog.read(self.path)
        bad = list(contents.bad_lines)
        latest: dict[str, dict[str, Any]] = {}
        database: dict[str, Any] | None = None
        for entry in contents.entries:
            if entry.get("kind") == "Database":
                database = entry
                continue
            if entry.get("kind") != "Remediation":
                continue
            try:
                record = records.Record.from_body(entry["object"])
            except (KeyError, TypeError, ValueError, pydantic.ValidationError) as exc:
                bad.append((0, f"{type(exc).__name__}: {str(entry)[:2000]}"))
                continue
            latest[record.name] = entry
            if record.spec.monitor == self.monitor and record.namespace == self.namespace:
                self._hold(record)
        if database is not None and isinstance(database.get("status"), dict):
            self.database = database["status"]
            if isinstance(database.get("databases"), list):
                self.databases = database["databases"]
        if bad:
            self._quarantine(bad)
        lines = len(contents.entries) + len(contents.bad_lines)
        grown = lines >= COMPACT_MIN_LINES and lines > COMPACT_RATIO * (len(latest) + 1)
        if bad or grown:  # bad lines leave the file, so they are quarantined only once
            self._compact(list(latest.values()) + ([database] if database else []), lines)

    def _quarantine(self, bad: list[tuple[int, str]]) -> None:
        quarantine = self.path.with_name(self.path.name + ".quarantine")
        auditlog.append_lines(quarantine, [line for _, line in bad])
        self.quarantined = len(bad)
        numbers = ", ".join(str(n) for n, _ in bad[:10] if n) or "unparsable records"
        log.warning("skipped %d bad line(s) of %s (lines %s): not entries (a write torn by a "
                    "crash or a full disk?); copied to %s", len(bad), self.path, numbers,
                    quarantine, extra={"quarantined": len(bad)})

    def _compact(self, entries: list[dict[str, Any]], lines: int) -> None:
        previous = auditlog.keep_previous(self.path)
        auditlog.rewrite(self.path, entries)
        log.info("compacted %s from %d lines to %d (one per record); the previous file is %s",
                 self.path, lines, len(entries), previous)

    def _append(self, event: str, record: records.Record) -> None:
        entry: dict[str, Any] = {"time": records.utcnow().isoformat(), "kind": "Remediation",
                                 "event": event, "object": record.body()}
        self._appender.append(entry)

    @staticmethod
    def _copy(record: records.Record) -> records.Record:
        return records.Record.from_body(record.body())

    def _commit(self, event: str, record: records.Record) -> None:
        """Journal ``record`` first, then hold it: a write that fails (disk full) changes
        nothing, so memory never claims what the file does not have."""
        self._append(event, record)
        self._hold(self._copy(record))
        self._commits += 1

    def _hold(self, record: records.Record) -> None:
        self._records[record.name] = record
        self._by_key.setdefault(record.spec.detection_key, set()).add(record.name)
        if record.active:
            self._active.add(record.name)
        else:
            self._active.discard(record.name)

    def _current(self, name: str) -> records.Record:
        current = self._records.get(name)
        if current is None:
            raise KeyError(name)
        return self._copy(current)

    def revision(self) -> str:
        """Changes whenever a Remediation is created or changed (every commit), and never
        names two contents: ``<epoch>.<commits>``, the epoch new in each process. The
        executor API answers it so a reader compares it instead of reading every record."""
        return f"{self._epoch}.{self._commits}"

    def snapshot(self) -> list[records.Record]:
        """Every record as held, without a copy: for reading only (the executor API's
        listings). Safe because a held record is never changed in place: every write holds a
        new copy (:meth:`_commit`)."""
        return list(self._records.values())

    async def create(self, record: records.Record) -> bool:
        async with self._lock:
            if record.name in self._records:
                return False
            record.created = records.utcnow()
            self._commit("created", record)
            return True

    async def get(self, name: str) -> records.Record | None:
        async with self._lock:
            found = self._records.get(name)
            return self._copy(found) if found else None

    async def list(self, *, key: str | None = None,
                   active: bool = False) -> list[records.Record]:
        async with self._lock:
            names: Iterable[str] = self._records
            if key is not None:
                names = self._by_key.get(key, set())
            if active:
                names = [n for n in names if n in self._active]
            return [self._copy(self._records[n]) for n in sorted(names)]

    async def report_database(self, status: dict[str, Any],
                              databases: Sequence[dict[str, Any]] | None = None) -> None:
        """Journal the database status when it changes (not every tick); the other databases'
        reachability (``databases``) goes in the same entry when given; given empty (no
        other database acted in any more), none is kept, as when not given."""
        databases = list(databases) if databases else None
        self.database = status
        self.databases = None if databases is None else [dict(e) for e in databases]
        comparable = {k: v for k, v in status.items() if k != "checkedAt"}
        if databases is not None:
            comparable["databases"] = [{k: v for k, v in one.items() if k != "checkedAt"}
                                       for one in databases]
        if comparable == self._last_database:
            return
        async with self._lock:
            entry: dict[str, Any] = {"time": records.utcnow().isoformat(), "kind": "Database",
                                     "status": status}
            if databases is not None:
                entry["databases"] = list(databases)
            self._appender.append(entry, sync=False)
            self._last_database = comparable

    async def approve(self, name: str, approver: str) -> None:
        async with self._lock:
            current = self._current(name)
            current.spec.approved = True
            current.annotations[remediation.ANNOTATION_APPROVED_BY] = approver
            self._commit("approved", current)

    async def request_rollback(self, name: str, requester: str, reason: str) -> None:
        async with self._lock:
            current = self._current(name)
            current.annotations[remediation.ANNOTATION_ROLLBACK] = f"{requester}: {reason}"
            self._commit("rollback-requested", current)

    async def request_reject(self, name: str, requester: str, reason: str) -> None:
        async with self._lock:
            current = self._current(name)
            current.annotations[records.ANNOTATION_REJECT] = f"{requester}: {reason}"[:1024]
            self._commit("reject-requested", current)

    async def update(self, record: records.Record, expected: RemediationState) -> None:
        async with self._lock:
            current = self._records.get(record.name)
            if current is None or current.state is not expected:
                raise records.Conflict(f"{record.name} is no longer {expected.value}")
            record.created = current.created
            record.spec.approved = current.spec.approved or record.spec.approved
            record.annotations = {**current.annotations, **record.annotations}
            self._commit(record.state.token, record)
