"""The detector registry: every detector the analyser runs, one module per group.

- ``tables``: dead_tuples, vacuum_blocked, stale_statistics (with ``horizon``: who holds the
  xmin horizon);
- ``sessions``: long_running_query, idle_in_transaction, blocking_lock, connection_saturation;
- ``database``: cache_hit_ratio, xid_wraparound;
- ``indexes``: invalid_index, unused_index, duplicate_index.

``missing_index`` and ``slow_statement`` belong to a separate issue: they go in a
``statements`` module here (statement deltas from ``Window.statement_deltas``, texts from
``Window.texts``, the catalog from ``Window.catalog``) and are added to :data:`REGISTRY`;
:data:`PENDING` lists them until then. Nothing else needs to change: the engine runs whatever
the registry holds, and the lifecycle, publishing and thresholds are per detector id.
"""

from __future__ import annotations

from startupmonkey.analyser import findings
from startupmonkey.analyser.detectors import database, indexes, sessions, tables
from startupmonkey.models.enums import DetectorId

REGISTRY: tuple[findings.Detector, ...] = (
    *tables.DETECTORS,
    *sessions.DETECTORS,
    *database.DETECTORS,
    *indexes.DETECTORS,
)

#: Detector ids that are not built yet (missing-index issue).
PENDING: frozenset[DetectorId] = frozenset({DetectorId.MISSING_INDEX, DetectorId.SLOW_STATEMENT})

assert {d.id for d in REGISTRY} | PENDING == set(DetectorId), "every detector id is accounted for"
