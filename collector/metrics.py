"""Prometheus metrics of the collector, registered on the component's own registry.

Names start with ``startupmonkey_collector_``; the observability endpoint serves them on
``/metrics`` (:mod:`startupmonkey.observability`). What an operator watches: how long a round
takes and which query costs what, whether snapshots reach the analyser (sent, acked by status,
dropped from the buffer) and how often the database or the analyser had to be reconnected.
"""

from __future__ import annotations

import prometheus_client

_QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric the collector exports."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        prefix = "startupmonkey_collector"
        self.cycle_seconds = prometheus_client.Histogram(
            f"{prefix}_cycle_duration_seconds", "Wall time of one collection round",
            buckets=_CYCLE_BUCKETS, registry=registry)
        self.query_seconds = prometheus_client.Histogram(
            f"{prefix}_query_duration_seconds",
            "Wall time of each monitoring query (round trip included), by query name",
            ["query"], buckets=_QUERY_BUCKETS, registry=registry)
        self.query_failures = prometheus_client.Counter(
            f"{prefix}_query_failures_total", "Monitoring queries that did not complete, by "
            "query name and outcome (error, timeout, unavailable)", ["query", "state"],
            registry=registry)
        self.snapshots_collected = prometheus_client.Counter(
            f"{prefix}_snapshots_collected_total", "Snapshots taken (including ones that only "
            "say the database was unreachable)", registry=registry)
        self.snapshots_sent = prometheus_client.Counter(
            f"{prefix}_snapshots_sent_total", "Snapshots written to the analyser stream "
            "(a re-send counts again)", registry=registry)
        self.chunks_sent = prometheus_client.Counter(
            f"{prefix}_chunks_sent_total", "Snapshot chunks written to the stream",
            registry=registry)
        self.bytes_sent = prometheus_client.Counter(
            f"{prefix}_sent_bytes_total", "Serialized snapshot bytes written to the stream",
            registry=registry)
        self.acks = prometheus_client.Counter(
            f"{prefix}_acks_total", "Acks received from the analyser, by status", ["status"],
            registry=registry)
        self.snapshots_dropped = prometheus_client.Counter(
            f"{prefix}_snapshots_dropped_total", "Snapshots discarded without an ack, by reason "
            "(buffer_full: the oldest made room; superseded: a RETRY with a newer snapshot "
            "queued; rejected: the analyser refused it)", ["reason"], registry=registry)
        self.buffered = prometheus_client.Gauge(
            f"{prefix}_buffered_snapshots", "Snapshots waiting for an ack", registry=registry)
        self.reconnects = prometheus_client.Counter(
            f"{prefix}_reconnects_total", "Connection attempts after a failure or loss, by "
            "target (database, analyser)", ["target"], registry=registry)
        self.statement_texts_sent = prometheus_client.Counter(
            f"{prefix}_statement_texts_sent_total", "Statement texts sent to the analyser",
            registry=registry)
        self.catalogs_sent = prometheus_client.Counter(
            f"{prefix}_catalogs_sent_total", "Full catalogs sent to the analyser",
            registry=registry)
        self.databases = prometheus_client.Gauge(
            f"{prefix}_databases", "Databases of the server by state: watched (the home one "
            "included), left_out (found with databases: all beyond the collector's limit, or "
            "listed but a template)",
            ["state"], registry=registry)
        self.database_reachable = prometheus_client.Gauge(
            f"{prefix}_database_reachable", "1 when the last round reached this watched "
            "database, 0 when its snapshot said it was unreachable", ["database"],
            registry=registry)
