"""The collector: one connection per monitored database, a snapshot of cumulative counters
every interval, streamed to the analyser over gRPC (``MetricsIngest.Stream``).

Imports only ``startupmonkey`` (shared), never another component. Entry point:
:mod:`startupmonkey.collector.main`; the round loop is :mod:`service`, the database side
:mod:`source` and :mod:`queries`, the stream :mod:`stream`. See ``docs/collector.md``.
"""
