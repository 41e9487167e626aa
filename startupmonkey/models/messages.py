"""NATS messages, version 1: ``Detection`` (analyser -> anyone) and ``RemediationEvent``
(executor -> anyone), with the subjects of docs/design.md#event-bus.

Messages are JSON of 1-2 KB. Consumers validate with :func:`parse_detection` /
:func:`parse_remediation_event`, which raise :class:`MalformedMessage` with a readable reason
that the consumer counts and drops: a bad message never crashes a consumer. The executor never
takes SQL or identifiers from a message at face value: it re-derives them against the database.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import Any, Final, Literal, TypeVar

import pydantic
from pydantic import Field

from startupmonkey.models import base
from startupmonkey.models.enums import (
    ALLOWED_ACTIONS,
    ActionId,
    DetectorId,
    RemediationState,
    RiskClass,
    risk_of,
)
from startupmonkey.models.remediation import Target
from startupmonkey.models.remediation import quote_ident as quote_ident  # keys quote alike

SUBJECT_ROOT = "startupmonkey.v1"
DETECTION_SCHEMA: Final = "startupmonkey.dev/detection/v1"
REMEDIATION_EVENT_SCHEMA: Final = "startupmonkey.dev/remediation-event/v1"
#: Messages over this are refused before parsing (a detection is 1-2 KB).
MAX_MESSAGE_BYTES = 64 * 1024


class MalformedMessage(ValueError):
    """A message that is not a valid v1 message; ``kind`` groups them for counting."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


#: The token before a database's encoded name in a subject (:func:`subject_database`).
SUBJECT_DATABASE: Final = "db"
_PLAIN_SUBJECT_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def subject_token(database: str) -> str:
    """``database`` as one NATS subject token: every UTF-8 byte outside ``[A-Za-z0-9_-]``
    written ``%XX`` (upper-case hex), so it is reversible (:func:`subject_token_name`) and
    never holds ``.``, ``*``, ``>`` or white space; distinct names give distinct tokens."""
    return "".join(chr(b) if b in _PLAIN_SUBJECT_BYTES else f"%{b:02X}"
                   for b in database.encode("utf-8", "surrogatepass"))


def subject_token_name(token: str) -> str:
    """The database name of a :func:`subject_token` (ValueError for anything else)."""
    if not re.fullmatch(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})*", token):
        raise ValueError(f"not a database token: {token[:80]!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            raw.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    name = bytes(raw).decode("utf-8", "surrogatepass")
    if subject_token(name) != token:  # e.g. "%41" for "A": one spelling per name only
        raise ValueError(f"not the encoding of a database name: {token[:80]!r}")
    return name


def subject_database(database: str | None) -> str:
    """What a subject ends with for a database other than the home one:
    ``.db.<subject_token(database)>``; "" for the home database (None)."""
    return "" if database is None else f".{SUBJECT_DATABASE}.{subject_token(database)}"


def detection_subject(namespace: str, monitor: str, detector: DetectorId | str,
                      database: str | None = None) -> str:
    """``startupmonkey.v1.<ns>.<monitor>.detections.<detector>``, then
    ``.db.<encoded database>`` for a database other than the home one."""
    return (f"{SUBJECT_ROOT}.{namespace}.{monitor}.detections."
            f"{DetectorId(detector).value}{subject_database(database)}")


def remediation_subject(namespace: str, monitor: str, state: RemediationState,
                        database: str | None = None) -> str:
    """``startupmonkey.v1.<ns>.<monitor>.remediations.<state>`` (lower-case state), then
    ``.db.<encoded database>`` for a database other than the home one."""
    return (f"{SUBJECT_ROOT}.{namespace}.{monitor}.remediations.{state.token}"
            f"{subject_database(database)}")


def monitor_subjects(namespace: str, monitor: str) -> str:
    """Wildcard covering every subject of one monitor (stream subjects, audit)."""
    return f"{SUBJECT_ROOT}.{namespace}.{monitor}.>"


#: What starts the target part of a key of a problem in a database other than the home one.
DATABASE_PREFIX: Final = "db="


def database_target(database: str | None, target: str) -> str:
    """The target part of a key: ``target`` alone in the home database (``database`` None),
    ``db=<database quoted as SQL needs>/<target>`` in any other."""
    if database is None:
        return target
    return f"{DATABASE_PREFIX}{quote_ident(database)}/{target}"


def detection_key(namespace: str, monitor: str, detector: DetectorId, target: str,
                  database: str | None = None) -> str:
    """Deterministic key of a problem: namespace/monitor/detector/target, the target prefixed
    with ``db=<database>/`` when the problem is in another database than the home one
    (:func:`database_target`)."""
    return f"{namespace}/{monitor}/{detector.value}/{database_target(database, target)}"


def key_target(key: str) -> str:
    """What follows ``namespace/monitor/detector/`` in a key (namespaces, monitor names and
    detectors have no slash); a key without that many parts has only its last part."""
    return key.split("/", 3)[-1]


def key_names_database(key: str) -> bool:
    """Whether a key has a ``db=`` part right after its detector (another database's)."""
    return key_target(key).startswith(DATABASE_PREFIX)


def key_in_database(key: str, database: str) -> bool:
    """Whether a key's target starts with exactly ``db=<database quoted>/``."""
    return key_target(key).startswith(database_target(database, ""))


def new_occurrence_id(key: str, first_seen: datetime.datetime) -> str:
    """A new id per occurrence of a key: same key, new first-seen time, new id."""
    stamp = first_seen.astimezone(datetime.UTC).isoformat()
    return hashlib.sha256(f"{key}\x00{stamp}".encode()).hexdigest()[:32]


class Detection(base.ApiModel):
    """``Detection`` v1: one occurrence of one problem, re-published with the same id while
    active."""

    schema_: Literal["startupmonkey.dev/detection/v1"] = Field(DETECTION_SCHEMA, alias="schema")
    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    key: str = Field(min_length=3, max_length=512)
    namespace: str = Field(min_length=1, max_length=63)
    monitor: str = Field(min_length=1, max_length=40)
    database: str = Field(min_length=1, max_length=63)
    detector: DetectorId
    proposed_action: ActionId
    risk_class: RiskClass
    severity: Literal["info", "warning", "critical"] = "warning"
    target: Target = Field(default_factory=Target)
    summary: str = Field(max_length=1024)
    evidence: dict[str, Any] = Field(default_factory=dict)
    first_seen: datetime.datetime
    last_seen: datetime.datetime
    published_at: datetime.datetime

    @pydantic.model_validator(mode="after")
    def _action_fits_detector(self) -> Detection:
        """Only the actions the detector may ask for, in their own risk class: a forged
        detection cannot turn a finding into another action."""
        allowed = ALLOWED_ACTIONS[self.detector]
        if self.proposed_action not in allowed:
            raise ValueError(
                f"detector {self.detector.value} cannot propose {self.proposed_action.value} "
                f"(allowed: {', '.join(sorted(a.value for a in allowed))})")
        if self.risk_class is not risk_of(self.proposed_action):
            raise ValueError(
                f"action {self.proposed_action.value} is {risk_of(self.proposed_action).value}, "
                f"not {self.risk_class.value}")
        return self

    @property
    def subject(self) -> str:
        """Where this detection is published: with ``.db.<database>`` when its key names a
        database other than the home one (:func:`detection_subject`)."""
        other = self.database if key_names_database(self.key) else None
        return detection_subject(self.namespace, self.monitor, self.detector, other)

    def encode(self) -> bytes:
        """The JSON bytes on the wire."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class RemediationEvent(base.ApiModel):
    """``RemediationEvent`` v1: a Remediation moved to ``state``."""

    schema_: Literal["startupmonkey.dev/remediation-event/v1"] = Field(
        REMEDIATION_EVENT_SCHEMA, alias="schema")
    namespace: str = Field(min_length=1, max_length=63)
    monitor: str = Field(min_length=1, max_length=40)
    remediation: str = Field(min_length=1, max_length=253)
    key: str = Field(max_length=512)
    detection_id: str = Field(max_length=64)
    detector: DetectorId
    action: ActionId
    state: RemediationState
    time: datetime.datetime
    message: str = Field("", max_length=4096)
    database: str | None = Field(None, min_length=1, max_length=63, description=(
        "The database the Remediation acts in, when not the home database "
        "(Remediation.spec.database)."))

    @property
    def subject(self) -> str:
        """Where this event is published (``.db.<database>`` for another database than the
        home one)."""
        return remediation_subject(self.namespace, self.monitor, self.state, self.database)

    def encode(self) -> bytes:
        """The JSON bytes on the wire."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


M = TypeVar("M", bound=pydantic.BaseModel)


def _parse(model: type[M], kind: str, data: bytes) -> M:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(kind, f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MalformedMessage(kind, problems) from None


def parse_detection(data: bytes) -> Detection:
    """Validate a Detection v1 message or raise MalformedMessage with every problem listed."""
    return _parse(Detection, "detection", data)


def parse_remediation_event(data: bytes) -> RemediationEvent:
    """Validate a RemediationEvent v1 message or raise MalformedMessage."""
    return _parse(RemediationEvent, "remediation-event", data)
