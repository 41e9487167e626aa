"""The ``Remediation`` kind: the durable record of one detection occurrence the executor handled.

Every occurrence the executor takes on becomes one object, whatever happens to it (Recommended
advice and Observed would-have-run included), so ``kubectl get rem`` tells the whole story and
survives restarts. The spec is the plan and is immutable except ``approved`` (false -> true
only), enforced by CEL transition rules in the CRD; the executor runs only SQL whose hash it
planned itself. The status is the executor's record of what happened, with its numbers.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import Annotated, Any

from pydantic import Field

from startupmonkey.models import base
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass

KIND = "Remediation"
PLURAL = "remediations"
SHORT_NAME = "rem"

LABEL_PREFIX = "startupmonkey.dev/"
LABEL_MONITOR = LABEL_PREFIX + "monitor"
LABEL_DETECTOR = LABEL_PREFIX + "detector"
LABEL_ACTION = LABEL_PREFIX + "action"
LABEL_STATE = LABEL_PREFIX + "state"
#: On a Remediation of a database other than the executor's home one: the database
#: (:func:`database_label`), so ``kubectl get rem -l startupmonkey.dev/database=shop_b``
#: selects them. Absent for the home database.
LABEL_DATABASE = LABEL_PREFIX + "database"
#: Written by the operator's mutating webhook on approval: who set ``spec.approved``.
ANNOTATION_APPROVED_BY = LABEL_PREFIX + "approved-by"
#: Set through the executor API to ask for the revert of a kept change: "<who>: <reason>".
ANNOTATION_ROLLBACK = LABEL_PREFIX + "rollback-requested"

#: Spec fields that a transition rule freezes (camelCase, as in the CRD). ``approved`` is not here.
IMMUTABLE_FIELDS = (
    "monitor", "detectionKey", "detectionId", "detector", "action", "riskClass", "target",
    "database",
    "sql", "rollbackSql", "sqlHash", "evidence", "summary", "approvalExpiresAt",
)
#: Optional spec fields without a default in the CRD: a field's own ``self == oldSelf`` rule
#: runs only when the field is in both the old and the new object, so these also need a
#: spec-level rule that refuses adding or removing them after creation.
PRESENCE_FROZEN_FIELDS = ("target", "rollbackSql", "evidence", "approvalExpiresAt", "database")


def _immutable(name: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": f"spec.{name} is immutable"}]}


def sql_hash(sql: str, rollback_sql: str | None) -> str:
    """The hash the executor checks before running: it runs only what it planned itself."""
    digest = hashlib.sha256()
    digest.update(sql.encode())
    digest.update(b"\x00")
    digest.update((rollback_sql or "").encode())
    return digest.hexdigest()


_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
#: How :func:`database_label` marks a hashed name (a label value cannot hold every name).
HASHED_LABEL_PREFIX = "sha256-"


def database_label(database: str) -> str:
    """The value of :data:`LABEL_DATABASE` for ``database``: the name itself when it is a
    valid label value (at most 63 characters of ``[A-Za-z0-9-_.]``, starting and ending
    alphanumeric), else ``sha256-`` and the first 16 hex digits of the SHA-256 of its UTF-8
    bytes (stable, so ``-l startupmonkey.dev/database=sha256-...`` still selects it)."""
    if _LABEL_VALUE.fullmatch(database):
        return database
    digest = hashlib.sha256(database.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_LABEL_PREFIX + digest[:16]


def where(database: str | None) -> str:
    """`` in database "Shop B"`` (quoted as SQL would need it) for a Remediation of another
    database than the home one; "" for the home database: what listings append to the
    target."""
    return "" if database is None else f" in database {quote_ident(database)}"


def quote_ident(name: str) -> str:
    """An identifier as SQL would need it written, quoted unless plain lower case (for
    summaries and keys only; the executor quotes with psycopg.sql)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def object_name(monitor: str, detection_key: str, detection_id: str) -> str:
    """``<monitor>-<10 hex of sha256(key, occurrence id)>``: deterministic, at most 51 chars."""
    digest = hashlib.sha256(f"{detection_key}\x00{detection_id}".encode()).hexdigest()
    return f"{monitor}-{digest[:10]}"


class Target(base.ApiModel):
    """What the action is aimed at. Only the fields the action needs are set."""

    schema_: str | None = Field(None, alias="schema", max_length=63)
    table: str | None = Field(None, max_length=63)
    index: str | None = Field(None, max_length=63)
    columns: list[base.Identifier] = Field(default_factory=list, max_length=32)
    pid: int | None = Field(None, ge=1)
    backend_start: datetime.datetime | None = None
    query_start: datetime.datetime | None = None
    state_change: datetime.datetime | None = None
    xact_start: datetime.datetime | None = None
    queryids: list[base.ShortText] = Field(default_factory=list, max_length=64,
                                description="pg_stat_statements queryids (as decimal strings).")


class RemediationSpec(base.ApiModel):
    """The plan: immutable once created, except ``approved``."""

    model_config = {
        **base.ApiModel.model_config,
        # Field rules cannot see a field appear or vanish; these can.
        "json_schema_extra": {"x-kubernetes-validations": [
            {"rule": f"has(self.{name}) == has(oldSelf.{name})",
             "message": f"spec.{name} cannot be added or removed"}
            for name in PRESENCE_FROZEN_FIELDS
        ]},
    }

    monitor: str = Field(max_length=40, json_schema_extra=_immutable("monitor"))
    detection_key: str = Field(max_length=512, json_schema_extra=_immutable("detectionKey"))
    detection_id: str = Field(max_length=64, json_schema_extra=_immutable("detectionId"))
    detector: DetectorId = Field(json_schema_extra=_immutable("detector"))
    action: ActionId = Field(json_schema_extra=_immutable("action"))
    risk_class: RiskClass = Field(json_schema_extra=_immutable("riskClass"))
    target: Target = Field(default_factory=Target, json_schema_extra=_immutable("target"))
    database: str | None = Field(
        None, min_length=1, max_length=63,
        description="The database the action runs in, when not the home database (the "
        "executor's login database): a database of the same server the monitor watches.",
        json_schema_extra=_immutable("database"))
    sql: str = Field("", max_length=16384, description="Exactly the SQL the executor will run.",
                     json_schema_extra=_immutable("sql"))
    rollback_sql: str | None = Field(None, max_length=16384,
                                     json_schema_extra=_immutable("rollbackSql"))
    sql_hash: str = Field(pattern=r"^[0-9a-f]{64}$", max_length=64,
                          json_schema_extra=_immutable("sqlHash"))
    evidence: dict[str, str] = Field(default_factory=dict, max_length=64,
                                     json_schema_extra={
                                         **_immutable("evidence"),
                                         "additionalProperties": {"type": "string",
                                                                  "maxLength": 4096}})
    summary: str = Field("", max_length=1024, json_schema_extra=_immutable("summary"))
    approval_expires_at: datetime.datetime | None = Field(
        None, json_schema_extra=_immutable("approvalExpiresAt"))
    approved: bool = Field(False, description="Set to true to approve; can never go back.",
                           json_schema_extra={"x-kubernetes-validations": [{
                               "rule": "self == true || oldSelf == false",
                               "message": "spec.approved may only change from false to true"}]})


class StateChange(base.ApiModel):
    """One step of the history."""

    state: RemediationState
    time: datetime.datetime
    message: str = Field("", max_length=1024)


class Decision(base.ApiModel):
    """Keep or revert, with the numbers it was made from."""

    keep: bool
    reason: str = Field(max_length=1024)
    before_mean_ms: float | None = None
    after_mean_ms: float | None = None
    before_calls: int | None = None
    after_calls: int | None = None
    improvement: float | None = Field(None, description="1 - after/before of mean time per call.")


class RemediationStatus(base.ApiModel):
    """What happened, written by the executor."""

    state: RemediationState = RemediationState.PROPOSED
    message: str = Field("", max_length=4096)
    history: list[StateChange] = Field(default_factory=list, max_length=64)
    before: dict[str, float] = Field(default_factory=dict)
    after: dict[str, float] = Field(default_factory=dict)
    decision: Decision | None = None
    attempts: int = 0
    next_attempt_time: datetime.datetime | None = None
    executed_sql: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list, max_length=16, description="Every statement run, in order.")
    approved_by: str | None = Field(None, max_length=512)
    executor: str | None = Field(None, max_length=253, description="Replica that ran it.")
    summary: str | None = Field(None, max_length=1024, description=(
        "What changed, in words (from before/after/decision; startupmonkey/summary.py)."))
    benefit: str | None = Field(None, max_length=256, description=(
        "Time saved per hour where it was measured (a kept index); empty otherwise."))


class RemediationObject(base.ApiModel):
    """A whole Remediation object as the executor builds it."""

    model_config = {**base.ApiModel.model_config, "extra": "ignore"}

    api_version: str = "startupmonkey.dev/v1alpha1"
    kind: str = KIND
    metadata: dict[str, Any]
    spec: RemediationSpec
    status: RemediationStatus | None = None
