"""Turns the pydantic models into CustomResourceDefinitions (``hack/gen_crds.py`` writes them).

A CRD schema is a restricted OpenAPI v3 "structural" schema. pydantic emits JSON Schema 2020-12,
so this module rewrites what the API server refuses: ``$defs``/``$ref`` are inlined, ``anyOf``
with a null branch becomes ``nullable``, a numeric ``exclusiveMinimum`` becomes ``minimum`` plus
``exclusiveMinimum: true``, ``const`` becomes a one-value ``enum``, and ``title`` and
``propertyNames`` are dropped. CEL rules come from ``x-kubernetes-validations`` entries the
models carry in ``json_schema_extra``.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic

from startupmonkey.models import monitor, remediation

Schema = dict[str, Any]
_DROP = {"title", "propertyNames", "$defs"}


def _deref(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" not in node:
        return node
    target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
    extra = {k: v for k, v in node.items() if k != "$ref"}
    rules = target.pop("x-kubernetes-validations", []) + extra.pop("x-kubernetes-validations", [])
    target.update(extra)
    if rules:
        target["x-kubernetes-validations"] = rules
    return target


def _collapse_nullable(node: Schema, defs: dict[str, Schema]) -> Schema:
    branches = node.get("anyOf")
    if not branches:
        return node
    non_null = [b for b in branches if b.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"cannot express anyOf with {len(non_null)} non-null branches in a CRD")
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    inner = _deref(non_null[0], defs)
    merged = {**inner, **merged}
    if len(non_null) < len(branches):
        if merged.get("default", 0) is None:
            del merged["default"]
        merged["nullable"] = True
    return merged


def structural(node: Any, defs: dict[str, Schema]) -> Any:
    """Rewrite one pydantic JSON-schema node (recursively) into CRD-acceptable OpenAPI."""
    if isinstance(node, list):
        return [structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = _collapse_nullable(_deref(node, defs), defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue  # unknown fields are pruned (and refused by strict field validation)
        if key == "description":
            value = " ".join(value.replace("``", "`").split())
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key in ("properties",):
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "oneOf"):
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type[pydantic.BaseModel]) -> Schema:
    """The structural schema of one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: Schema = structural(raw, defs)
    return result


def _conditions_as_map(status: Schema) -> None:
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16


def _crd(kind: str, plural: str, short: str, schema: Schema,
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{monitor.GROUP}"},
        "spec": {
            "group": monitor.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind, "listKind": f"{kind}List", "plural": plural,
                "singular": kind.lower(), "shortNames": [short], "categories": ["startupmonkey"],
            },
            "versions": [{
                "name": monitor.VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def _root(spec: Schema, status: Schema, description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _column(name: str, path: str, typ: str = "string", priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": typ, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


MONITOR_COLUMNS = [
    _column("Database", ".spec.database.dbname"),
    # "reachable/watched", the home database included (the executor writes it; absent when it
    # acts in its home database only)
    _column("Databases", ".status.databasesReachable"),
    _column("Mode", ".spec.mode"),
    _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
    _column("Active", ".status.remediations.active", "integer"),
    _column("Fixed", ".status.remediations.succeeded", "integer"),
    _column("Pending", ".status.remediations.pendingApproval", "integer"),
    _column("Last Action", ".status.remediations.lastAction"),
    _column("Age", ".metadata.creationTimestamp", "date"),
]

REMEDIATION_COLUMNS = [
    _column("Monitor", ".spec.monitor"),
    _column("Detector", ".spec.detector"),
    _column("Action", ".spec.action"),
    _column("Table", ".spec.target.table"),
    # Empty for the home database (the executor's login database), as spec.database is.
    _column("Database", ".spec.database"),
    _column("State", ".status.state"),
    _column("Approved", ".spec.approved", "boolean"),
    _column("Message", ".status.message", priority=1),
    _column("Result", ".status.summary", priority=1),
    _column("Benefit", ".status.benefit", priority=1),
    _column("Age", ".metadata.creationTimestamp", "date"),
]


def database_monitor_crd() -> dict[str, Any]:
    """The DatabaseMonitor CRD."""
    status = model_schema(monitor.DatabaseMonitorStatus)
    _conditions_as_map(status)
    root = _root(model_schema(monitor.DatabaseMonitorSpec), status,
                 "Watches one PostgreSQL database and fixes what it finds, within policy.")
    root["x-kubernetes-validations"] = [monitor.NAME_RULE]
    return _crd(monitor.KIND, monitor.PLURAL, monitor.SHORT_NAME, root, MONITOR_COLUMNS)


def remediation_crd() -> dict[str, Any]:
    """The Remediation CRD."""
    root = _root(model_schema(remediation.RemediationSpec),
                 model_schema(remediation.RemediationStatus),
                 "One detection occurrence handled by the executor: the plan and what happened.")
    return _crd(remediation.KIND, remediation.PLURAL, remediation.SHORT_NAME, root,
                REMEDIATION_COLUMNS)


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, as written to ``crds/``."""
    return {
        f"{monitor.GROUP}_{monitor.PLURAL}.yaml": database_monitor_crd(),
        f"{monitor.GROUP}_{remediation.PLURAL}.yaml": remediation_crd(),
    }
