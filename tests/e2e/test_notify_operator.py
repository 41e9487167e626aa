"""Notifications from the operator on the real API server (issue 20, item 1): the API server
refuses a malformed spec.notifications with readable words; the operator sends a
PendingApproval to two real receivers on 127.0.0.1 (one answering 500 then 200, one checking
the HMAC signature of a Slack body), records each 2xx on the Remediation, and after a real
restart neither repeats a recorded delivery nor loses the one that became due while it was
down; NotificationsDelivered says so on the monitor."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from startupmonkey import notify
from tests.e2e.test_approver_policy import policy  # noqa: F401 (the chart's policy, bound here)
from tests.support import operator_helpers as ops
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until
from tests.support.receivers import Receiver

pytestmark = pytest.mark.e2e

FAST = {"STARTUPMONKEY_NOTIFICATIONS_TIMEOUT": "3",
        "STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS": "5",
        "STARTUPMONKEY_NOTIFICATIONS_FIRST_DELAY": "0.2"}
KEY = "k" * 32


def _dry_run(cp: ControlPlane, namespace: str, notifications: Any) -> tuple[int, str]:
    manifest = ops.monitor_manifest(namespace, notifications=notifications)
    proc = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("notifications", "words"), [
    ([{"name": "a", "secretRef": {"name": "h"}}, {"name": "a", "secretRef": {"name": "h"}}],
     "notifications: target names must be unique"),
    ([{"name": "a", "secretRef": {"name": "h"}, "states": ["Succeeded"],
       "succeededFor": ["ddl"]}], "not both"),
    ([{"name": "a", "secretRef": {"name": "h"}, "format": "discord"}],
     'Unsupported value: "discord"'),
    ([{"name": "a", "secretRef": {"name": "h"}, "states": ["Failed", "Failed"]}],
     "Duplicate value"),
    ([{"name": "a", "secretRef": {"name": "h", "hmacKey": "not a key"}}], "should match"),
])
def test_the_api_server_refuses_malformed_notifications(
        control_plane: ControlPlane, namespace: str, notifications: Any, words: str) -> None:
    code, stderr = _dry_run(control_plane, namespace, notifications)
    assert code != 0
    assert words in stderr, stderr


def test_a_valid_target_is_accepted_with_its_defaults(control_plane: ControlPlane,
                                                      namespace: str) -> None:
    code, stderr = _dry_run(control_plane, namespace,
                            [{"name": "ops", "secretRef": {"name": "hook"}}])
    assert code == 0, stderr


def _secret(cp: ControlPlane, namespace: str, name: str, **data: str) -> None:
    args = [f"--from-literal={k}={v}" for k, v in data.items()]
    cp.kubectl("create", "secret", "generic", name, "-n", namespace, *args)


def _remediation(cp: ControlPlane, namespace: str, name: str, state: str, risk: str) -> None:
    body = ops.remediation(namespace, name)
    body["spec"]["riskClass"] = risk
    cp.kubectl("create", "-f", "-", input=json.dumps(body))
    status = {"status": {"state": state, "message": "waiting for a person",
                         "history": [{"state": "Proposed", "time": "2026-12-06T16:00:00Z"},
                                     {"state": state, "time": "2026-12-06T16:00:01Z"}]}}
    cp.kubectl("patch", "rem", name, "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps(status))


def _notified(cp: ControlPlane, namespace: str, name: str) -> set[str]:
    meta = ops.get(cp, namespace, "rem", name)["metadata"]
    return notify.parse_notified((meta.get("annotations") or {}).get(
        notify.ANNOTATION_NOTIFIED))


def _condition(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    conditions = ops.get(cp, namespace, "dbm", "shop").get("status", {}).get("conditions", [])
    found = {c["type"]: c for c in conditions}
    assert "NotificationsDelivered" in found, conditions
    return found["NotificationsDelivered"]


def test_delivered_once_per_state_through_a_restart_of_the_operator(
        control_plane: ControlPlane, namespace: str, policy: str,  # noqa: F811
        start_operator: Callable[..., ops.Operator]) -> None:
    """With the chart's approver policy on: the operator's annotation patch is none of its
    business, so the record is accepted."""
    cp = control_plane
    with Receiver([500, 200]) as flaky, Receiver([200], key=KEY.encode()) as signed:
        ops.create_secret(cp, namespace)
        _secret(cp, namespace, "hook-flaky", url=flaky.url)
        _secret(cp, namespace, "hook-signed", endpoint=signed.url, hmac=KEY)
        operator = start_operator(**FAST)
        cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace, notifications=[
            {"name": "flaky", "secretRef": {"name": "hook-flaky"}},
            {"name": "signed", "format": "slack",
             "secretRef": {"name": "hook-signed", "urlKey": "endpoint", "hmacKey": "hmac"}}]))
        _remediation(cp, namespace, "shop-aaaaaaaaaa", "PendingApproval", "ddl")
        pending = f"{namespace}/shop-aaaaaaaaaa/PendingApproval"

        wait_until(lambda: _notified(cp, namespace, "shop-aaaaaaaaaa") == {
            "PendingApproval@flaky", "PendingApproval@signed"}, timeout=30)
        assert flaky.deliveries() == [pending, pending]  # the 500, then the 200
        [request] = signed.requests
        assert request.signature_ok is True
        slack = json.loads(request.body)
        text = json.dumps(slack)
        assert "startupmonkey approve shop-aaaaaaaaaa --kube" in text
        assert f"kubectl patch rem shop-aaaaaaaaaa -n {namespace}" in text
        assert flaky.url not in text and KEY not in text
        wait_until(lambda: _condition(cp, namespace)["status"] == "True", timeout=30)

        # A real restart; meanwhile one Remediation fails (due) and a maintenance one
        # succeeds (not wanted by default).
        assert operator.stop() == 0
        _remediation(cp, namespace, "shop-bbbbbbbbbb", "Failed", "maintenance")
        _remediation(cp, namespace, "shop-cccccccccc", "Succeeded", "maintenance")
        start_operator(**FAST)

        wait_until(lambda: _notified(cp, namespace, "shop-bbbbbbbbbb") == {
            "Failed@flaky", "Failed@signed"}, timeout=30)
        failed = f"{namespace}/shop-bbbbbbbbbb/Failed"
        # One more, made after the restarted operator's listing was handled: a recorded
        # delivery resent from that listing would have reached the receivers before it.
        _remediation(cp, namespace, "shop-dddddddddd", "RolledBack", "ddl")
        wait_until(lambda: _notified(cp, namespace, "shop-dddddddddd") == {
            "RolledBack@flaky", "RolledBack@signed"}, timeout=30)
        later = f"{namespace}/shop-dddddddddd/RolledBack"
        assert flaky.deliveries() == [pending, pending, failed, later]
        assert signed.deliveries() == [pending, failed, later]
        assert all(r.signature_ok for r in signed.requests)
        assert _notified(cp, namespace, "shop-cccccccccc") == set()
        rem = ops.get(cp, namespace, "rem", "shop-aaaaaaaaaa")
        assert rem["status"]["state"] == "PendingApproval"  # the executor's status untouched


def test_a_hanging_target_shows_on_the_monitor_and_the_other_is_served(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., ops.Operator]) -> None:
    cp = control_plane
    with Receiver(hang=True) as dead, Receiver([200]) as alive:
        dead_url = dead.url
        ops.create_secret(cp, namespace)
        _secret(cp, namespace, "hook-dead", url=dead_url)
        _secret(cp, namespace, "hook-alive", url=alive.url)
        operator = start_operator(**{**FAST, "STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS": "2"})
        cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace, notifications=[
            {"name": "dead", "secretRef": {"name": "hook-dead"}},
            {"name": "alive", "format": "teams", "secretRef": {"name": "hook-alive"}},
            {"name": "nosecret", "secretRef": {"name": "hook-missing"}}]))
        _remediation(cp, namespace, "shop-eeeeeeeeee", "Failed", "session")

        wait_until(lambda: _notified(cp, namespace, "shop-eeeeeeeeee") == {"Failed@alive"},
                   timeout=30)
        assert json.loads(alive.bodies()[0])["@type"] == "MessageCard"

        def says_both() -> dict[str, Any]:
            cond = _condition(cp, namespace)
            assert cond["status"] == "False", cond
            assert "dead: gave up" in cond["message"], cond
            assert "no answer within 3s" in cond["message"], cond
            assert 'nosecret: gave up' in cond["message"], cond
            assert 'Secret "hook-missing"' in cond["message"], cond
            return cond

        cond = wait_until(says_both, timeout=30)
        assert cond["reason"] == notify.REASON_TIMEOUT
        assert dead_url not in cond["message"]

        port = operator.observability_port
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        where = f'monitor="shop",namespace="{namespace}"'
        for line in (f'startupmonkey_operator_notifications_total{{{where},outcome="failed",'
                     'target="dead"} 1.0',
                     f'startupmonkey_operator_notifications_total{{{where},'
                     'outcome="delivered",target="alive"} 1.0',
                     f'startupmonkey_operator_notification_failing{{{where},target="dead"}}'
                     ' 1.0',
                     f'startupmonkey_operator_notification_failing{{{where},target="alive"}}'
                     ' 0.0'):
            assert line in metrics, metrics
