"""Notifications, the pure parts (issue 20, item 1): spec.notifications parsing, which states
go to which target (Succeeded only for ddl and destructive by default, advice only on request,
a PendingApproval already left is not sent), the delivery record, the three bodies for any
Remediation content (valid JSON below 40 kB; Slack and Teams in their shapes), the approval
commands and expiry, and the HMAC-SHA256 signature."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import notify
from startupmonkey.models import monitor as models
from startupmonkey.models.enums import RemediationState, RiskClass

S = RemediationState
BASE = {"database": {"host": "db", "dbname": "shop", "credentialsSecret": {"name": "db"}}}


def _spec(*targets: dict[str, Any]) -> models.DatabaseMonitorSpec:
    return models.DatabaseMonitorSpec.model_validate({**BASE, "notifications": list(targets)})


def _target(**extra: Any) -> models.NotificationTarget:
    return models.NotificationTarget.model_validate(
        {"name": "ops", "secretRef": {"name": "hook"}, **extra})


def _remediation(state: S = S.PENDING_APPROVAL, risk: str = "ddl",
                 history: list[S] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop-ns", "name": "shop-0123456789"},
        "spec": {"monitor": "shop", "detector": "missing_index", "action": "create_index",
                 "riskClass": risk, "target": {"schema": "public", "table": "orders"},
                 "sql": "CREATE INDEX CONCURRENTLY ...", "sqlHash": "ab" * 32,
                 "summary": "seq scans of orders: 1,200/s over 50,000 rows",
                 "evidence": {"seq_scan_rate": "1200"},
                 "approvalExpiresAt": "2026-12-07T16:00:00Z", **spec},
        "status": {"state": state.value,
                   "history": [{"state": s.value, "time": "2026-12-06T16:00:00Z"}
                               for s in (history or [state])]},
    }


# -------------------------------------------------------------------------------- the spec


def test_a_target_defaults_to_json_and_the_issue_s_states() -> None:
    target = _spec({"name": "ops", "secretRef": {"name": "hook"}}).notifications[0]
    assert target.format is models.NotificationFormat.JSON
    assert target.secret_ref.url_key == "url" and target.secret_ref.hmac_key is None
    assert target.states == [S.PENDING_APPROVAL, S.FAILED, S.ROLLED_BACK]
    assert target.succeeded_for == [RiskClass.DDL, RiskClass.DESTRUCTIVE]
    assert target.advice is False


@pytest.mark.parametrize(("targets", "words"), [
    ([{"name": "a", "secretRef": {"name": "h"}}] * 2, "target names must be unique"),
    ([{"name": "Ops", "secretRef": {"name": "h"}}], "should match pattern"),
    ([{"name": "a", "secretRef": {"name": "h"}, "format": "discord"}], "'json', 'slack'"),
    ([{"name": "a", "secretRef": {"name": "h"}, "states": ["Failed", "Failed"]}],
     "lists a state twice"),
    ([{"name": "a", "secretRef": {"name": "h"}, "states": ["Succeeded"],
       "succeededFor": ["ddl"]}], "not both"),
    ([{"name": "a", "secretRef": {"name": "h", "hmacKey": "a key with spaces"}}],
     "should match pattern"),
    ([{"name": "a", "secretRef": {"name": "h"}, "url": "https://hooks.example"}],
     "Extra inputs are not permitted"),
    ([{"name": f"t{i}", "secretRef": {"name": "h"}} for i in range(9)], "at most 8"),
])
def test_a_malformed_target_is_refused_with_readable_words(targets: list[dict[str, Any]],
                                                             words: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=words):
        _spec(*targets)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-Z_ ", min_size=0, max_size=45)
_raw_target = st.fixed_dictionaries({"name": _names, "secretRef": st.fixed_dictionaries(
    {"name": st.text(max_size=10)}, optional={"urlKey": _names, "hmacKey": _names})}, optional={
    "format": st.sampled_from(["json", "slack", "teams", "xml", ""]),
    "states": st.lists(st.sampled_from([s.value for s in S] + ["Done"]), max_size=14),
    "succeededFor": st.lists(st.sampled_from([r.value for r in RiskClass] + ["x"]),
                             max_size=6),
    "advice": st.one_of(st.booleans(), st.integers(), st.text(max_size=3))})


@settings(max_examples=300, deadline=None)
@given(st.lists(_raw_target, max_size=10))
def test_any_notifications_value_parses_or_is_refused_as_a_validation_error(
        raw: list[dict[str, Any]]) -> None:
    try:
        spec = _spec(*raw)
    except pydantic.ValidationError:
        return
    names = [t.name for t in spec.notifications]
    assert len(names) == len(set(names)) <= models.MAX_NOTIFICATION_TARGETS
    for target in spec.notifications:
        assert len(set(target.states)) == len(target.states)


# ---------------------------------------------------------------------- which states where


@pytest.mark.parametrize(("state", "risk", "sent"), [
    (S.PENDING_APPROVAL, RiskClass.MAINTENANCE, True),
    (S.FAILED, RiskClass.SESSION, True),
    (S.ROLLED_BACK, RiskClass.DDL, True),
    (S.SUCCEEDED, RiskClass.DDL, True),
    (S.SUCCEEDED, RiskClass.DESTRUCTIVE, True),
    (S.SUCCEEDED, RiskClass.MAINTENANCE, False),
    (S.SUCCEEDED, RiskClass.SESSION, False),
    (S.RUNNING, RiskClass.DDL, False),
    (S.EXPIRED, RiskClass.DDL, False),
    (S.RECOMMENDED, RiskClass.ADVICE, False),
])
def test_the_default_states_are_exactly_the_issue_s(state: S, risk: RiskClass,
                                                     sent: bool) -> None:
    assert notify.wanted(_target(), state, risk) is sent


def test_advice_only_on_request() -> None:
    assert notify.wanted(_target(advice=True), S.RECOMMENDED, RiskClass.ADVICE)
    assert not notify.wanted(_target(advice=True), S.OBSERVED, RiskClass.ADVICE)
    assert not notify.wanted(_target(), S.RECOMMENDED, RiskClass.ADVICE)
    assert not notify.wanted(_target(states=["Recommended"]), S.RECOMMENDED, RiskClass.ADVICE)


def test_succeeded_for_every_class_or_none() -> None:
    every = _target(states=["Succeeded"])
    none = _target(succeededFor=[])
    for risk in (RiskClass.MAINTENANCE, RiskClass.SESSION, RiskClass.DDL):
        assert notify.wanted(every, S.SUCCEEDED, risk)
        assert not notify.wanted(none, S.SUCCEEDED, risk)


def test_due_is_every_wanted_state_reached_and_not_recorded() -> None:
    obj = _remediation(S.FAILED, history=[S.PROPOSED, S.APPROVED, S.RUNNING, S.FAILED])
    assert [(t.name, s) for t, s in notify.due([_target()], obj, set())] == [("ops", S.FAILED)]
    assert notify.due([_target()], obj, {"Failed@ops"}) == []
    assert [s for _, s in notify.due([_target()], obj, {"Failed@other"})] == [S.FAILED]


def test_a_pending_approval_already_left_is_not_sent_any_more() -> None:
    obj = _remediation(S.SUCCEEDED, history=[S.PENDING_APPROVAL, S.APPROVED, S.SUCCEEDED])
    assert [s for _, s in notify.due([_target()], obj, set())] == [S.SUCCEEDED]
    pending = _remediation(S.PENDING_APPROVAL, history=[S.PROPOSED, S.PENDING_APPROVAL])
    assert [s for _, s in notify.due([_target()], pending, set())] == [S.PENDING_APPROVAL]


def test_an_unreadable_remediation_is_due_nothing() -> None:
    assert notify.due([_target()], {"spec": {"riskClass": "yolo"}, "status": {}}, set()) == []
    assert notify.due([_target()], {"spec": [], "status": "x"}, set()) == []


def test_the_record_round_trips_and_ignores_noise() -> None:
    pairs = {notify.pair(S.FAILED, "ops"), notify.pair(S.PENDING_APPROVAL, "chat")}
    text = notify.format_notified(pairs)
    assert text == "Failed@ops,PendingApproval@chat"
    assert notify.parse_notified(text + ", junk,,") == pairs
    assert notify.parse_notified(None) == set()


# ------------------------------------------------------------------------------ the message


def test_a_pending_approval_says_what_where_why_and_how_to_approve() -> None:
    msg = notify.message(_remediation(), S.PENDING_APPROVAL, notify.Place())
    doc = json.loads(notify.build(msg, models.NotificationFormat.JSON))
    assert doc["state"] == "PendingApproval"
    assert doc["remediation"] == {"namespace": "shop-ns", "name": "shop-0123456789",
                                  "monitor": "shop"}
    assert doc["action"] == "create_index" and doc["target"] == "public.orders"
    assert "1,200/s" in doc["why"] and doc["evidence"] == {"seq_scan_rate": "1200"}
    assert doc["approval"]["expiresAt"] == "2026-12-07T16:00:00Z"
    assert doc["approval"]["commands"] == [
        "kubectl patch rem shop-0123456789 -n shop-ns --type merge "
        "-p '{\"spec\":{\"approved\":true}}'",
        "startupmonkey approve shop-0123456789 --kube -n shop-ns --sql-hash abababababab"]
    local = notify.message(_remediation(), S.PENDING_APPROVAL,
                           notify.Place("unix:///run/sm/executor.sock"))
    assert local.approve == ["startupmonkey approve shop-0123456789 --executor "
                             "unix:///run/sm/executor.sock --sql-hash abababababab"]


def test_a_finished_one_says_what_was_run_and_the_figures() -> None:
    obj = _remediation(S.FAILED)
    obj["status"].update({"executedSql": ["CREATE INDEX CONCURRENTLY x"],
                          "before": {"n_dead_tup": 50_000.0}, "after": {"n_dead_tup": 0.0},
                          "message": "lock_timeout", "summary": "nothing changed"})
    doc = json.loads(notify.build(notify.message(obj, S.FAILED, notify.Place()),
                                  models.NotificationFormat.JSON))
    assert doc["executedSql"] == ["CREATE INDEX CONCURRENTLY x"]
    assert doc["before"] == {"n_dead_tup": 50000.0} and doc["after"] == {"n_dead_tup": 0.0}
    assert doc["summary"] == "nothing changed" and doc["message"] == "lock_timeout"
    assert "approval" not in doc


def _check_slack(body: dict[str, Any]) -> None:
    assert isinstance(body["text"], str) and body["text"]
    assert 1 <= len(body["blocks"]) <= 50
    for block in body["blocks"]:
        assert block["type"] == "section"
        assert block["text"]["type"] == "mrkdwn"
        assert 0 < len(block["text"]["text"]) <= notify.SLACK_SECTION_MAX


def _check_teams(body: dict[str, Any]) -> None:
    assert body["@type"] == "MessageCard"
    assert body["@context"] == "https://schema.org/extensions"
    assert isinstance(body["summary"], str) and body["summary"]
    assert len(body["themeColor"]) == 6
    for section in body["sections"]:
        for fact in section.get("facts", []):
            assert set(fact) == {"name", "value"} and all(isinstance(v, str)
                                                          for v in fact.values())


_text = st.text(max_size=20_000)
_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.text(max_size=5), st.none())
_any_remediation = st.fixed_dictionaries({
    "metadata": st.fixed_dictionaries({"namespace": st.text(max_size=70),
                                       "name": st.text(max_size=300)}),
    "spec": st.fixed_dictionaries({
        "monitor": _text, "action": _text, "riskClass": st.sampled_from(
            [r.value for r in RiskClass]), "detector": _text, "sql": _text,
        "rollbackSql": st.one_of(st.none(), _text), "sqlHash": _text, "summary": _text,
        "approvalExpiresAt": st.one_of(st.none(), _text),
        "evidence": st.dictionaries(st.text(max_size=300), st.text(max_size=5000),
                                    max_size=70),
        "target": st.dictionaries(st.sampled_from(["schema", "table", "index", "pid"]),
                                  st.one_of(_text, st.integers()))}),
    "status": st.fixed_dictionaries({
        "state": st.sampled_from([s.value for s in S]), "message": _text,
        "executedSql": st.lists(_text, max_size=20),
        "before": st.dictionaries(st.text(max_size=200), _number, max_size=80),
        "after": st.dictionaries(st.text(max_size=200), _number, max_size=80),
        "summary": _text, "benefit": _text})})


@settings(max_examples=150, deadline=None)
@given(_any_remediation, st.sampled_from(list(S)), st.booleans())
def test_any_remediation_gives_valid_bodies_below_40_kb(obj: dict[str, Any], state: S,
                                                        local: bool) -> None:
    place = notify.Place("unix:///x.sock" if local else None)
    msg = notify.message(obj, state, place)
    for fmt in models.NotificationFormat:
        raw = notify.build(msg, fmt)
        limit = notify.TEAMS_MAX_BODY if fmt is models.NotificationFormat.TEAMS \
            else notify.MAX_BODY
        assert len(raw) < limit, (fmt, len(raw))
        body = json.loads(raw)  # strict JSON: allow_nan=False when encoding
        if fmt is models.NotificationFormat.SLACK:
            _check_slack(body)
        elif fmt is models.NotificationFormat.TEAMS:
            _check_teams(body)
        else:
            assert body["state"] == state.value and body["version"] == 1


# ---------------------------------------------------------------------------- the signature


def test_the_signature_covers_timestamp_and_body() -> None:
    headers = notify.signature_headers(b"k3y", b'{"a":1}', now=1_700_000_000.5)
    assert headers[notify.TIMESTAMP_HEADER] == "1700000000"
    sig = headers[notify.SIGNATURE_HEADER]
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert notify.verify(b"k3y", "1700000000", b'{"a":1}', sig)
    assert not notify.verify(b"other", "1700000000", b'{"a":1}', sig)
    assert not notify.verify(b"k3y", "1700000001", b'{"a":1}', sig)
    assert not notify.verify(b"k3y", "1700000000", b'{"a":2}', sig)
    assert notify.signature_headers(None, b"x", 1.0) == {}


def test_backoff_doubles_up_to_its_bound() -> None:
    retry = notify.Retry(first_delay=2, max_delay=10)
    assert [retry.delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_the_default_retry_outlasts_a_few_minutes_of_outage() -> None:
    retry = notify.Retry()
    assert retry.delay(retry.attempts - 1) == retry.max_delay == 120  # the cap is reached
    assert 13 * 60 <= retry.budget() <= 16 * 60  # about 15 minutes, not 62 s
    assert notify.Retry(attempts=6).budget() == 2 + 4 + 8 + 16 + 32


def test_a_job_is_rejudged_against_the_freshest_copy_before_each_attempt() -> None:
    pending = _remediation(S.PENDING_APPROVAL)
    msg = notify.message(pending, S.PENDING_APPROVAL, notify.Place())
    job = notify.Job("shop-ns", "shop-0123456789", S.PENDING_APPROVAL,
                     notify.build(msg, models.NotificationFormat.JSON), msg.delivery_id)
    json_ = models.NotificationFormat.JSON
    assert notify.rejudge(pending, job, "ops", json_, notify.Place()) == job
    approved = _remediation(S.SUCCEEDED, history=[S.PENDING_APPROVAL, S.APPROVED, S.SUCCEEDED])
    assert notify.rejudge(approved, job, "ops", json_, notify.Place()) is None
    assert notify.rejudge(None, job, "ops", json_, notify.Place()) is None
    recorded = {**pending, "metadata": {**pending["metadata"], "annotations": {
        notify.ANNOTATION_NOTIFIED: "PendingApproval@ops"}}}
    assert notify.rejudge(recorded, job, "ops", json_, notify.Place()) is None
    assert notify.rejudge(recorded, job, "other", json_, notify.Place()) == job
    failed = _remediation(S.FAILED, history=[S.APPROVED, S.FAILED])
    fjob = notify.Job("shop-ns", "shop-0123456789", S.FAILED, b"{}", "x")
    rebuilt = notify.rejudge({**failed, "status": {**failed["status"], "message": "boom"}},
                             fjob, "ops", json_, notify.Place())
    assert rebuilt is not None and json.loads(rebuilt.body)["message"] == "boom"


def test_names_the_database_controls_cannot_format_or_inject() -> None:
    evil = "o[rd](http://x)*_`~|#\x00\x1b[31m\x85<!channel>&"
    obj = _remediation(S.FAILED, history=[S.APPROVED, S.FAILED],
                       target={"schema": "public", "table": evil},
                       sql=f"SELECT 1 FROM {evil}")
    msg = notify.message(obj, S.FAILED, notify.Place())
    for raw in (notify.build(msg, f) for f in models.NotificationFormat):
        text = raw.decode()
        for control in ("\x00", "\x1b", "\x85", "\\u0000", "\\u001b", "\\u0085"):
            assert control not in text, control  # C0/C1 stripped everywhere
    slack = json.loads(notify.build(msg, models.NotificationFormat.SLACK))
    assert "<!channel>" not in json.dumps(slack) and "&lt;!channel&gt;" in slack["text"]
    teams = json.loads(notify.build(msg, models.NotificationFormat.TEAMS))
    title = teams["sections"][0]["activityTitle"]
    assert "o\\[rd\\](http://x)\\*\\_\\`\\~\\|\\#" in title, title
    assert "&lt;!channel&gt;&amp;" in title
    assert all("<" not in f["value"] for f in teams["sections"][0]["facts"])


def test_a_body_that_grows_when_escaped_is_shrunk_to_fit_and_its_fence_closed() -> None:
    sql = "&<>" * 1300  # 3900 characters, 5x when escaped
    obj = _remediation(S.FAILED, history=[S.APPROVED, S.FAILED], sql=sql,
                       evidence={f"k{i}": "&" * 200 for i in range(16)})
    obj["status"]["executedSql"] = ["&" * 2000] * 4
    msg = notify.message(obj, S.FAILED, notify.Place())
    teams = notify.build(msg, models.NotificationFormat.TEAMS)
    assert len(notify.teams_body(msg).__repr__()) > notify.TEAMS_MAX_BODY  # it had to shrink
    assert len(teams) < notify.TEAMS_MAX_BODY
    assert "<pre>&amp;" in json.loads(teams)["sections"][1]["text"]  # the SQL is still there
    for fmt in models.NotificationFormat:
        assert len(notify.build(msg, fmt)) < notify.MAX_BODY
    for block in json.loads(notify.build(msg, models.NotificationFormat.SLACK))["blocks"]:
        text = block["text"]["text"]
        assert len(text) <= notify.SLACK_SECTION_MAX
        if "```" in text:
            assert text.count("```") == 2 and text.endswith("```"), text[-20:]
