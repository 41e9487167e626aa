"""The collector: one connection per monitored database, a snapshot of cumulative counters
every interval, streamed to the analyser over gRPC (``MetricsIngest.Stream``).

Imports only ``startupmonkey`` (shared), never another component. Not built yet: see the
data-plane-1 issue.
"""
