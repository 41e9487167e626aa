"""The executor's Prometheus metrics, registered in the component's own registry
(``observability.Observability.registry``, served on ``/metrics``)."""

from __future__ import annotations

import prometheus_client

_PREFIX = "startupmonkey_executor_"


class Metrics:
    """Every counter and gauge the executor exports."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = ()
                    ) -> prometheus_client.Counter:
            return prometheus_client.Counter(_PREFIX + name, text, labels, registry=registry)

        self.detections = counter("detections_total", "Detections received, by outcome",
                                  ("outcome",))
        self.malformed = counter("malformed_messages_total", "Messages dropped as malformed",
                                 ("kind",))
        self.transitions = counter("remediations_total", "Remediation state changes",
                                   ("state",))
        self.approval_time_used = prometheus_client.Gauge(
            _PREFIX + "approval_time_used_ratio", "Of the Remediations waiting for approval, "
            "the largest share of its approval time already used (0 when none waits; 0.5: "
            "half of spec.approval.expiry has passed)", registry=registry)
