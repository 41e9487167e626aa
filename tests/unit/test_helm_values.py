"""values.yaml documents every key and values.schema.json declares exactly those keys.

A *chart key* is a key the schema names under ``properties`` (``image``, ``image.tag``,
``retention.count``, ...). Free-form objects the chart passes through unchanged (``resources``,
``podSecurityContext``, ``nodeSelector``, ...) are one key each: what is inside them is their
value, as in any Kubernetes manifest. Every chart key has a comment starting with ``# --``
(helm-docs' convention) right above it in values.yaml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "startupmonkey"
VALUES = (CHART / "values.yaml").read_text()
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(\s|$)")


def documented(text: str) -> dict[str, bool]:
    """Every block-mapping key of a YAML text by dotted path -> has a `# --` comment right
    above it (a contiguous comment block whose first line starts with `# --`)."""
    found: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = KEY.match(line) if stripped else None
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([k for _, k in stack] + [match["key"]])
            found[path] = bool(comments) and comments[0].startswith("# --")
            stack.append((indent, match["key"]))
        comments = []
    return found


def chart_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted paths the schema declares under ``properties``."""
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        keys.add(path)
        keys |= chart_keys(sub, f"{path}.")
    return keys


def test_the_parser_sees_a_missing_comment() -> None:
    found = documented("# -- a\na: 1\nb:\n  # -- c\n  c: 2\n  # plain\n  d: 3\n")
    assert found == {"a": True, "b": False, "b.c": True, "b.d": False}


def test_every_chart_key_is_in_values_yaml_with_a_doc_comment() -> None:
    found = documented(VALUES)
    keys = chart_keys(SCHEMA)
    missing = sorted(keys - set(found))
    assert not missing, f"declared in the schema but not in values.yaml: {missing}"
    undocumented = sorted(k for k in keys if not found[k])
    assert not undocumented, f"no `# --` comment above: {undocumented}"


def test_values_yaml_has_no_key_the_schema_does_not_declare() -> None:
    keys = chart_keys(SCHEMA)
    free_form = {k for k in keys if "properties" not in _node(k)}
    for path in documented(VALUES):
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        if parent and (parent in free_form or parent.split(".")[0] in free_form):
            continue  # inside a free-form value (resources.requests, ...)
        assert path in keys, f"{path} is in values.yaml but not in values.schema.json"


def test_tolerations_and_affinity_have_their_own_comment() -> None:
    lines = VALUES.splitlines()
    for key, words in (("nodeSelector", "node selector"), ("tolerations", "tolerations"),
                       ("affinity", "affinity")):
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[index - 1].startswith("# --"), key
        assert words in lines[index - 1].lower(), lines[index - 1]


def test_a_peer_is_a_network_policy_peer_and_nothing_else() -> None:
    """The same three keys the operator accepts in STARTUPMONKEY_NETWORK_POLICY_PEERS (helm
    itself refusing other keys is tested in tests/e2e/test_helm.py)."""
    from startupmonkey.operator import config

    peer = SCHEMA["properties"]["networkPolicyPeers"]["items"]
    assert peer["additionalProperties"] is False and peer["minProperties"] == 1
    assert set(peer["properties"]) == config._PEER_KEYS == {
        "podSelector", "namespaceSelector", "ipBlock"}
    assert yaml.safe_load(VALUES)["networkPolicyPeers"] == []


def _node(path: str) -> dict[str, Any]:
    node: dict[str, Any] = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
    return node
