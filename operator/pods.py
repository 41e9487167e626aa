"""Building blocks every pod of a data plane shares: security, probes, resources, volumes.

Pods run as a non-root user with a read-only root filesystem, no privilege escalation, every
capability dropped and the RuntimeDefault seccomp profile (the "restricted" Pod Security
Standard). Secrets arrive as files (mode 0400, readable by the pod's user through fsGroup),
never as environment variable values. Resource requests and limits are sized for one small
database each; they are constants here, documented in docs/operator.md.
"""

from __future__ import annotations

from typing import Any

from startupmonkey.operator import monitor

#: UID/GID of the processes, and the fsGroup that makes 0400 Secret files readable to them.
RUN_AS = 10001
SECRET_MODE = 0o400

#: requests / limits per component. Memory from `make bench` (bench/memory.py, docs/
#: performance.md): requests above each process's idle resident set (10 tables), limits at
#: least 1.3 x its peak under load (5,000 tables and 5,000 statements); bench/memory.py prints
#: any limit below that, and tests/unit/test_bench_harness.py checks the committed figures.
RESOURCES: dict[monitor.Component, dict[str, dict[str, str]]] = {
    monitor.Component.COLLECTOR: {"requests": {"cpu": "50m", "memory": "96Mi"},
                                  "limits": {"cpu": "500m", "memory": "320Mi"}},
    monitor.Component.ANALYSER: {"requests": {"cpu": "100m", "memory": "128Mi"},
                                 "limits": {"cpu": "1", "memory": "768Mi"}},
    monitor.Component.EXECUTOR: {"requests": {"cpu": "50m", "memory": "128Mi"},
                                 "limits": {"cpu": "500m", "memory": "256Mi"}},
    monitor.Component.NATS: {"requests": {"cpu": "50m", "memory": "64Mi"},
                             "limits": {"cpu": "500m", "memory": "256Mi"}},
}


def pod_security() -> dict[str, Any]:
    """The pod-level securityContext."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    """The container-level securityContext."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


#: How long a Python component may take from its container's start to its first answer on
#: /healthz: (period, failures) of its startupProbe, 5 minutes. The liveness probe (6 misses
#: 10 s apart) starts only after that first answer. Without it the liveness probe ran from the
#: container's start, and a start-up slower than about a minute was killed (exit 137 after the
#: grace period) and restarted, the next one as slow: the imports and the config load take
#: about 2 CPU-seconds when no bytecode is found (the image held none until it was compiled
#: in its build; a base without the standard library's still pays part of it), minutes of wall
#: time for a pod held to its 50m share of a loaded node: the likely cause of an extra
#: executor restart in a loaded CI run, reproduced with its CPU at 25m.
STARTUP_PERIOD, STARTUP_FAILURES = 5, 60


def http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    """An HTTP GET probe on a named container port."""
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def startup_probe(path: str, port: str) -> dict[str, Any]:
    """The startupProbe of a component whose start-up may be slow (:data:`STARTUP_PERIOD`)."""
    return http_probe(path, port, STARTUP_PERIOD, STARTUP_FAILURES)


def secret_volume(name: str, secret: str, items: dict[str, str]) -> dict[str, Any]:
    """A Secret volume exposing ``items`` (key -> file name) with mode 0400."""
    return {"name": name, "secret": {
        "secretName": secret, "defaultMode": SECRET_MODE,
        "items": [{"key": key, "path": path} for key, path in items.items()]}}


def tmp_volume() -> dict[str, Any]:
    """A small writable /tmp (the root filesystem is read-only)."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}


def deployment(view: monitor.View, component: monitor.Component, replicas: int,
               pod_spec: dict[str, Any], restart_hash: str,
               strategy: str = "RollingUpdate") -> dict[str, Any]:
    """A Deployment owned by the monitor, with the restart hash on its pod template."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": view.metadata(view.child_name(component), component),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "strategy": {"type": strategy},
            "selector": {"matchLabels": view.selector(component)},
            "template": {
                "metadata": {"labels": view.labels(component),
                             "annotations": {monitor.ANNOTATION_RESTART_HASH: restart_hash}},
                "spec": pod_spec,
            },
        },
    }
