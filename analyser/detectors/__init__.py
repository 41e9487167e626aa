"""The detector registry: every detector the analyser runs, one module per group.

- ``tables``: dead_tuples, vacuum_blocked, stale_statistics (with ``horizon``: who holds the
  xmin horizon);
- ``sessions``: long_running_query, idle_in_transaction, blocking_lock, connection_saturation;
- ``database``: cache_hit_ratio, xid_wraparound;
- ``indexes``: invalid_index, unused_index, duplicate_index;
- ``statements``: missing_index, slow_statement (statement deltas from
  ``Window.statement_deltas``, texts from ``Window.texts``, parsed by ``analyser/sqlparse.py``
  against ``Window.catalog``).

The engine runs whatever the registry holds; the lifecycle, publishing and thresholds are per
detector id.
"""

from __future__ import annotations

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import database, indexes, sessions, statements, tables
from startupmonkey.models.enums import DetectorId

REGISTRY: tuple[findings.Detector, ...] = (
    *tables.DETECTORS,
    *sessions.DETECTORS,
    *database.DETECTORS,
    *indexes.DETECTORS,
    *statements.DETECTORS,
)

assert {d.id for d in REGISTRY} == set(DetectorId), "every detector id is registered"
