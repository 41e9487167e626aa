"""What every detector shares: the :class:`Finding` it returns, the :class:`Detector` record
the registry (``detectors/__init__.py``) holds, and :class:`NoData` for "cannot judge this
round". Kept outside the ``detectors`` package so that ``history`` can use its helpers.

A detector is a pure function ``(window, thresholds) -> list[Finding]``: it reads the
:class:`~startupmonkey.analyser.history.Window` (the newest snapshot of one database and the
short history behind it) and the whole ``spec.thresholds`` (a detector reads its own block,
and may read a neighbour's, e.g. vacuum_blocked uses dead_tuples' row minimum). It never does
I/O and keeps no state; the lifecycle (``analyser/lifecycle.py``) turns findings into
occurrences with ids.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from google.protobuf import timestamp_pb2

from startupmonkey.models import messages, remediation, thresholds
from startupmonkey.models.enums import ActionId, DetectorId
from startupmonkey.v1 import snapshot_pb2

if TYPE_CHECKING:
    from startupmonkey.analyser.history import Window

Severity = Literal["info", "warning", "critical"]
#: Evidence is flat: the executor stores it as a string map on the Remediation.
EvidenceValue = str | int | float | bool | None
Section = snapshot_pb2.Section


class NoData(Exception):
    """Raised by a detector that cannot judge this round (missing section, too little
    history, no catalog). The lifecycle then neither resolves nor opens its keys."""


class NotCollected(NoData):
    """A section the detector needs was not collected this round by the collector's choice:
    not listed in ``collector.sections`` at all (e.g. pg_stat_statements, read every few
    rounds when it holds thousands of entries). Not a lack of data: the engine does not count
    it as "no data", and the lifecycle keeps the detector's occurrences as they are (their
    re-publication stays on schedule)."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem seen in one snapshot: what, where, what to do, and the numbers."""

    detector: DetectorId
    #: The deterministic target part of the detection key (``schema.table``, ``pid@...``).
    target_key: str
    target: remediation.Target
    action: ActionId
    severity: Severity
    summary: str
    evidence: Mapping[str, EvidenceValue]


Run = Callable[["Window", thresholds.Thresholds], list[Finding]]


@dataclasses.dataclass(frozen=True)
class Detector:
    """A registered detector: its id and its function."""

    id: DetectorId
    run: Run


def when(ts: timestamp_pb2.Timestamp) -> datetime.datetime:
    """A protobuf Timestamp as an aware UTC datetime (microseconds kept, as PostgreSQL has)."""
    return ts.ToDatetime(tzinfo=datetime.UTC)


def iso(value: datetime.datetime | None) -> str | None:
    """ISO 8601 text for evidence and keys."""
    return value.isoformat() if value is not None else None


def ident(name: str) -> str:
    """An identifier as SQL would need it written, quoted unless plain lower case (for
    summaries and keys only; the executor quotes with psycopg.sql):
    :func:`startupmonkey.models.messages.quote_ident`, which keys of other databases use."""
    return messages.quote_ident(name)


def table_key(schema: str, name: str) -> str:
    """Target part of a key for a table or an index: ``schema.name``, each part quoted as SQL
    would need it, so no two objects share a key (``"a.b".c`` is not ``a."b.c"``)."""
    return f"{ident(schema)}.{ident(name)}"


def session_key(pid: int, backend_start: datetime.datetime | None,
                episode: datetime.datetime | None) -> str:
    """Target part of a key for a session problem: the backend (pid and start, so a reused
    pid is another key) and the episode (query start or state change), so a new query or a
    new idle spell is a new problem."""
    return f"pid={pid}@{iso(backend_start)}/{iso(episode)}"


def seconds(td: datetime.timedelta) -> float:
    """Whole seconds of a timedelta as float, for evidence."""
    return round(td.total_seconds(), 3)
