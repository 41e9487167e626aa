"""The DatabaseMonitor status contract: written and read only through the models, in the wire
form the CRD (and every stored object) already has; and the one Kubernetes error type."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import kubernetes.client
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from startupmonkey import kubeapi
from startupmonkey.executor import kube as executor_kube
from startupmonkey.executor import records
from startupmonkey.models import monitor as models
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.operator import deletion, handlers, status

T0 = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)


def record(name: str, states: list[RemediationState], minutes: int) -> records.Record:
    spec = remediation.RemediationSpec(
        monitor="shop", detection_key=f"prod/shop/{name}", detection_id=f"{name}-1",
        detector=DetectorId.DEAD_TUPLES, action=ActionId.VACUUM,
        risk_class=RiskClass.MAINTENANCE,
        target=remediation.Target(schema="public", table=name), sql=f"VACUUM public.{name}",
        sql_hash="0" * 64, summary=f"{name} has dead tuples")
    rec = records.Record(name=f"shop-{name}", namespace="prod", spec=spec,
                         status=remediation.RemediationStatus(executor="e"), created=T0)
    for offset, state in enumerate(states):
        rec.move(state, "", T0 + datetime.timedelta(minutes=minutes + offset))
    return rec


def test_remediation_counts_keep_the_wire_form_they_had_when_built_by_hand() -> None:
    items = [record("orders", [RemediationState.APPROVED, RemediationState.RUNNING], 0),
             record("users", [RemediationState.APPROVED, RemediationState.RUNNING,
                              RemediationState.VERIFYING, RemediationState.SUCCEEDED], 5),
             record("carts", [RemediationState.PENDING_APPROVAL], 1)]
    patch = models.DatabaseMonitorStatus(
        remediations=executor_kube.remediation_counts(items)).patch()
    assert patch == {"remediations": {
        "byState": {**{s.value: 0 for s in RemediationState}, "Running": 1, "Succeeded": 1,
                    "PendingApproval": 1},
        "active": 2, "succeeded": 1, "pendingApproval": 1, "inFlight": 1,
        "lastAction": "vacuum public.users (Succeeded)",
        "lastActionTime": "2026-11-28T12:08:00Z", "lastActionId": "vacuum"}}
    assert list(patch["remediations"]["byState"]) == [s.value for s in RemediationState]


def test_no_remediation_sends_zeros_and_no_last_action() -> None:
    patch = models.DatabaseMonitorStatus(remediations=executor_kube.remediation_counts([]))
    assert patch.patch() == {"remediations": {
        "byState": {s.value: 0 for s in RemediationState}, "active": 0, "succeeded": 0,
        "pendingApproval": 0, "inFlight": 0}}


def test_a_patch_carries_only_the_keys_its_writer_gave() -> None:
    report = models.DatabaseStatus(reachable=True, server_version="15.8", checked_at=T0)
    assert models.DatabaseMonitorStatus(database=report).patch() == {"database": {
        "reachable": True, "serverVersion": "15.8", "extensions": [], "privilegesMissing": [],
        "superuserLogins": [], "checkedAt": "2026-11-28T12:00:00Z"}}
    operator_keys = models.DatabaseMonitorStatus(conditions=[], phase="Ready",
                                                 observed_generation=None).patch()
    assert operator_keys == {"conditions": [], "phase": "Ready"}


def test_parse_reads_each_key_on_its_own() -> None:
    stored: dict[str, Any] = {
        "observedGeneration": 3, "phase": "Ready",
        "database": {"reachable": True, "checkedAt": "2026-11-28T12:00:00Z"},
        "remediations": {"inFlight": "many"},  # not its shape: reads as not reported
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllAvailable",
                        "message": "", "lastTransitionTime": "2026-11-28T11:00:00Z"}]}
    parsed = models.DatabaseMonitorStatus.parse(stored)
    assert parsed.observed_generation == 3 and parsed.phase == "Ready"
    assert parsed.database is not None and parsed.database.checked_at == T0
    assert parsed.remediations is None
    assert parsed.conditions[0].last_transition_time == T0 - datetime.timedelta(hours=1)
    assert models.DatabaseMonitorStatus.parse(None) == models.DatabaseMonitorStatus()
    # A condition read and written back is the same bytes (lastTransitionTime survives).
    assert models.DatabaseMonitorStatus(conditions=parsed.conditions).patch() == {
        "conditions": stored["conditions"]}


def test_condition_times_are_metav1_time_whatever_the_precision() -> None:
    cond = models.Condition(type="Ready", status="True", reason="r",
                            last_transition_time=T0.replace(microsecond=123456))
    assert cond.dump()["lastTransitionTime"] == "2026-11-28T12:00:00Z"


@pytest.mark.parametrize(("stored", "expected"), [
    ({"remediations": {"inFlight": 3}}, 3), ({"remediations": {}}, 0), ({}, 0),
    ({"remediations": {"inFlight": "x"}}, 0), (None, 0)])
def test_deletion_reads_in_flight_through_the_model(stored: Any, expected: int) -> None:
    assert deletion.in_flight({"status": stored}) == expected


def test_database_report_needs_reachable() -> None:
    assert status.database_report({}) is None
    assert status.database_report({"database": {"serverVersion": "15"}}) is None
    report = status.database_report({"database": {"reachable": False, "lastError": "boom"}})
    assert report is not None and report.last_error == "boom" and not report.reachable


def test_the_status_fingerprint_ignores_only_checked_at() -> None:
    import kopf

    def body(**database: Any) -> kopf.Body:
        return kopf.Body({"metadata": {"generation": 2}, "status": {"database": database}})

    # None: the report is not stale (the status clock says when it goes stale).
    fresh = handlers._fingerprint(body(reachable=True, checkedAt="2026-11-28T12:00:00Z"), None)
    later = handlers._fingerprint(body(reachable=True, checkedAt="2026-11-28T12:01:00Z"), None)
    down = handlers._fingerprint(body(reachable=False, checkedAt="2026-11-28T12:01:00Z"), None)
    assert fresh == later != down
    # A report that has just gone stale is a change, whatever its checkedAt.
    stale = handlers._fingerprint(body(reachable=True, checkedAt="2026-11-28T12:01:00Z"), 0.0)
    assert stale != later


def test_one_error_type_from_either_client_path() -> None:
    answer = json.dumps({"kind": "Status", "message": 'remediations "x" is forbidden'})
    refused = ApiException(status=403, reason="Forbidden", body=answer)
    error = kubeapi.ApiError.from_exception(refused)
    assert isinstance(error, ApiException)  # what code written for the official client catches
    assert (error.status, error.reason, error.body) == (403, "Forbidden", answer)
    assert str(error) == '403: remediations "x" is forbidden'
    assert str(kubeapi.ApiError.from_exception(ApiException(status=500, reason="Oops"))) == \
        "500: Oops"
    assert str(kubeapi.ApiError(409, "conflict")) == "409: conflict"
    assert isinstance(error, kubeapi.ERRORS)
    assert isinstance(urllib3.exceptions.ProtocolError("reset"), kubeapi.ERRORS)
    assert executor_kube.API_ERRORS is kubeapi.ERRORS


async def test_the_executor_store_raises_the_shared_error() -> None:
    def refuse(*_: Any, **options: Any) -> None:
        assert options == {"_request_timeout": kubeapi.REQUEST_TIMEOUT}  # every call has one
        raise ApiException(status=404, reason="Not Found")

    store = executor_kube.KubernetesStore("prod", "shop", kubernetes.client.ApiClient())
    with pytest.raises(kubeapi.ApiError) as raised:
        await store._call(refuse)
    assert raised.value.status == 404
    store.client.close()


async def test_the_executor_store_sends_the_other_databases_only_when_it_has_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    store = executor_kube.KubernetesStore("prod", "shop", kubernetes.client.ApiClient())

    async def no_records(**_: Any) -> list[records.Record]:
        return []

    async def patch(report: models.DatabaseMonitorStatus) -> None:
        sent.append(report.patch())

    monkeypatch.setattr(store, "list", no_records)
    monkeypatch.setattr(store, "patch_monitor_status", patch)
    await store.report_database({"reachable": True})
    await store.report_database({"reachable": True}, [
        {"name": "Shop B", "reachable": True, "checkedAt": "2026-11-28T12:00:00Z"},
        {"name": "gone", "reachable": False, "lastError": "does not exist"}])
    store.client.close()
    assert "databases" not in sent[0], "one database only: the status is as before"
    assert sent[1]["databases"] == [
        {"name": "Shop B", "reachable": True, "checkedAt": "2026-11-28T12:00:00Z"},
        {"name": "gone", "reachable": False, "lastError": "does not exist"}]
    parsed = models.DatabaseMonitorStatus.parse(sent[1])
    assert parsed.databases is not None and parsed.databases[1].last_error == "does not exist"

    assert sent[1]["databasesReachable"] == "2/3", "the home database and Shop B answered"
    assert "databasesReachable" not in sent[0]


def _other_database_record() -> records.Record:
    spec = remediation.RemediationSpec(
        monitor="shop", detection_key="prod/shop/stale_statistics/db=b/public.t",
        detection_id="d1", detector=DetectorId.STALE_STATISTICS, action=ActionId.ANALYZE,
        risk_class=RiskClass.MAINTENANCE, database="b",
        sql_hash=remediation.sql_hash("", None))
    record = records.Record(name="shop-1", namespace="prod", spec=spec,
                            status=remediation.RemediationStatus(), created=records.utcnow())
    record.move(RemediationState.APPROVED, "approved by policy")
    return record


@pytest.mark.parametrize("server", ["refuses_unknown_fields", "prunes_silently"])
async def test_a_crd_without_spec_database_ends_the_record_failed_instead_of_at_home(
        monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    """A Remediation CRD older than spec.database: with strict field validation the API
    server refuses the field (the record is stored without it, ended Failed); a server that
    ignores the validation prunes it, and the comparison of what was stored ends it Failed.
    Either way nothing runs, and it never reads as the home database's."""
    store = executor_kube.KubernetesStore("prod", "shop", kubernetes.client.ApiClient())
    calls: list[dict[str, Any]] = []
    patched: list[dict[str, Any]] = []

    def create(group: str, version: str, namespace: str, plural: str,
               body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        calls.append({"body": copy.deepcopy(body), **kwargs})
        if server == "refuses_unknown_fields" and "database" in body["spec"]:
            raise kubeapi.ApiError(422, 'strict decoding error: unknown field "spec.database"')
        spec = {k: v for k, v in body["spec"].items() if k != "database"}
        return {**body, "spec": spec, "metadata": {
            **body["metadata"], "resourceVersion": "1",
            "creationTimestamp": "2026-12-07T10:00:00Z"}}

    def patch_status(*args: Any, **kwargs: Any) -> dict[str, Any]:
        patched.append(args[-1])
        return {"metadata": {"resourceVersion": "2"}}

    async def after(_: records.Record) -> None:
        return None

    monkeypatch.setattr(store.custom, "create_namespaced_custom_object", create)
    monkeypatch.setattr(store.custom, "patch_namespaced_custom_object_status", patch_status)
    monkeypatch.setattr(store, "_after_change", after)
    record = _other_database_record()
    assert await store.create(record)
    store.client.close()
    assert all(call["field_validation"] == "Strict" for call in calls)
    assert calls[0]["body"]["spec"]["database"] == "b"
    assert calls[0]["body"]["metadata"]["labels"]["startupmonkey.dev/database"] == "b"
    assert record.state is RemediationState.FAILED
    assert "no spec.database" in record.status.message and "nothing ran" in \
        record.status.message
    assert patched[-1]["status"]["state"] == "Failed"
