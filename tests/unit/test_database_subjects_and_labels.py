"""How a database other than the home one shows in subjects, labels and listings.

A detection of another database is published on ``...detections.<detector>.db.<token>`` and
its Remediation's events on ``...remediations.<state>.db.<token>``: the token is the name with
every UTF-8 byte outside ``[A-Za-z0-9_-]`` written ``%XX``, so it is one NATS token whatever
the name (never ``.``, ``*``, ``>`` or white space), reversible, and distinct for distinct
names. A Remediation of another database carries the label ``startupmonkey.dev/database``:
the name when it is a valid label value, else ``sha256-<16 hex>``.
"""

from __future__ import annotations

import datetime
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.models import messages, monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass

#: Any text PostgreSQL could hold as a name, and worse (surrogates, NUL, dots, wildcards).
NAMES = st.text(min_size=1, max_size=70) | st.sampled_from(
    ["shop", "Shop B", "a.b", "*", ">", "a b", "%41", "é", "db=x/y", "\0", "\ud800"])
_FORBIDDEN = re.compile(r"[.*>\s]")


@settings(max_examples=500, deadline=None)
@given(NAMES)
def test_a_database_token_is_one_safe_token_and_reads_back(name: str) -> None:
    token = messages.subject_token(name)
    assert token and not _FORBIDDEN.search(token)
    assert re.fullmatch(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+", token)
    assert messages.subject_token_name(token) == name


@settings(max_examples=500, deadline=None)
@given(NAMES, NAMES)
def test_distinct_names_give_distinct_tokens(a: str, b: str) -> None:
    assert (messages.subject_token(a) == messages.subject_token(b)) == (a == b)


@given(st.text(max_size=30))
def test_reading_a_token_back_never_accepts_two_spellings(token: str) -> None:
    try:
        name = messages.subject_token_name(token)
    except ValueError:
        return
    assert messages.subject_token(name) == token


def _detection(database: str, key_database: str | None) -> messages.Detection:
    now = datetime.datetime.now(datetime.UTC)
    key = messages.detection_key("ns", "m", DetectorId.STALE_STATISTICS, "public.t",
                                 key_database)
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace="ns", monitor="m",
        database=database, detector=DetectorId.STALE_STATISTICS,
        proposed_action=ActionId.ANALYZE, risk_class=RiskClass.MAINTENANCE,
        target=remediation.Target(schema="public", table="t"), summary="s",
        first_seen=now, last_seen=now, published_at=now)


def test_subjects_name_another_database_and_leave_the_home_ones_as_they_were() -> None:
    home = _detection("shop", None)
    assert home.subject == "startupmonkey.v1.ns.m.detections.stale_statistics"
    other = _detection("Shop B.1", "Shop B.1")
    assert other.subject == "startupmonkey.v1.ns.m.detections.stale_statistics.db.Shop%20B%2E1"
    assert messages.remediation_subject("ns", "m", RemediationState.SUCCEEDED) == \
        "startupmonkey.v1.ns.m.remediations.succeeded"
    event = messages.RemediationEvent(
        namespace="ns", monitor="m", remediation="m-1", key=other.key, detection_id=other.id,
        detector=other.detector, action=other.proposed_action, state=RemediationState.FAILED,
        time=other.published_at, database="Shop B.1")
    assert event.subject == "startupmonkey.v1.ns.m.remediations.failed.db.Shop%20B%2E1"
    assert messages.parse_remediation_event(event.encode()).database == "Shop B.1"
    assert b'"database"' not in event.model_copy(update={"database": None}).encode()


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_the_database_label_is_a_valid_label_value_and_stable(name: str) -> None:
    value = remediation.database_label(name)
    assert len(value) <= 63
    assert re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)
    assert value == remediation.database_label(name)
    if value != name:
        assert value.startswith(remediation.HASHED_LABEL_PREFIX)


def test_label_examples() -> None:
    assert remediation.database_label("shop_b") == "shop_b"
    assert remediation.database_label("Shop B").startswith("sha256-")
    assert remediation.database_label("Shop B") != remediation.database_label("Shop C")
    assert remediation.where(None) == ""
    assert remediation.where("shop_b") == " in database shop_b"
    assert remediation.where('Shop "B"') == ' in database "Shop ""B"""'


def test_databases_reachable_counts_the_home_database_too() -> None:
    reached = [monitor.DatabaseReach(name="a", reachable=True),
               monitor.DatabaseReach(name="b", reachable=False)]
    assert monitor.databases_reachable(True, reached) == "2/3"
    assert monitor.databases_reachable(False, reached[1:]) == "0/2"
    status = monitor.DatabaseMonitorStatus(databases=reached, databases_reachable="2/3")
    assert status.patch()["databasesReachable"] == "2/3"
