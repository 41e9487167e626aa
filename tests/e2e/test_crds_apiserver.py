"""Our CRDs on the real API server: printer columns, CEL rules, immutability, GC."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until

pytestmark = pytest.mark.e2e

MONITOR = """
apiVersion: startupmonkey.dev/v1alpha1
kind: DatabaseMonitor
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  database: {{host: db.example, dbname: shop, credentialsSecret: {{name: shop-db}}}}
  mode: approval
{extra}
"""


def _monitor(namespace: str, name: str = "shop", extra: str = "") -> str:
    return MONITOR.format(namespace=namespace, name=name, extra=extra)


def _dry_run(cp: ControlPlane, manifest: str) -> tuple[int, str]:
    proc = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    return proc.returncode, proc.stderr


def test_monitor_from_yaml_with_every_printer_column(control_plane: ControlPlane,
                                                      namespace: str) -> None:
    cp = control_plane
    cp.kubectl("apply", "-f", "-", input=_monitor(namespace))
    status = {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllAvailable",
                        "message": "", "lastTransitionTime": "2026-11-28T00:00:00Z"}],
        "remediations": {"active": 2, "succeeded": 5, "pendingApproval": 1,
                         "lastAction": "vacuum public.orders (Succeeded)"}}}
    cp.kubectl("patch", "dbm", "shop", "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps(status))
    table = cp.kubectl("get", "dbm", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header[:3] == ["NAME", "DATABASE", "MODE"]
    assert "LAST" in header and header[-1] == "AGE"
    row = table[1]
    for value in ("shop", "approval", "True", "2", "5", "1", "vacuum public.orders (Succeeded)"):
        assert value in row, (value, row)
    got = cp.kubectl_json("get", "dbm", "shop", "-n", namespace)
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
