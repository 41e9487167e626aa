"""Typed models: the single source of truth for the CRDs, the NATS messages and the config.

``startupmonkey.models.monitor`` and ``startupmonkey.models.remediation`` define the two
Kubernetes kinds; ``startupmonkey.models.messages`` the Detection and Remediation-event v1 JSON
on NATS; ``startupmonkey.models.enums`` the frozen names
(docs/design.md#frozen-names).
"""
