"""The analyser's Prometheus metrics, registered in the component's own registry
(``observability.Observability.registry``, served on ``/metrics``)."""

from __future__ import annotations

import prometheus_client

_PREFIX = "startupmonkey_analyser_"


class Metrics:
    """Every counter and gauge the analyser exports."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = ()
                    ) -> prometheus_client.Counter:
            return prometheus_client.Counter(_PREFIX + name, text, labels, registry=registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()
                  ) -> prometheus_client.Gauge:
            return prometheus_client.Gauge(_PREFIX + name, text, labels, registry=registry)

        self.snapshots = counter("snapshots_total", "Snapshot sequences answered, by ack status",
                                 ("status",))
        self.refused = counter("refused_messages_total", "Ingest messages refused (oversized, "
                               "undecodable, wrong monitor, bad chunking), by reason",
                               ("reason",))
        self.streams = gauge("streams", "Open collector streams")
        self.stream_ends = counter("stream_ends_total", "Collector streams that ended, by how",
                                   ("how",))
        self.resets = counter("counter_resets_total", "New counter series started (identity "
                              "change, statistics reset), by scope", ("scope",))
        self.findings = counter("findings_total", "Findings by detector (every snapshot)",
                                ("detector",))
        self.not_judged = counter("detector_no_data_total", "Rounds a detector could not judge "
                                  "(missing data or history)", ("detector",))
        self.detector_errors = counter("detector_errors_total", "Detectors that raised",
                                       ("detector",))
        self.active = gauge("active_detections", "Active detection occurrences", ("detector",))
        self.published = counter("detections_published_total", "Detections published on NATS",
                                 ("detector", "kind"))
        self.publish_errors = counter("publish_errors_total", "Detections that could not be "
                                      "published (retried on the next snapshot)")
        self.resolved = counter("detections_resolved_total", "Occurrences resolved",
                                ("detector",))
        self.suppressed = counter("detections_suppressed_total", "Findings kept quiet by a "
                                  "cooldown", ("detector",))
        self.events = counter("remediation_events_total", "Remediation events received, by "
                              "state", ("state",))
        self.malformed = counter("malformed_messages_total", "Malformed NATS messages dropped, "
                                 "by kind", ("kind",))
        self.statement_texts = gauge("statement_texts", "Statement texts held over all streams")
        self.statements_skipped = counter(
            "statements_skipped_total", "Statement texts missing_index could not analyse "
            "(counted once per text), by reason", ("reason",))
        self.statement_reads_unreadable = counter(
            "statement_reads_unreadable_total", "Changed-only statement reads the analyser "
            "could not read (their statements ignored, the full set asked for), by reason: "
            "no_base, truncated, run_too_long", ("reason",))
