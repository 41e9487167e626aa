"""The pure part of ``startupmonkey check`` (issue 21, item 1): what the manifest needs, how a
fact read from the server is judged, and the fix named for a libpq error. The reading itself is
tested on real servers in tests/integration/test_check.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from startupmonkey import check
from startupmonkey.models import monitor
from startupmonkey.models.enums import ActionId

DATABASE = monitor.DatabaseSpec.model_validate(
    {"host": "db.example", "port": 5432, "dbname": "shop", "credentialsSecret": {"name": "s"}})


def _spec(**fields: Any) -> monitor.DatabaseMonitorSpec:
    return monitor.DatabaseMonitorSpec.model_validate(
        {"database": DATABASE.model_dump(by_alias=True), **fields})


def _facts(**status: Any) -> check.Facts:
    report = monitor.DatabaseStatus.model_validate(
        {"reachable": True, "serverVersion": "16.4", "inRecovery": False,
         "extensions": ["hypopg", "pg_stat_statements"], **status})
    return check.Facts(status=report, settings={"track_counts": "on", "track_io_timing": "on"},
                       available={"hypopg", "pg_stat_statements"}, statements_readable=None,
                       statements_loaded=True, tables=[("public", "orders", True, False)])


def _levels(checks: list[check.Check]) -> dict[str, check.Level]:
    return {c.name: c.level for c in checks}


def test_observe_mode_needs_no_action_and_auto_mode_needs_them_all() -> None:
    observe, auto = _spec(mode="observe"), _spec(mode="auto")
    assert not any(check.action_needed(observe, a) for a in ActionId)
    needed = {a for a in ActionId if check.action_needed(auto, a)}
    # destructive drops are approval in auto mode: an approved drop runs, so it is needed
    assert needed == set(ActionId) - {ActionId.ADVICE}


def test_a_class_policy_and_a_disabled_detector_take_their_actions_out() -> None:
    spec = _spec(mode="auto", policy={"session": "observe"},
                 thresholds={"dead_tuples": {"enabled": False}})
    assert not check.action_needed(spec, ActionId.CANCEL_QUERY)
    assert not check.action_needed(spec, ActionId.TERMINATE_SESSION)
    assert not check.action_needed(spec, ActionId.VACUUM)
    assert check.action_needed(spec, ActionId.ANALYZE)


def test_a_fully_equipped_primary_is_all_ok() -> None:
    spec, facts = _spec(), _facts(privilegesMissing=[])
    checks = (check.server_checks(spec, facts) + check.collector_checks(facts, "sm")
              + check.executor_checks(spec, facts, "sm"))
    assert set(_levels(checks).values()) == {check.Level.OK}
    assert check.exit_code(checks) == 0


def test_what_the_executor_lacks_fails_in_auto_mode_and_warns_in_observe_mode() -> None:
    facts = _facts(privilegesMissing=["pg_signal_backend"])
    facts.tables = [("public", "orders", False, False)]
    auto = _levels(check.executor_checks(_spec(mode="auto"), facts, "sm"))
    observe = _levels(check.executor_checks(_spec(mode="observe"), facts, "sm"))
    assert auto == {"executor signals": check.Level.FAIL, "table ownership": check.Level.FAIL}
    assert observe == {"executor signals": check.Level.WARN,
                       "table ownership": check.Level.WARN}


def test_maintain_on_17_counts_for_vacuum_and_the_fix_says_so() -> None:
    facts = _facts(serverVersion="17.2", privilegesMissing=[])
    facts.tables = [("public", "a", False, True), ("public", "b", False, False)]
    (tables,) = [c for c in check.executor_checks(_spec(), facts, "sm")
                 if c.name == "table ownership"]
    assert tables.level is check.Level.WARN
    assert "may only VACUUM/ANALYZE 1" in tables.message and "public.b" in tables.message
    assert "GRANT MAINTAIN" in tables.fix
    facts.status = facts.status.model_copy(update={"server_version": "16.1"})
    (tables,) = [c for c in check.executor_checks(_spec(), facts, "sm")
                 if c.name == "table ownership"]
    assert "MAINTAIN" not in tables.fix


@pytest.mark.parametrize(("version", "level"), [("12.9", check.Level.FAIL),
                                                ("13.0", check.Level.OK),
                                                ("18.1", check.Level.OK),
                                                ("19beta1", check.Level.WARN)])
def test_the_version_is_judged_against_the_supported_majors(
        version: str, level: check.Level) -> None:
    checks = check.server_checks(_spec(), _facts(serverVersion=version))
    assert _levels(checks)["server version"] is level


@pytest.mark.parametrize(("error", "starts"), [
    ('FATAL: password authentication failed for user "x"', "give the password"),
    ('FATAL: role "x" does not exist', "create the role"),
    ('FATAL: database "shop" does not exist', "spec.database.dbname names no database"),
    ('FATAL: no pg_hba.conf entry for host "10.0.0.1"', "add a pg_hba.conf line"),
    ("Connection refused Is the server running", "nothing listens on db.example:5432"),
    ("could not translate host name \"db.example\" to address", "spec.database.host"),
    ("timeout expired", "db.example:5432 did not answer"),
    ("FATAL: sorry, too many clients already connections", "the server refuses new"),
])
def test_a_libpq_error_gets_the_fix_for_its_cause(error: str, starts: str) -> None:
    assert check.login_fix(error, DATABASE, "x").startswith(starts)


@given(st.text(max_size=500), st.text(min_size=1, max_size=63))
def test_any_error_text_gets_some_fix(error: str, user: str) -> None:
    fix = check.login_fix(error, DATABASE, user)
    assert isinstance(fix, str) and fix


@given(st.lists(st.builds(check.Check, name=st.text(max_size=30),
                          level=st.sampled_from(list(check.Level)),
                          message=st.text(max_size=200), fix=st.text(max_size=100)),
                max_size=20))
def test_the_exit_status_is_1_exactly_when_a_check_fails(checks: list[check.Check]) -> None:
    failed = any(c.level is check.Level.FAIL for c in checks)
    assert check.exit_code(checks) == (1 if failed else 0)
    text = check.render_text(checks)
    assert text.count("FAIL") >= sum(c.level is check.Level.FAIL for c in checks)


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_nats_url_is_shown_without_its_login(user: str, password: str) -> None:
    shown = check._redacted(f"nats://{user}:{password}@nats.example:4222")
    assert shown == "nats://nats.example:4222"


@given(checks=st.lists(st.builds(check.Check, name=st.text(max_size=30),
                                 level=st.sampled_from(list(check.Level)),
                                 message=st.text(max_size=2000), fix=st.text(max_size=600)),
                       max_size=25))
def test_a_pod_message_fits_the_kubelets_limit_and_keeps_every_check_and_level(
        checks: list[check.Check], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("message") / "termination-log"
    check.write_message(path, checks)
    text = path.read_text()
    back = check.read_message(text)
    assert [(c.name, c.level) for c in back] == [(c.name, c.level) for c in checks]
    if len(json.dumps([[c.name, c.level.value, "", ""] for c in checks],
                      separators=(",", ":")).encode()) <= check.MESSAGE_LIMIT - 200:
        assert len(text.encode()) <= check.MESSAGE_LIMIT
    assert all(b.message == c.message[:len(b.message)] for b, c in zip(back, checks, strict=True))


@pytest.mark.parametrize("fragment", sorted({f for f, _ in monitor.PROBLEM_WORDS}))
def test_every_problem_the_run_view_names_has_its_own_fix(fragment: str) -> None:
    """The run view and the DatabaseReachable condition name a libpq error's kind
    (models/monitor.py PROBLEM_WORDS); check must have a fix for each kind, not the catch-all."""
    fix = check.login_fix(f"connection failed: FATAL: {fragment}", DATABASE, "x")
    assert not fix.startswith("read the error above"), fragment


def test_in_a_pod_a_wrong_password_is_fixed_in_the_secret_not_with_pgpassword() -> None:
    error = 'FATAL: password authentication failed for user "x"'
    assert "PGPASSWORD" in check.login_fix(error, DATABASE, "x")
    in_pod = check.login_fix(error, DATABASE, "x", in_cluster=True)
    assert "PGPASSWORD" not in in_pod and "credentialsSecret" in in_pod


def test_a_loaded_library_needs_only_create_extension_whatever_the_role_may_read() -> None:
    """Loaded is read from pg_stat_statements.max, which any role may read: a role without
    pg_read_all_settings is not told to restart PostgreSQL for nothing."""
    facts = _facts(extensions=["hypopg"])
    facts.statements_readable = "not created"
    (statements,) = [c for c in check.server_checks(_spec(), facts)
                     if c.name == "pg_stat_statements"]
    assert statements.fix.startswith("CREATE EXTENSION pg_stat_statements;")
    facts.statements_loaded = False
    (statements,) = [c for c in check.server_checks(_spec(), facts)
                     if c.name == "pg_stat_statements"]
    assert "restart PostgreSQL" in statements.fix


def test_control_characters_from_the_catalog_cannot_fake_a_line() -> None:
    evil = check.Check("table ownership", check.Level.WARN,
                       "cannot maintain public.x\x1b[31mRED\nOK    everything", "fix\r")
    text = check.render_text([evil])
    assert "\x1b" not in text and "\r" not in text
    assert len(text.splitlines()) == 2  # the line and its fix, no forged third line
