"""The operator: reconciles each DatabaseMonitor into a running data plane (kopf).

Owns the ConfigMap, Deployments, Services, RBAC and managed NATS of each monitor, the
operator-owned status keys (conditions, observedGeneration, phase), the deletion finalizer and
Remediation retention. Imports only ``startupmonkey`` (shared), never another component.

Where things are: ``main`` (entry point) -> ``handlers`` (kopf registration and settings) ->
``reconcile`` (the one level-based reconcile) -> ``children``/``nats``/``pods`` (manifests),
``render`` (the ComponentConfig and restart hashes), ``credentials`` (Secret checks),
``status`` (conditions, phase); ``deletion`` (finalizer drain), ``retention`` (Remediation
pruning), ``kube`` (API calls), ``config`` (operator settings), ``metrics`` (/metrics and
/readyz). See docs/operator.md.
"""
