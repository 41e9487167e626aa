"""The JSONL store: Remediation records as an append-only audit log (standalone runner).

Every write appends the whole record as one JSON line with a timestamp, so the file is both the
durable state (the last line of a name wins when the executor starts again) and the audit trail
a person reads. One executor process owns the file; compare-and-set happens in memory under a
lock, so the guarantees match the Kubernetes store's.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from startupmonkey.executor import records
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState


class JournalStore:
    """A :class:`records.Store` over a JSONL file."""

    def __init__(self, path: Path, namespace: str, monitor: str) -> None:
        self.path = path
        self.namespace = namespace
        self.monitor = monitor
        self._records: dict[str, records.Record] = {}
        self._lock = asyncio.Lock()
        self._last_database: dict[str, Any] | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("kind") != "Remediation":
                continue
            record = records.Record.from_body(entry["object"])
            if record.spec.monitor == self.monitor and record.namespace == self.namespace:
                self._records[record.name] = record

    def _append(self, event: str, record: records.Record) -> None:
        entry: dict[str, Any] = {"time": records.utcnow().isoformat(), "kind": "Remediation",
                                 "event": event, "object": record.body()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as journal:
            journal.write(json.dumps(entry, default=str) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    @staticmethod
    def _copy(record: records.Record) -> records.Record:
        return records.Record.from_body(record.body())

    async def create(self, record: records.Record) -> bool:
        async with self._lock:
            if record.name in self._records:
                return False
            record.created = records.utcnow()
            self._records[record.name] = self._copy(record)
            self._append("created", record)
            return True

    async def get(self, name: str) -> records.Record | None:
        async with self._lock:
            found = self._records.get(name)
            return self._copy(found) if found else None

    async def list(self) -> list[records.Record]:
        async with self._lock:
            return [self._copy(r) for r in self._records.values()]

    async def report_database(self, status: dict[str, Any]) -> None:
        """Journal the database status when it changes (not every tick)."""
        comparable = {k: v for k, v in status.items() if k != "checkedAt"}
        if comparable == self._last_database:
            return
        self._last_database = comparable
        async with self._lock:
            entry = {"time": records.utcnow().isoformat(), "kind": "Database", "status": status}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as journal:
                journal.write(json.dumps(entry, default=str) + "\n")

    async def approve(self, name: str, approver: str) -> None:
        async with self._lock:
            current = self._records.get(name)
            if current is None:
                raise KeyError(name)
            current.spec.approved = True
            current.annotations[remediation.ANNOTATION_APPROVED_BY] = approver
            self._append("approved", current)

    async def request_rollback(self, name: str, requester: str, reason: str) -> None:
        async with self._lock:
            current = self._records.get(name)
            if current is None:
                raise KeyError(name)
            current.annotations[remediation.ANNOTATION_ROLLBACK] = f"{requester}: {reason}"
            self._append("rollback-requested", current)

    async def request_reject(self, name: str, requester: str, reason: str) -> None:
        async with self._lock:
            current = self._records.get(name)
            if current is None:
                raise KeyError(name)
            current.annotations[records.ANNOTATION_REJECT] = f"{requester}: {reason}"[:1024]
            self._append("reject-requested", current)

    async def update(self, record: records.Record, expected: RemediationState) -> None:
        async with self._lock:
            current = self._records.get(record.name)
            if current is None or current.state is not expected:
                raise records.Conflict(f"{record.name} is no longer {expected.value}")
            record.created = current.created
            record.spec.approved = current.spec.approved or record.spec.approved
            record.annotations = {**current.annotations, **record.annotations}
            self._records[record.name] = self._copy(record)
            self._append(record.state.token, record)
