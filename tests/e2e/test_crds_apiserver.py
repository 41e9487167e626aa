"""Our CRDs on the real API server: printer columns, CEL rules, immutability, GC."""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import yaml

from startupmonkey import crdgen
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models import remediation
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until

pytestmark = pytest.mark.e2e

MONITOR = """
apiVersion: startupmonkey.dev/v1alpha1
kind: DatabaseMonitor
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  database: {{host: db.example, dbname: {dbname}, credentialsSecret: {{name: shop-db}}}}
  mode: approval
{extra}
"""


def _monitor(namespace: str, name: str = "shop", extra: str = "") -> str:
    return MONITOR.format(namespace=namespace, name=name, dbname="shop", extra=extra)


def _dry_run(cp: ControlPlane, manifest: str) -> tuple[int, str]:
    proc = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    return proc.returncode, proc.stderr


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _server_table(cp: ControlPlane, path: str) -> dict[str, Any]:
    """What the API server answers ``kubectl get`` with: a meta.k8s.io Table."""
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.pki / "admin.crt"), str(cp.pki / "admin.key"))
    request = urllib.request.Request(cp.server + path, headers={"Accept": TABLE})
    with urllib.request.urlopen(request, timeout=10, context=ctx) as resp:
        table: dict[str, Any] = json.load(resp)
    return table


def _cells_by_header(text: str, headers: list[str]) -> list[dict[str, str]]:
    """Split ``kubectl get`` output into cells at the offsets where each header starts
    (kubectl left-aligns every column, and a cell such as LAST ACTION may hold spaces)."""
    lines = text.splitlines()
    starts, pos = [], 0
    for header in headers:
        pos = lines[0].index(header, pos)
        starts.append(pos)
        pos += len(header)
    assert lines[0].split() == " ".join(headers).split(), lines[0]
    bounds = [*starts[1:], None]
    return [{h: line[a:b].strip() for h, a, b in zip(headers, starts, bounds, strict=True)}
            for line in lines[1:]]


def test_monitor_from_yaml_with_every_printer_column(control_plane: ControlPlane,
                                                      namespace: str) -> None:
    cp = control_plane
    # every value distinct from the others, so a cell can only match its own column
    cp.kubectl("apply", "-f", "-", input=MONITOR.format(
        namespace=namespace, name="orders-mon", dbname="inventory", extra=""))
    status = {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllAvailable",
                        "message": "", "lastTransitionTime": "2026-11-28T00:00:00Z"}],
        "databasesReachable": "2/3",
        "remediations": {"active": 13, "succeeded": 27, "pendingApproval": 41,
                         "lastAction": "vacuum public.orders (Succeeded)"}}}
    cp.kubectl("patch", "dbm", "orders-mon", "-n", namespace, "--subresource=status",
               "--type=merge", "-p", json.dumps(status))
    # status.databasesReachable is the executor's (DatabaseMonitorStatus): until its field is
    # in the schema the API server prunes it and the Databases column is empty
    reachable = "databasesReachable" in _monitor_schema()["properties"]["status"]["properties"]
    expected: dict[str, object] = {
        "Name": "orders-mon", "Database": "inventory", "Databases": "2/3" if reachable else None,
        "Mode": "approval", "Ready": "True", "Active": 13, "Fixed": 27, "Pending": 41,
        "Last Action": "vacuum public.orders (Succeeded)"}
    columns = crdgen.MONITOR_COLUMNS
    shown = ["Name", *[c["name"] for c in columns if not c.get("priority")]]
    assert set(shown) == {*expected, "Age"}, "a column of the CRD is not checked here"

    # the server's Table, cell by column name
    table = _server_table(
        cp, f"/apis/startupmonkey.dev/v1alpha1/namespaces/{namespace}/databasemonitors")
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", *[c["name"] for c in columns]]
    [row] = table["rows"]
    cells = dict(zip(names, row["cells"], strict=True))
    for column, value in expected.items():
        assert cells[column] == value, (column, cells)
    assert re.fullmatch(r"\d+s", str(cells["Age"])), cells

    # and what a user sees with `kubectl get dbm`, cut at the header offsets
    headers = [h.upper() for h in shown]
    [printed] = _cells_by_header(cp.kubectl("get", "dbm", "-n", namespace).stdout, headers)
    for column, value in expected.items():
        assert printed[column.upper()] == ("" if value is None else str(value)), \
            (column, printed)
    assert re.fullmatch(r"\d+s", printed["AGE"]), printed
    empty = [column for column, cell in printed.items() if cell in ("<none>", "")]
    assert empty == ([] if reachable else ["DATABASES"]), printed
    got = cp.kubectl_json("get", "dbm", "orders-mon", "-n", namespace)
    assert got["spec"]["interval"] == "10s", "defaults applied by the API server"


@pytest.mark.parametrize(("name", "extra", "message"), [
    ("Shop_1", "", "metadata.name must be a DNS-1035 label"),
    ("a" * 41, "", "at most 40 characters"),
    ("shop", "  interval: 500ms", "interval must be at least 1s"),
    ("shop", "  maintenanceWindow: {start: '22:00', duration: 25h}",
     "maintenanceWindow.duration must be at most 24h"),
    ("shop", "  eventBus: {credentialsSecret: {name: nats}}",
     "eventBus.credentialsSecret is only for an external eventBus.url"),
    ("shop", "  mode: yolo", 'Unsupported value: "yolo"'),
    ("shop", "  thresholds: {dead_tuples: {minDeadRatio: 2}}", "should be less than or equal"),
])
def test_invalid_monitors_are_refused_with_readable_messages(
        control_plane: ControlPlane, namespace: str, name: str, extra: str,
        message: str) -> None:
    code, stderr = _dry_run(control_plane, _monitor(namespace, name, extra))
    assert code != 0
    assert message in stderr, stderr


def _monitor_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crdgen.database_monitor_crd()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    return schema


def _watching(namespace: str, **database: Any) -> dict[str, Any]:
    """A monitor of the home database ``shop`` with ``database`` added to spec.database."""
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": "whole", "namespace": namespace},
            "spec": {"database": {"host": "db.example", "dbname": "shop",
                                  "credentialsSecret": {"name": "shop-db"}, **database}}}


@pytest.mark.parametrize("database", [
    {"databases": ["billing", "Shop B", "crm-2024"]},
    {"databases": [f"db{i}" for i in range(31)]},
    {"databases": ["é" * 31]},
    {"allDatabases": True},
    {"allDatabases": True, "excludeDatabases": ["scratch", "template0"]},
])
def test_a_monitor_of_several_databases_is_accepted_as_the_model_accepts_it(
        control_plane: ControlPlane, namespace: str, database: dict[str, Any]) -> None:
    manifest = _watching(namespace, **database)
    monitor_models.DatabaseMonitor.model_validate(manifest)
    code, stderr = _dry_run(control_plane, yaml.safe_dump(manifest))
    assert code == 0, stderr


@pytest.mark.parametrize(("database", "message"), [
    ({"databases": ["billing"], "excludeDatabases": ["crm"]}, monitor_models.EXCLUDE_MESSAGE),
    ({"excludeDatabases": ["crm"]}, monitor_models.EXCLUDE_MESSAGE),
    ({"allDatabases": True, "databases": ["crm"]}, monitor_models.BOTH_MESSAGE),
    ({"databases": ["template0"]}, monitor_models.TEMPLATES_MESSAGE),
    ({"databases": ["billing", "template1"]}, monitor_models.TEMPLATES_MESSAGE),
    ({"databases": ["crm", "crm"]}, monitor_models.TWICE_MESSAGE),
    ({"databases": ["shop"]}, monitor_models.HOME_MESSAGE),
    ({"allDatabases": True, "excludeDatabases": ["shop"]}, "names the home database"),
    ({"databases": ["é" * 32]}, monitor_models.BYTES_MESSAGE),
    ({"databases": ["a\0b"]}, monitor_models.BYTES_MESSAGE),
])
def test_a_bad_database_list_is_refused_by_the_api_server_and_the_model_alike(
        control_plane: ControlPlane, namespace: str, database: dict[str, Any],
        message: str) -> None:
    manifest = _watching(namespace, **database)
    code, stderr = _dry_run(control_plane, json.dumps(manifest))
    assert code != 0
    assert message in stderr, stderr
    with pytest.raises(pydantic.ValidationError):
        monitor_models.DatabaseMonitor.model_validate(manifest)


def test_more_than_31_other_databases_are_refused_by_both(control_plane: ControlPlane,
                                                          namespace: str) -> None:
    manifest = _watching(namespace, databases=[f"db{i}" for i in range(32)])
    code, stderr = _dry_run(control_plane, yaml.safe_dump(manifest))
    assert code != 0
    assert "spec.database.databases: Too many: 32: must have at most 31 items" in stderr, stderr
    with pytest.raises(pydantic.ValidationError, match="32 names; at most 31"):
        monitor_models.DatabaseMonitor.model_validate(manifest)


def _remediation(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "shop-0123456789", "namespace": namespace},
        "spec": {"monitor": "shop", "detectionKey": "k", "detectionId": "d" * 32,
                 "detector": "dead_tuples", "action": "vacuum", "riskClass": "maintenance",
                 "target": {"schema": "public", "table": "orders"},
                 "sql": 'VACUUM (VERBOSE, ANALYZE) "public"."orders"', "sqlHash": "a" * 64},
    }


def test_remediation_spec_is_immutable_and_approval_only_goes_forward(
        control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(_remediation(namespace)))
    rem = ("rem", "shop-0123456789", "-n", namespace, "--type=merge", "-p")
    changed = cp.kubectl("patch", *rem, '{"spec":{"sql":"DROP TABLE orders"}}', check=False)
    assert changed.returncode != 0 and "spec.sql is immutable" in changed.stderr
    added = cp.kubectl("patch", *rem, '{"spec":{"rollbackSql":"SELECT 1"}}', check=False)
    assert added.returncode != 0 and "cannot be added or removed" in added.stderr
    cp.kubectl("patch", *rem, '{"spec":{"approved":true}}')
    back = cp.kubectl("patch", *rem, '{"spec":{"approved":false}}', check=False)
    assert back.returncode != 0
    assert "spec.approved may only change from false to true" in back.stderr
    got = cp.kubectl_json("get", "rem", "shop-0123456789", "-n", namespace)
    assert got["spec"]["approved"] is True
    assert got["spec"]["sql"].startswith("VACUUM")


FULL, MINIMAL = "shop-full000000", "shop-minimal000"

#: A valid new value for every immutable field of the full Remediation below.
CHANGED: dict[str, Any] = {
    "monitor": "other", "detectionKey": "k2", "detectionId": "e" * 32,
    "detector": "stale_statistics", "action": "analyze", "riskClass": "ddl",
    "target": {"schema": "public", "table": "items"}, "sql": 'ANALYZE "public"."items"',
    "rollbackSql": "SELECT 2", "sqlHash": "b" * 64, "evidence": {"deadRatio": "0.9"},
    "summary": "something else", "approvalExpiresAt": "2031-01-01T00:00:00Z",
    "database": "other_db",
}


def _full_spec() -> dict[str, Any]:
    """Every spec field present, so every field's own rule runs on an update."""
    return {**_remediation("x")["spec"], "rollbackSql": "SELECT 1",
            "evidence": {"deadRatio": "0.42"}, "summary": "orders has 42% dead tuples",
            "approvalExpiresAt": "2030-01-01T00:00:00Z", "database": "shop_b"}


def _rem_object(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


@pytest.fixture(scope="module")
def remediations(control_plane: ControlPlane) -> Iterator[str]:
    """One namespace for the module: FULL has every spec field set, MINIMAL only the required
    ones (and what the API server defaults). The tests below only dry-run against them."""
    namespace = control_plane.create_namespace("rem")
    minimal = {k: v for k, v in _full_spec().items()
               if k not in remediation.PRESENCE_FROZEN_FIELDS}
    control_plane.kubectl("apply", "-f", "-", input=_rem_object(namespace, FULL, _full_spec()))
    control_plane.kubectl("apply", "-f", "-", input=_rem_object(namespace, MINIMAL, minimal))
    try:
        yield namespace
    finally:
        control_plane.delete_namespace(namespace, wait=False)


def _patch(cp: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, str]:
    proc = cp.kubectl("patch", "rem", name, "-n", namespace, "--type=merge", "--dry-run=server",
                      "-p", json.dumps({"spec": spec}), check=False)
    return proc.returncode, proc.stderr


def test_every_immutable_field_has_a_changed_value_here() -> None:
    assert sorted(CHANGED) == sorted(remediation.IMMUTABLE_FIELDS)
    assert set(_full_spec()) == {*remediation.IMMUTABLE_FIELDS}, "FULL sets every field"


def test_the_changed_values_are_valid_and_approval_is_the_one_allowed_update(
        control_plane: ControlPlane, remediations: str) -> None:
    """Controls: a fresh object with every changed value is accepted, and so is the approval,
    so the refusals below come from the transition rules, not from a bad value or dry-run."""
    fresh = {**_full_spec(), **CHANGED}
    control_plane.kubectl("apply", "--dry-run=server", "-f", "-",
                          input=_rem_object(remediations, "shop-fresh00000", fresh))
    for name in (FULL, MINIMAL):
        assert _patch(control_plane, remediations, name, {"approved": True}) == (0, "")


@pytest.mark.parametrize("field", remediation.IMMUTABLE_FIELDS)
def test_each_immutable_field_refuses_a_change(control_plane: ControlPlane, remediations: str,
                                               field: str) -> None:
    code, stderr = _patch(control_plane, remediations, FULL, {field: CHANGED[field]})
    assert code != 0
    assert f"spec.{field}: Invalid value" in stderr and f"spec.{field} is immutable" in stderr, \
        stderr


@pytest.mark.parametrize("field", remediation.PRESENCE_FROZEN_FIELDS)
def test_an_optional_field_cannot_be_added_after_creation(
        control_plane: ControlPlane, remediations: str, field: str) -> None:
    code, stderr = _patch(control_plane, remediations, MINIMAL, {field: CHANGED[field]})
    assert code != 0
    assert f"spec.{field} cannot be added or removed" in stderr, stderr


@pytest.mark.parametrize("field", remediation.PRESENCE_FROZEN_FIELDS)
def test_an_optional_field_cannot_be_removed_after_creation(
        control_plane: ControlPlane, remediations: str, field: str) -> None:
    code, stderr = _patch(control_plane, remediations, FULL, {field: None})
    assert code != 0
    assert f"spec.{field} cannot be added or removed" in stderr, stderr


def test_a_child_of_a_monitor_is_garbage_collected(control_plane: ControlPlane,
                                                   namespace: str) -> None:
    cp = control_plane
    cp.kubectl("apply", "-f", "-", input=_monitor(namespace))
    uid = cp.kubectl_json("get", "dbm", "shop", "-n", namespace)["metadata"]["uid"]
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "shop-config", "namespace": namespace, "ownerReferences": [{
                 "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
                 "name": "shop", "uid": uid, "controller": True,
                 "blockOwnerDeletion": True}]},
             "data": {"config.yaml": "{}"}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(child))
    cp.kubectl("delete", "dbm", "shop", "-n", namespace, "--wait=false")
    wait_until(lambda: cp.kubectl("get", "cm", "shop-config", "-n", namespace,
                                  check=False).returncode != 0, timeout=60)
