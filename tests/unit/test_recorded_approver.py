"""The approver recorded in status.approvedBy is one someone vouches for (issue 24.6): the
annotation when the API server guards it (the chart's policy or the webhook) or only the
executor writes it (the JSONL store), otherwise "unknown"."""

from __future__ import annotations

import types
from typing import Any

import pytest

from startupmonkey import settings
from startupmonkey.executor import housekeeping, records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass

LOGIN = settings.DatabaseLogin(host="db", dbname="shop", user="x")


def _record(annotations: dict[str, str]) -> records.Record:
    spec = remediation.RemediationSpec(
        monitor="m", detection_key="ns/m/dead_tuples/public.t", detection_id="0" * 16,
        detector=DetectorId.DEAD_TUPLES, action=ActionId.VACUUM,
        risk_class=RiskClass.MAINTENANCE, target=remediation.Target(schema="public", table="t"),
        sql_hash=remediation.sql_hash("", None), summary="s", approved=True)
    return records.Record(name="m-1", namespace="ns", spec=spec,
                          status=remediation.RemediationStatus(), created=records.utcnow(),
                          annotations=annotations)


def _keeper(store_vouches: bool, **executor: Any) -> housekeeping.Housekeeping:
    ctx = types.SimpleNamespace(
        config=types.SimpleNamespace(executor=settings.ExecutorSettings(database=LOGIN,
                                                                        **executor)),
        store=types.SimpleNamespace(vouches_for_annotations=store_vouches))
    return housekeeping.Housekeeping(ctx, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("store_vouches", "executor", "expected"), [
    (False, {"approver_verified": True}, "alice"),  # Kubernetes with the policy or webhook
    (False, {}, "unknown (the approved-by annotation is not verified)"),  # Kubernetes alone
    (True, {}, "alice"),  # the JSONL store: only the executor's own API writes it
])
def test_the_annotation_counts_only_when_vouched_for(store_vouches: bool,
                                                     executor: dict[str, Any],
                                                     expected: str) -> None:
    record = _record({remediation.ANNOTATION_APPROVED_BY: "alice"})
    assert _keeper(store_vouches, **executor)._approver(record) == expected


def test_no_annotation_is_unknown() -> None:
    assert _keeper(False, approver_verified=True)._approver(_record({})) == "unknown"
