"""The typed models: frozen names, durations, manifests, messages, naming and hashing."""

from __future__ import annotations

import datetime
import json

import pydantic
import pytest

from startupmonkey.models import durations, enums, messages, monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId, Mode, RemediationState, RiskClass

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def test_frozen_names_match_the_design() -> None:
    assert [d.value for d in DetectorId] == [
        "missing_index", "dead_tuples", "vacuum_blocked", "stale_statistics",
        "long_running_query", "idle_in_transaction", "blocking_lock", "connection_saturation",
        "cache_hit_ratio", "invalid_index", "unused_index", "duplicate_index", "xid_wraparound",
        "slow_statement"]
    assert [a.value for a in ActionId] == [
        "create_index", "vacuum", "analyze", "cancel_query", "terminate_session",
        "drop_invalid_index", "reindex", "drop_index", "advice"]
    assert [s.value for s in RemediationState] == [
        "Proposed", "PendingApproval", "Approved", "Running", "Verifying", "Succeeded", "Failed",
        "RolledBack", "Rejected", "Expired", "Recommended", "Observed"]
    assert set(enums.DEFAULT_ACTION) == set(DetectorId)


def test_risk_classes_and_the_whole_action_mapping_match_the_design() -> None:
    """docs/design.md#frozen-names: Risk classes: `maintenance` (vacuum, analyze), `session`
    (cancel, terminate), `ddl` (create_index, drop_invalid_index, reindex), `destructive`
    (drop_index), `advice`."""
    assert [r.value for r in RiskClass] == [
        "maintenance", "session", "ddl", "destructive", "advice"]
    design = {
        "maintenance": ["vacuum", "analyze"],
        "session": ["cancel_query", "terminate_session"],
        "ddl": ["create_index", "drop_invalid_index", "reindex"],
        "destructive": ["drop_index"],
        "advice": ["advice"],
    }
    expected = {ActionId(a): RiskClass(r) for r, actions in design.items() for a in actions}
    assert set(expected) == set(ActionId), "every action belongs to exactly one class"
    assert expected == enums.ACTION_RISK
    assert {a: enums.risk_of(a) for a in ActionId} == expected


def test_state_tokens_round_trip() -> None:
    assert RemediationState.PENDING_APPROVAL.token == "pendingapproval"
    for state in RemediationState:
        assert RemediationState.from_token(state.token) is state
        assert RemediationState.from_token(state.value) is state
    with pytest.raises(ValueError, match="unknown remediation state"):
        RemediationState.from_token("done")


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10), ("5m", 300), ("36h", 129600), ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert durations.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "5 m", "1d", "-1s", "s"])
def test_bad_durations_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="use a number with a unit"):
        durations.parse_duration(text)


@pytest.mark.parametrize("seconds", [0.25, 1, 59, 61, 3600, 5400, 129600])
def test_format_duration_inverts_parse(seconds: float) -> None:
    assert durations.parse_duration(durations.format_duration(seconds)) == seconds


def test_quantities() -> None:
    assert durations.parse_quantity("10Gi") == 10 * 2**30
    assert durations.parse_quantity("5M") == 5_000_000
    with pytest.raises(ValueError, match="invalid size"):
        durations.parse_quantity("10 GB")


def _manifest(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "database": {"host": "db", "dbname": "shop", "credentialsSecret": {"name": "s"}}}
    base.update(spec)
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": "shop"}, "spec": base}


def test_minimal_manifest_gets_documented_defaults() -> None:
    m = monitor.DatabaseMonitor.model_validate(_manifest())
    assert m.spec.interval == "10s"
    assert m.spec.mode is Mode.AUTO
    assert m.spec.database.port == 5432
    assert m.spec.thresholds.dead_tuples.min_dead_ratio == 0.2
    assert m.metadata.namespace == "default"


def test_every_error_is_reported_at_once() -> None:
    bad = _manifest(interval="500ms", mode="yolo", thresholds={"dead_tuples": {"minDeadRatio": 2}})
    bad["metadata"] = {"name": "Shop_1"}
    with pytest.raises(pydantic.ValidationError) as info:
        monitor.DatabaseMonitor.model_validate(bad)
    locations = {".".join(map(str, e["loc"])) for e in info.value.errors()}
    assert locations == {"metadata.name", "spec.interval", "spec.mode",
                         "spec.thresholds.dead_tuples.minDeadRatio"}


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="intervall"):
        monitor.DatabaseMonitor.model_validate(_manifest(intervall="5s"))


def test_monitor_names_are_dns1035_labels_of_at_most_40() -> None:
    assert monitor.check_name("a" * 40)
    for name in ("a" * 41, "1shop", "shop-", "shop.prod", "Shop"):
        with pytest.raises(ValueError, match="DNS-1035"):
            monitor.check_name(name)


def test_destructive_is_never_auto_unless_set_explicitly() -> None:
    spec = monitor.DatabaseMonitor.model_validate(_manifest()).spec
    assert spec.mode_for(RiskClass.DESTRUCTIVE) is Mode.APPROVAL
    assert spec.mode_for(RiskClass.DDL) is Mode.AUTO
    assert spec.mode_for(RiskClass.ADVICE) is Mode.OBSERVE
    explicit = monitor.DatabaseMonitor.model_validate(
        _manifest(policy={"destructive": "auto", "ddl": "approval"})).spec
    assert explicit.mode_for(RiskClass.DESTRUCTIVE) is Mode.AUTO
    assert explicit.mode_for(RiskClass.DDL) is Mode.APPROVAL
    observing = monitor.DatabaseMonitor.model_validate(_manifest(mode="observe")).spec
    assert observing.mode_for(RiskClass.DESTRUCTIVE) is Mode.OBSERVE


def test_event_bus_credentials_need_an_external_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="only for an external"):
        monitor.EventBus.model_validate({"credentialsSecret": {"name": "nats"}})
    assert monitor.EventBus.model_validate(
        {"url": "nats://nats:4222", "credentialsSecret": {"name": "nats"}}).url


def _detection(**overrides: object) -> dict[str, object]:
    key = messages.detection_key("prod", "shop", DetectorId.DEAD_TUPLES, "public.orders")
    body: dict[str, object] = {
        "schema": messages.DETECTION_SCHEMA,
        "id": messages.new_occurrence_id(key, NOW), "key": key, "namespace": "prod",
        "monitor": "shop", "database": "shop", "detector": "dead_tuples",
        "proposedAction": "vacuum", "riskClass": "maintenance",
        "target": {"schema": "public", "table": "orders"},
        "summary": "orders has 42% dead tuples", "evidence": {"deadRatio": 0.42},
        "firstSeen": NOW.isoformat(), "lastSeen": NOW.isoformat(), "publishedAt": NOW.isoformat()}
    body.update(overrides)
    return body


def test_detection_round_trip_and_subject() -> None:
    detection = messages.parse_detection(json.dumps(_detection()).encode())
    assert detection.subject == "startupmonkey.v1.prod.shop.detections.dead_tuples"
    assert detection.target.table == "orders"
    assert len(detection.encode()) < 2048
    assert messages.parse_detection(detection.encode()) == detection


@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json", "Invalid JSON"),
    (json.dumps(_detection(detector="everything")).encode(), "detector"),
    (json.dumps(_detection(id="../../etc")).encode(), "id"),
    (json.dumps(_detection(schema="startupmonkey.dev/detection/v9")).encode(), "schema"),
    (b"{" + b" " * (messages.MAX_MESSAGE_BYTES + 1) + b"}", "exceeds"),
])
def test_malformed_detections_raise_readable_errors(raw: bytes, expected: str) -> None:
    with pytest.raises(messages.MalformedMessage, match=expected) as info:
        messages.parse_detection(raw)
    assert info.value.kind == "detection"


def test_occurrence_ids_differ_per_occurrence_and_repeat_per_key() -> None:
    key = "prod/shop/dead_tuples/public.orders"
    later = NOW + datetime.timedelta(hours=1)
    assert messages.new_occurrence_id(key, NOW) == messages.new_occurrence_id(key, NOW)
    assert messages.new_occurrence_id(key, NOW) != messages.new_occurrence_id(key, later)


def test_remediation_event_subject_uses_lower_case_state() -> None:
    event = messages.RemediationEvent(
        namespace="prod", monitor="shop", remediation="shop-0123456789", key="k",
        detection_id="d" * 32, detector=DetectorId.MISSING_INDEX, action=ActionId.CREATE_INDEX,
        state=RemediationState.PENDING_APPROVAL, time=NOW)
    assert event.subject == "startupmonkey.v1.prod.shop.remediations.pendingapproval"
    assert messages.parse_remediation_event(event.encode()) == event


def _event(*, drop: tuple[str, ...] = (), **overrides: object) -> bytes:
    body: dict[str, object] = {
        "schema": messages.REMEDIATION_EVENT_SCHEMA, "namespace": "prod", "monitor": "shop",
        "remediation": "shop-0123456789", "key": "prod/shop/missing_index/public.orders",
        "detectionId": "d" * 32, "detector": "missing_index", "action": "create_index",
        "state": "PendingApproval", "time": NOW.isoformat()}
    body.update(overrides)
    for name in drop:
        del body[name]
    return json.dumps(body).encode()


def test_the_sample_remediation_event_is_valid() -> None:
    event = messages.parse_remediation_event(_event())
    assert event.state is RemediationState.PENDING_APPROVAL and event.time == NOW


STATES = ("'Proposed', 'PendingApproval', 'Approved', 'Running', 'Verifying', 'Succeeded', "
          "'Failed', 'RolledBack', 'Rejected', 'Expired', 'Recommended' or 'Observed'")


@pytest.mark.parametrize(("raw", "reason"), [
    (_event(state="Done"), f"state: Input should be {STATES}"),
    (_event(state=""), f"state: Input should be {STATES}"),
    (_event(state=None), f"state: Input should be {STATES}"),
    (_event(drop=("state",)), "state: Field required"),
    (_event(drop=("action",)), "action: Field required"),
    (_event(drop=("remediation",)), "remediation: Field required"),
    (_event(drop=("time", "detector")), "detector: Field required; time: Field required"),
    (_event(action="drop_everything"), "action: Input should be 'create_index', "),
    (_event(time="yesterday"), "time: Input should be a valid datetime"),
    (_event(namespace=""), "namespace: String should have at least 1 character"),
    (_event(schema="startupmonkey.dev/remediation-event/v2"),
     "schema: Input should be 'startupmonkey.dev/remediation-event/v1'"),
    (_event(extra="field"), "extra: Extra inputs are not permitted"),
    (b"[]", "<root>: Input should be an object"),
    (b"{not json", "<root>: Invalid JSON"),
])
def test_malformed_remediation_events_raise_readable_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(messages.MalformedMessage) as info:
        messages.parse_remediation_event(raw)
    assert info.value.kind == "remediation-event"
    assert info.value.reason.startswith(reason), info.value.reason
    assert str(info.value) == f"remediation-event: {info.value.reason}"


def test_remediation_names_are_deterministic_and_short() -> None:
    name = remediation.object_name("a" * 40, "key", "id1")
    assert name == remediation.object_name("a" * 40, "key", "id1")
    assert name != remediation.object_name("a" * 40, "key", "id2")
    assert len(name) <= 51


def test_sql_hash_covers_rollback_sql() -> None:
    sql = 'CREATE INDEX CONCURRENTLY "i" ON "t" ("c")'
    assert remediation.sql_hash(sql, None) != remediation.sql_hash(sql, 'DROP INDEX "i"')
    spec = remediation.RemediationSpec(
        monitor="shop", detection_key="k", detection_id="d", detector=DetectorId.MISSING_INDEX,
        action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL, sql=sql,
        sql_hash=remediation.sql_hash(sql, None))
    assert spec.approved is False
    assert spec.dump()["sqlHash"] == remediation.sql_hash(sql, None)
