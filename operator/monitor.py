"""A DatabaseMonitor as the operator sees it: parsed once at the edge, named consistently.

kopf hands over loose mappings; :func:`parse` turns a monitor body into a :class:`View` with the
typed spec (``startupmonkey.models.monitor``) and the few metadata and status fields the
reconciler needs. The names, labels and owner reference of every child are defined here, so
the builders, the status computation and the handlers agree on them.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pydantic

from startupmonkey.models import monitor as monitor_models
from startupmonkey.models import remediation

MANAGED_BY = "startupmonkey-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MONITOR = remediation.LABEL_MONITOR
#: Pod-template annotation: hash of the restart-worthy inputs of one component.
ANNOTATION_RESTART_HASH = "startupmonkey.dev/restart-hash"


class Component(enum.StrEnum):
    """The processes of one monitor's data plane."""

    COLLECTOR = "collector"
    ANALYSER = "analyser"
    EXECUTOR = "executor"
    NATS = "nats"


#: The StartupMonkey processes (NATS is a third-party server).
DATA_PLANE = (Component.COLLECTOR, Component.ANALYSER, Component.EXECUTOR)


@dataclasses.dataclass(frozen=True)
class View:
    """What the reconciler needs of one monitor; ``spec`` is None when it does not parse."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: monitor_models.DatabaseMonitorSpec | None
    spec_error: str | None
    status: dict[str, Any]
    deleting: bool
    body: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return self.namespace, self.name

    @property
    def observed_generation(self) -> int | None:
        """The generation the operator last applied (from status)."""
        value = self.status.get("observedGeneration")
        return value if isinstance(value, int) else None

    @property
    def managed_nats(self) -> bool:
        """True unless the spec names an external NATS."""
        return self.spec is None or not self.spec.event_bus.url

    def child_name(self, component: Component | str) -> str:
        """``<monitor>-<component>``: at most 40 + 1 + 9 characters."""
        return f"{self.name}-{component}"

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def nats_secret_name(self) -> str:
        return f"{self.name}-nats"

    @property
    def ingest_secret_name(self) -> str:
        """The generated Secret holding the token the collector shows the analyser."""
        return f"{self.name}-ingest"

    def labels(self, component: Component | str) -> dict[str, str]:
        """The labels of every child (and pod) of one component."""
        return {**self.selector(component), LABEL_PART_OF: "startupmonkey",
                LABEL_MANAGED_BY: MANAGED_BY, LABEL_MONITOR: self.name}

    def selector(self, component: Component | str) -> dict[str, str]:
        """The stable subset used in Deployment and Service selectors (immutable ones)."""
        return {LABEL_NAME: "startupmonkey", LABEL_INSTANCE: self.name,
                LABEL_COMPONENT: str(component)}

    def owner_reference(self) -> dict[str, Any]:
        """Makes a child garbage-collected with the monitor (and only one controller)."""
        return {"apiVersion": f"{monitor_models.GROUP}/{monitor_models.VERSION}",
                "kind": monitor_models.KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def metadata(self, name: str, component: Component | str) -> dict[str, Any]:
        """metadata of a child."""
        return {"name": name, "namespace": self.namespace, "labels": self.labels(component),
                "ownerReferences": [self.owner_reference()]}


def parse(body: dict[str, Any]) -> View:
    """Read a DatabaseMonitor body (as the API server returns it)."""
    meta = body.get("metadata", {})
    spec: monitor_models.DatabaseMonitorSpec | None = None
    error: str | None = None
    try:
        spec = monitor_models.DatabaseMonitorSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as exc:
        error = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                          for e in exc.errors())
    return View(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""),
                generation=int(meta.get("generation", 1)), spec=spec, spec_error=error,
                status=dict(body.get("status") or {}),
                deleting=bool(meta.get("deletionTimestamp")), body=body)


def owner_of(child: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, monitor) of a child we manage, from its controller reference."""
    meta = child.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == monitor_models.KIND and \
                str(ref.get("apiVersion", "")).startswith(f"{monitor_models.GROUP}/"):
            return meta.get("namespace", ""), ref["name"]
    return None
