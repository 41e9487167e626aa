"""The analyser: receives snapshots over gRPC, computes rates from deltas, runs the detectors
(pure functions) and publishes Detection v1 messages on NATS. It has no database connection.

Imports only ``startupmonkey`` (shared), never another component. Not built yet: see the
data-plane-1 and missing-index issues.
"""
