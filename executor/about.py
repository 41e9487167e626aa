"""The executor: takes detections from NATS (shared subscription), re-checks them against the
database, applies policy and limits, acts under timeouts and advisory locks, measures before
and after, and records every step on Remediation objects (or the JSONL audit log).

Imports only ``startupmonkey`` (shared), never another component. Not built yet: see the
executor-core and index-remediation issues.
"""
