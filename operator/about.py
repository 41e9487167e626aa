"""The operator: reconciles each DatabaseMonitor into a running data plane (kopf).

Owns the ConfigMap, Deployments, Services, RBAC and managed NATS of each monitor, the
operator-owned status keys (conditions, observedGeneration, phase), the deletion finalizer and
Remediation retention. Imports only ``startupmonkey`` (shared), never another component.
Not built yet: see the operator issue.
"""
