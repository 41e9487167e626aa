"""The analyser: receives snapshots over gRPC, computes rates from deltas, runs the detectors
(pure functions) and publishes Detection v1 messages on NATS. It has no database connection.

Imports only ``startupmonkey`` (shared), never another component. Map of the package
(docs/analyser.md has the detectors' formulas and defaults):

- ``main.py``: the process (``startupmonkey analyser``) and :class:`Analyser` for tests;
- ``server.py``: grpc.aio ``MetricsIngest`` + ``grpc.health.v1``, chunk reassembly;
- ``engine.py``: snapshot -> history -> detectors -> lifecycle -> detections;
- ``history.py``: per-database history, deltas and rates, counter resets;
- ``findings.py``: Finding, Detector, NoData;
- ``detectors/``: the detectors, one module per group (missing_index and slow_statement are
  a separate issue: see ``detectors/__init__.py``);
- ``lifecycle.py``: keys -> occurrences (ids, re-publication, resolution, cooldown);
- ``publisher.py``: NATS (detections out, remediation events in);
- ``metrics.py``: Prometheus metrics.
"""
