"""The checked-in JSON Schemas of the bus messages: fresh, versioned, and saying what the
models accept (jsonschema is not a dependency: the keywords pydantic emits are checked by the
small validator below, which a test shows refusing what the models refuse)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from startupmonkey.models import messages
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.models.remediation import Target

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas" / "v1"
#: Every keyword the generated schemas use; a new one must be taught to ``violations``.
KNOWN = {"$schema", "$id", "$defs", "$ref", "title", "description", "type", "properties",
         "required", "additionalProperties", "const", "default", "enum", "anyOf", "items",
         "minLength", "maxLength", "pattern", "maxItems", "minimum", "format"}
TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "null": type(None),
                         "integer": int, "boolean": bool}


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


def violations(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None,
               at: str = "") -> list[str]:
    """What in ``value`` the (pydantic-emitted subset of) JSON Schema refuses."""
    root = root or schema
    if "$ref" in schema:
        return violations(root["$defs"][schema["$ref"].split("/")[-1]], value, root, at)
    if "anyOf" in schema:
        each = [violations(s, value, root, at) for s in schema["anyOf"]]
        return [] if any(not v for v in each) else [f"{at}: no anyOf branch fits"]
    kind = schema.get("type")
    if kind and not (isinstance(value, TYPES[kind]) and not (kind == "integer" and
                                                             isinstance(value, bool))):
        return [f"{at}: not {kind}"]
    found: list[str] = []
    if "const" in schema and value != schema["const"]:
        found.append(f"{at}: not {schema['const']}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in enum")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or \
                len(value) > schema.get("maxLength", len(value)):
            found.append(f"{at}: length {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{at}: does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                datetime.datetime.fromisoformat(value)
            except ValueError:
                found.append(f"{at}: not a date-time")
    if isinstance(value, int) and value < schema.get("minimum", value):
        found.append(f"{at}: below {schema['minimum']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            found.append(f"{at}: {len(value)} items")
        for i, item in enumerate(value):
            found += violations(schema.get("items", {}), item, root, f"{at}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        found += [f"{at}.{k}: required" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            found += [f"{at}.{k}: not allowed" for k in value if k not in props]
        for key, item in value.items():
            if key in props:
                found += violations(props[key], item, root, f"{at}.{key}")
    return found


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [n for item in node for n in _walk(item)]
    if not isinstance(node, dict):
        return []
    found = [node]
    for key, value in node.items():
        if key in ("properties", "$defs"):  # names -> schemas
            found += [n for v in value.values() for n in _walk(v)]
        elif key not in ("enum", "const", "default", "required"):
            found += _walk(value)
    return found


def detection() -> messages.Detection:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    key = messages.detection_key("prod", "shop", DetectorId.DEAD_TUPLES, "public.orders")
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace="prod", monitor="shop",
        database="shop", detector=DetectorId.DEAD_TUPLES, proposed_action=ActionId.VACUUM,
        risk_class=RiskClass.MAINTENANCE, target=Target(schema="public", table="orders"),
        summary="public.orders: 50,000 dead rows", evidence={"n_dead_tup": 50000},
        first_seen=now, last_seen=now, published_at=now)


def event() -> messages.RemediationEvent:
    d = detection()
    return messages.RemediationEvent(
        namespace="prod", monitor="shop", remediation="shop-0123456789", key=d.key,
        detection_id=d.id, detector=d.detector, action=d.proposed_action,
        state=RemediationState.PENDING_APPROVAL, time=d.published_at, message="waiting")


def test_committed_schemas_are_what_the_models_generate() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_schemas.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("name", "version"), [
    ("detection.json", messages.DETECTION_SCHEMA),
    ("remediation-event.json", messages.REMEDIATION_EVENT_SCHEMA)])
def test_each_schema_names_its_version_and_uses_known_keywords_only(name: str,
                                                                   version: str) -> None:
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schemas/v1/{name}")
    assert schema["properties"]["schema"]["const"] == version
    assert "schema" in schema["required"]
    assert schema["additionalProperties"] is False
    for node in _walk(schema):
        assert set(node) <= KNOWN, set(node) - KNOWN


@pytest.mark.parametrize(("name", "message"), [("detection.json", detection),
                                                ("remediation-event.json", event)])
def test_published_messages_fit_their_schema(name: str, message: Any) -> None:
    assert violations(load(name), json.loads(message().encode())) == []


@pytest.mark.parametrize(("name", "message", "change"), [
    ("detection.json", detection, {"detector": "no_such_detector"}),
    ("detection.json", detection, {"id": "short"}),
    ("detection.json", detection, {"extra": 1}),
    ("detection.json", detection, {"target": {"pid": 0}}),
    ("detection.json", detection, {"schema": "startupmonkey.dev/detection/v2"}),
    ("remediation-event.json", event, {"state": "pending"}),
    ("remediation-event.json", event, {"time": "yesterday"}),
    ("remediation-event.json", event, {"message": "x" * 4097})])
def test_schema_and_model_refuse_the_same_changes(name: str, message: Any,
                                                  change: dict[str, Any]) -> None:
    """The validator is not vacuous, and the schema is no looser than the model."""
    document = {**json.loads(message().encode()), **change}
    assert violations(load(name), document) != []
    parse = messages.parse_detection if name == "detection.json" else \
        messages.parse_remediation_event
    with pytest.raises(messages.MalformedMessage):
        parse(json.dumps(document).encode())


def test_a_message_without_schema_is_accepted_by_consumers_but_never_published() -> None:
    document = json.loads(event().encode())
    assert document["schema"] == messages.REMEDIATION_EVENT_SCHEMA
    del document["schema"]
    messages.parse_remediation_event(json.dumps(document).encode())
    assert violations(load("remediation-event.json"), document) == [".schema: required"]


def test_the_examples_in_docs_protocol_are_valid_messages() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    detection_text, event_text = re.findall(r"```json\n(.*?)```", text, re.S)
    for name, raw, parse in (("detection.json", detection_text, messages.parse_detection),
                             ("remediation-event.json", event_text,
                              messages.parse_remediation_event)):
        parse(raw.encode())
        assert violations(load(name), json.loads(raw)) == [], name
