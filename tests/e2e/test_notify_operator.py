"""Notifications from the operator on the real API server (issue 20, item 1): the API server
refuses a malformed spec.notifications with readable words; the operator sends a
PendingApproval to two real receivers on 127.0.0.1 (one answering 500 then 200, one checking
the HMAC signature of a Slack body), records each 2xx on the Remediation, and after a real
restart neither repeats a recorded delivery nor loses the one that became due while it was
down; NotificationsDelivered says so on the monitor. Only news is sent: enabling
notifications or renaming a target does not replay the retained Remediations (issue 21), and a
removed target's or deleted monitor's metric series go with it."""

from __future__ import annotations

import datetime
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from startupmonkey import kubetime, notify
from tests.e2e.test_approver_policy import policy  # noqa: F401 (the chart's policy, bound here)
from tests.support import operator_helpers as ops
from tests.support.controlplane import ControlPlane
from tests.support.eventually import wait_until
from tests.support.receivers import Receiver

pytestmark = pytest.mark.e2e

FAST = {"STARTUPMONKEY_NOTIFICATIONS_TIMEOUT": "3s",
        "STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS": "5",
        "STARTUPMONKEY_NOTIFICATIONS_FIRST_DELAY": "200ms"}
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


def _remediation(cp: ControlPlane, namespace: str, name: str, state: str, risk: str,
                 at: datetime.datetime | None = None) -> None:
    """A Remediation that reached ``state`` at ``at`` (default: now), as the executor writes
    its history."""
    body = ops.remediation(namespace, name)
    body["spec"]["riskClass"] = risk
    cp.kubectl("create", "-f", "-", input=json.dumps(body))
    when = kubetime.format(at or kubetime.utcnow())
    status = {"status": {"state": state, "message": "waiting for a person",
                         "history": [{"state": "Proposed", "time": when},
                                     {"state": state, "time": when}]}}
    cp.kubectl("patch", "rem", name, "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps(status))


def _notify_from(cp: ControlPlane, namespace: str) -> dict[str, datetime.datetime]:
    meta = ops.get(cp, namespace, "dbm", "shop")["metadata"]
    return notify.parse_since((meta.get("annotations") or {}).get(
        notify.ANNOTATION_NOTIFY_FROM))


def _seen(cp: ControlPlane, namespace: str, *names: str) -> dict[str, datetime.datetime]:
    """Wait until the operator has recorded when each named target starts (it has seen the
    spec that names them)."""
    def recorded() -> dict[str, datetime.datetime]:
        since = _notify_from(cp, namespace)
        assert set(since) == set(names), since
        return since
    found: dict[str, datetime.datetime] = wait_until(recorded, timeout=30)
    return found


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
        _seen(cp, namespace, "flaky", "signed")
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
        _seen(cp, namespace, "dead", "alive", "nosecret")
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


def _touch(cp: ControlPlane, namespace: str, name: str) -> None:
    """A change of the Remediation (a label): an event the operator judges it on again."""
    cp.kubectl("label", "rem", name, "-n", namespace, "touched=yes", "--overwrite")


def test_enabling_or_renaming_a_target_sends_no_old_news(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., ops.Operator]) -> None:
    """Remediations finished before a target existed are never sent to it (not on enabling,
    not when they change again, not after a restart, not to a renamed target); one that
    happens afterwards is sent once."""
    cp = control_plane
    weeks_ago = kubetime.utcnow() - datetime.timedelta(days=14)
    hour_ago = kubetime.utcnow() - datetime.timedelta(hours=1)
    with Receiver([200]) as receiver:
        ops.create_secret(cp, namespace)
        _secret(cp, namespace, "hook", url=receiver.url)
        operator = start_operator(**FAST)
        cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace))
        _remediation(cp, namespace, "shop-0000000001", "Failed", "ddl", weeks_ago)
        _remediation(cp, namespace, "shop-0000000002", "Succeeded", "ddl", weeks_ago)
        _remediation(cp, namespace, "shop-0000000003", "RolledBack", "destructive", hour_ago)
        old = ["shop-0000000001", "shop-0000000002", "shop-0000000003"]

        cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace, notifications=[
            {"name": "ops", "secretRef": {"name": "hook"}}]))
        since = _seen(cp, namespace, "ops")["ops"]
        assert since > hour_ago
        for name in old:
            _touch(cp, namespace, name)
        _remediation(cp, namespace, "shop-0000000004", "Failed", "ddl")
        wait_until(lambda: _notified(cp, namespace, "shop-0000000004") == {"Failed@ops"},
                   timeout=30)
        new = f"{namespace}/shop-0000000004/Failed"
        assert receiver.deliveries() == [new]

        # A restart lists every Remediation again: the recorded since holds.
        assert operator.stop() == 0
        operator = start_operator(**FAST)
        _remediation(cp, namespace, "shop-0000000005", "Failed", "ddl")
        wait_until(lambda: _notified(cp, namespace, "shop-0000000005") == {"Failed@ops"},
                   timeout=30)
        assert _notify_from(cp, namespace) == {"ops": since}
        newer = f"{namespace}/shop-0000000005/Failed"
        assert receiver.deliveries() == [new, newer]
        # (times are at the second: the rename must come in a later second than the last
        # Failed, or that Failed would be news to the renamed target)
        last = ops.get(cp, namespace, "rem", "shop-0000000005")["status"]["history"][-1]
        wait_until(lambda: kubetime.utcnow() > kubetime.parse(last["time"]), timeout=5)

        # Renamed: a new target, which hears only what happens from now on.
        cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace, notifications=[
            {"name": "oncall", "secretRef": {"name": "hook"}}]))
        renamed = _seen(cp, namespace, "oncall")["oncall"]
        assert renamed >= since
        for name in [*old, "shop-0000000004", "shop-0000000005"]:
            _touch(cp, namespace, name)
        _remediation(cp, namespace, "shop-0000000006", "Failed", "ddl")
        wait_until(lambda: _notified(cp, namespace, "shop-0000000006") == {"Failed@oncall"},
                   timeout=30)
        assert receiver.deliveries() == [new, newer, f"{namespace}/shop-0000000006/Failed"]
        for name in old:
            assert _notified(cp, namespace, name) == set(), name
        assert _notified(cp, namespace, "shop-0000000004") == {"Failed@ops"}


def _metrics(operator: ops.Operator) -> str:
    port = operator.observability_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def test_the_failing_gauge_goes_with_a_removed_target_and_a_deleted_monitor(
        control_plane: ControlPlane, namespace: str,
        start_operator: Callable[..., ops.Operator]) -> None:
    cp = control_plane
    where = f'monitor="shop",namespace="{namespace}"'
    gauge = "startupmonkey_operator_notification_failing"
    ops.create_secret(cp, namespace)
    operator = start_operator(**{**FAST, "STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS": "1"})
    targets = [{"name": "gone", "secretRef": {"name": "hook-missing"}},
               {"name": "stays", "secretRef": {"name": "hook-missing"}}]
    cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace,
                                                              notifications=targets))
    _seen(cp, namespace, "gone", "stays")
    _remediation(cp, namespace, "shop-ffffffffff", "Failed", "ddl")

    def failing(*names: str) -> bool:
        text = _metrics(operator)
        for name in ("gone", "stays"):
            line = f'{gauge}{{{where},target="{name}"}} 1.0'
            assert (line in text) == (name in names), text
        return True

    wait_until(lambda: failing("gone", "stays"), timeout=30)
    cp.kubectl("apply", "-f", "-", input=ops.monitor_manifest(namespace,
                                                              notifications=targets[1:]))
    wait_until(lambda: failing("stays"), timeout=30)
    cp.kubectl("delete", "dbm", "shop", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(lambda: failing(), timeout=30)
    assert f'{gauge}{{{where}' not in _metrics(operator)
