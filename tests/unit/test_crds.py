"""The generated CRDs: fresh, structural, and within the API server's CEL cost rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import crdgen
from startupmonkey.models import remediation

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"$ref", "$defs", "anyOf", "title", "propertyNames", "const"}


def test_committed_crds_are_what_the_models_generate() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_crds.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_helm_chart_ships_identical_crds() -> None:
    chart = ROOT / "helm" / "startupmonkey" / "crds"
    if not chart.parent.exists():
        pytest.skip("the Helm chart does not exist yet (Helm issue)")
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        assert (chart / path.name).read_bytes() == path.read_bytes(), path.name


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_schema_is_structural(name: str) -> None:
    schema = crdgen.all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith(".properties"):
            continue  # keys here are field names, not keywords
        assert not FORBIDDEN & set(node), f"{path}: {FORBIDDEN & set(node)}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
            assert node.get("type") == "object", path


def _strings_and_lists_bounded(node: dict[str, Any], path: str) -> None:
    kind = node.get("type")
    if kind == "string" and "enum" not in node and node.get("format") != "date-time":
        assert "maxLength" in node, f"{path}: CEL needs maxLength"
    if kind == "array":
        assert "maxItems" in node, f"{path}: CEL needs maxItems"
    if kind == "object" and "additionalProperties" in node:
        assert "maxProperties" in node, f"{path}: CEL needs maxProperties"


def test_everything_a_cel_rule_reads_is_bounded() -> None:
    for crd in crdgen.all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema["properties"]["spec"]):
            if "x-kubernetes-validations" not in node:
                continue
            for sub_path, sub in _walk(node, path):
                if not sub_path.endswith(".properties") and "type" in sub:
                    _strings_and_lists_bounded(sub, sub_path)


def test_remediation_spec_is_immutable_except_approved() -> None:
    crd = crdgen.remediation_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name, field in spec["properties"].items():
        rules = [r["rule"] for r in field.get("x-kubernetes-validations", [])]
        if name == "approved":
            assert rules == ["self == true || oldSelf == false"]
        else:
            assert "self == oldSelf" in rules, name


def _remediation_spec() -> dict[str, Any]:
    crd = crdgen.remediation_crd()
    spec: dict[str, Any] = (
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    return spec


def test_every_optional_spec_field_without_a_default_cannot_be_added_or_removed() -> None:
    """A field's own ``self == oldSelf`` runs only when the field is in the old and the new
    object; an optional field the API server does not default could otherwise appear or vanish
    after creation. The spec-level ``has()`` rule is what refuses that."""
    spec = _remediation_spec()
    required = set(spec["required"])
    spec_rules = {r["rule"]: r["message"] for r in spec.get("x-kubernetes-validations", [])}
    unguarded = [name for name, field in spec["properties"].items()
                 if name not in required and "default" not in field]
    assert unguarded, "the check below would prove nothing"
    for name in unguarded:
        rule = f"has(self.{name}) == has(oldSelf.{name})"
        assert spec_rules.get(rule) == f"spec.{name} cannot be added or removed", name
    # and the list the e2e test walks is exactly those fields
    assert sorted(remediation.PRESENCE_FROZEN_FIELDS) == sorted(unguarded)


def test_immutable_fields_list_every_spec_field_but_approved() -> None:
    assert sorted(remediation.IMMUTABLE_FIELDS) == sorted(
        set(_remediation_spec()["properties"]) - {"approved"})


def test_printer_columns_of_the_design() -> None:
    columns = crdgen.database_monitor_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Database", "Databases", "Mode", "Ready", "Active", "Fixed", "Pending", "Last Action",
        "Age"]
    names = crdgen.database_monitor_crd()["spec"]["names"]
    assert names["shortNames"] == ["dbm"] and names["categories"] == ["startupmonkey"]


def test_committed_files_parse_as_yaml() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition"
