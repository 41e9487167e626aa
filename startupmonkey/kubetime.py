"""Kubernetes timestamps: now, parse and format, in one place.

Kubernetes stores times (``metav1.Time``: ``creationTimestamp``, ``deletionTimestamp``,
``lastTransitionTime``, Event times) as RFC 3339 in UTC at the second, ``2026-11-28T12:00:00Z``.
Every component reads and writes them through this module, so they compare and round-trip
the same everywhere. Times are always timezone-aware: a stamp without an offset is refused
rather than guessed.
"""

from __future__ import annotations

import datetime

#: The ``metav1.Time`` layout.
LAYOUT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> datetime.datetime:
    """Now, timezone-aware UTC, at the second (as Kubernetes stores times)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def parse(stamp: str) -> datetime.datetime:
    """An aware datetime from an RFC 3339 / ISO 8601 stamp (``Z`` or an offset); ValueError
    when it does not parse or has no offset."""
    value = datetime.datetime.fromisoformat(stamp)
    if value.tzinfo is None:
        raise ValueError(f"time {stamp!r} has no timezone")
    return value


def parse_or_none(stamp: object) -> datetime.datetime | None:
    """:func:`parse` for loose input (a field of an object read as a dict): None when it is
    not a string or does not parse."""
    if not isinstance(stamp, str):
        return None
    try:
        return parse(stamp)
    except ValueError:
        return None


def format(when: datetime.datetime) -> str:  # kubetime.format: the module is the namespace
    """``metav1.Time``: UTC, at the second, ``Z`` (an aware ``when``)."""
    return when.astimezone(datetime.UTC).strftime(LAYOUT)
