"""The database's state in words (issue 21, item 2): one wording, :meth:`DatabaseStatus.
state_line`, for ``startupmonkey run`` and the DatabaseReachable/Ready conditions; run's lines
only when it changes, reminders at a doubling interval while it stays unreachable, giving up
after ``--give-up-after``; and the audit-log tail the run reads the executor's reports from."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import types
from pathlib import Path
from typing import Any, cast

import pytest

from startupmonkey import auditlog, runner
from startupmonkey.models.monitor import DatabaseMonitor, DatabaseStatus
from startupmonkey.operator import status as operator_status
from tests.unit import test_operator_status as operator_cases

REFUSED = ('connection failed: connection to server at "127.0.0.1", port 5999 failed: '
           "Connection refused Is the server running on that host and accepting TCP/IP "
           "connections?")
T0 = datetime.datetime(2026, 12, 6, 16, 40, 2, tzinfo=datetime.UTC)


def down(error: str | None = REFUSED) -> DatabaseStatus:
    return DatabaseStatus(reachable=False, last_error=error, checked_at=T0)


def up(**fields: Any) -> DatabaseStatus:
    return DatabaseStatus.model_validate({
        "reachable": True, "serverVersion": "15.8", "inRecovery": False,
        "extensions": ["hypopg", "pg_stat_statements"], **fields})


@pytest.mark.parametrize(("error", "words"), [
    (REFUSED, "connection refused"),
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: '
     'password authentication failed for user "shop"', "wrong password"),
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
     "fe_sendauth: no password supplied", "no password given"),
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: '
     'database "shop" does not exist', "the database does not exist"),
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: '
     'role "shop" does not exist', "the role does not exist"),
    ("failed to resolve host 'db.invalid': [Errno -2] Name or service not known",
     "host name not found"),
    ('connection is bad: connection to server on socket "/tmp/x/.s.PGSQL.5432" failed: No '
     "such file or directory Is the server running locally", "no server at that socket"),
    ('connection failed: connection to server at "10.0.0.9", port 5432 failed: timeout '
     "expired", "connection timed out"),
    ("FATAL: the database system is starting up", "the server is starting up"),
    ('FATAL: no pg_hba.conf entry for host "10.1.2.3", user "shop", database "shop"',
     "refused by the server's pg_hba.conf"),
])
def test_libpq_errors_in_a_few_words(error: str, words: str) -> None:
    assert down(error).problem() == words
    assert down(error).state_line() == f"unreachable: {words} ({error})"


def test_an_unknown_error_is_said_as_it_is() -> None:
    assert down("something new").problem() is None
    assert down("something new").state_line() == "unreachable: something new"
    assert down(None).state_line() == "unreachable: no detail reported"
    # Words equal to the whole error are not said twice.
    assert down("connection refused").state_line() == "unreachable: connection refused"
    assert up().problem() is None


def test_a_reachable_primary_with_everything_is_one_short_line() -> None:
    assert up().state_line() == "reachable: PostgreSQL 15.8, primary"
    assert up(inRecovery=None).state_line() == "reachable: PostgreSQL 15.8"


def test_a_standby_missing_privileges_and_features_off_are_said() -> None:
    line = up(inRecovery=True, extensions=["pg_stat_statements"],
              privilegesMissing=["pg_signal_backend"]).state_line()
    assert line.startswith("reachable: PostgreSQL 15.8, standby (in recovery): no action "
                           "runs on it; missing privileges: pg_signal_backend; off on this "
                           "server: create_index: "), line
    assert "cancel_query and terminate_session: the executor's role lacks " \
        "pg_signal_backend" in line


def test_the_conditions_carry_the_same_words() -> None:
    for report in (up(privilegesMissing=["pg_monitor"]), down()):
        wire = {**report.dump(), "checkedAt": operator_cases.NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}
        conds = operator_cases.by_type(operator_status.compute(
            operator_cases.inputs(st={"database": wire})))
        assert conds["DatabaseReachable"]["message"] == report.state_line()
        ready = conds["Ready"]["message"]
        if report.reachable:
            assert ready == ("collector, analyser, executor and event bus available; "
                             f"database {report.state_line()}")
        else:
            assert ready == f"DatabaseReachable: {report.state_line()}"


def test_a_line_only_when_the_words_change() -> None:
    state = runner.DatabaseState(started=0.0)
    assert state.update(down(), T0, 1.0) == f"database {down().state_line()}"
    assert state.update(down(), T0 + datetime.timedelta(seconds=5), 6.0) is None
    assert state.since == T0, "since: when the words last changed"
    assert state.update(up(), T0 + datetime.timedelta(seconds=9), 10.0) == \
        "database reachable: PostgreSQL 15.8, primary"
    assert state.update(up(checkedAt="2026-12-06T16:41:00Z"), T0, 11.0) is None
    assert state.ever_reachable and state.reminder(1000.0) is None


def test_reminders_double_up_to_the_cap_while_unreachable() -> None:
    state = runner.DatabaseState(started=0.0)
    state.update(down(), T0, 0.0)
    said = []
    for tick in range(200):  # the watch loop's one-second rounds
        line = state.reminder(float(tick))
        if line is not None:
            said.append(tick)
            assert line == (f"database still unreachable (connection refused) since "
                            f"{runner._clock(T0)}; retrying")
    assert said[:6] == [2, 6, 14, 30, 60, 90], said
    assert all(b - a == 30 for a, b in itertools.pairwise(said[4:])), said


def test_a_new_unreachable_wording_restarts_the_reminders_but_not_the_since() -> None:
    state = runner.DatabaseState(started=0.0)
    state.update(down(), T0, 0.0)
    assert state.reminder(2.0) is not None and state.reminder(5.0) is None
    later = T0 + datetime.timedelta(seconds=30)
    assert state.update(down("FATAL: the database system is starting up"), later, 30.0)
    assert state.reminder(31.0) is None
    line = state.reminder(32.0)
    assert line is not None and "(the server is starting up) since " \
        f"{runner._clock(T0)}" in line, line
    assert state.top_line(32.0).endswith(f"(since {runner._clock(later)}; retrying)")


def test_giving_up_only_when_never_reachable_within_the_time() -> None:
    state = runner.DatabaseState(started=100.0, give_up_after=5.0)
    assert state.give_up(104.0) is None
    assert state.give_up(105.0) == ("the database was not reachable within 5 s of the start "
                                    "(--give-up-after 5); no report on the database yet")
    state.update(down(), T0, 101.0)
    reminder = state.reminder(103.0)
    assert reminder is not None and reminder.endswith(
        "; retrying, giving up in 2 s (--give-up-after)"), reminder
    assert state.give_up(106.0) == ("the database was not reachable within 5 s of the start "
                                    f"(--give-up-after 5); database {down().state_line()}")
    once = runner.DatabaseState(started=100.0, give_up_after=5.0)
    once.update(up(), T0, 101.0)
    once.update(down(), T0, 102.0)
    assert once.give_up(1000.0) is None, "reachable once: it keeps retrying"
    assert runner.DatabaseState(started=0.0).give_up(1e9) is None, "default: never"


def test_a_wrong_password_says_where_the_password_came_from() -> None:
    state = runner.DatabaseState(0.0, password_source="the password comes from PGPASSWORD")
    wrong = down('FATAL: password authentication failed for user "shop"')
    assert state.update(wrong, T0, 0.0) == (
        f"database {wrong.state_line()}; the password comes from PGPASSWORD")
    assert state.update(down(), T0, 1.0) == f"database {down().state_line()}"


def test_the_live_view_top_line() -> None:
    state = runner.DatabaseState(0.0, give_up_after=60.0)
    assert state.top_line(0.0) == "Database: not checked yet"
    state.update(down(), T0, 0.0)
    assert state.top_line(10.0) == (f"Database: {down().state_line()}  (since "
                                    f"{runner._clock(T0)}; retrying, giving up in 50 s "
                                    "(--give-up-after))")
    state.update(up(), T0, 12.0)
    assert state.top_line(12.0) == ("Database: reachable: PostgreSQL 15.8, primary  "
                                    f"(since {runner._clock(T0)})")


def _database_entry(status: DatabaseStatus, at: datetime.datetime) -> dict[str, Any]:
    return {"time": at.isoformat(), "kind": "Database", "status": status.dump()}


def test_the_audit_log_tail_reads_only_new_whole_lines_and_survives_a_rewrite(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # The journal's times are to the second: a report in the run's first second is its own.
    reports = runner.DatabaseReports(path, after=T0 + datetime.timedelta(milliseconds=500))
    assert reports.new() == [], "no file yet"
    earlier = T0 - datetime.timedelta(hours=1)
    appender = auditlog.Appender(path)
    appender.append(_database_entry(up(), earlier))  # an earlier run's: not this one's
    appender.append({"time": T0.isoformat(), "kind": "Remediation", "object": {}})
    assert reports.new() == []
    appender.append(_database_entry(down(), T0))
    appender.append(_database_entry(up(), T0 + datetime.timedelta(seconds=1)))
    assert reports.new() == [(down(), T0), (up(), T0 + datetime.timedelta(seconds=1))]
    assert reports.new() == [], "nothing new: nothing read again"
    # A line still being written is read once it is whole.
    line = json.dumps(_database_entry(down(), T0 + datetime.timedelta(seconds=2))) + "\n"
    with path.open("a") as file:
        file.write(line[:40])
    assert reports.new() == []
    with path.open("a") as file:
        file.write(line[40:])
    assert reports.new() == [(down(), T0 + datetime.timedelta(seconds=2))]
    # The executor compacts at start: a new, shorter file renamed over the old one.
    auditlog.rewrite(path, [_database_entry(up(), T0 + datetime.timedelta(seconds=3))])
    assert reports.new() == [(up(), T0 + datetime.timedelta(seconds=3))]
    # Seen shorter than what was read (truncated in place): read from the start again.
    os.truncate(path, 0)
    assert reports.new() == []
    appender.append(_database_entry(down(), T0 + datetime.timedelta(seconds=4)))
    assert reports.new() == [(down(), T0 + datetime.timedelta(seconds=4))]


def _view(live: bool, protect: bool = True) -> runner.View:
    monitor_ = DatabaseMonitor.model_validate({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "shop", "namespace": "dev"},
        "spec": {"database": {"host": "127.0.0.1", "dbname": "shop",
                              "credentialsSecret": {"name": "unused"}},
                 "protect": {"superusers": protect}}})
    plane = cast(runner.LocalPlane, types.SimpleNamespace(monitor=monitor_))
    return runner.View(plane, live=live, database=runner.DatabaseState(0.0))


def _said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]


def test_plain_output_says_changes_reminders_and_a_late_superuser_note(
        capsys: pytest.CaptureFixture[str]) -> None:
    view = _view(live=False)
    view.on_database(down(), T0, 0.0)
    view.remind(1.0)
    view.remind(2.0)
    assert _said(capsys) == [f"database {down().state_line()}",
                             f"database still unreachable (connection refused) since "
                             f"{runner._clock(T0)}; retrying"]
    # Reachable later: the superuser notice not said at start is said once.
    with_superusers = up(superuserLogins=["postgres"])
    view.on_database(with_superusers, T0, 3.0)
    view.on_database(with_superusers, T0, 4.0)
    view.on_database(up(), T0, 5.0)
    view.on_database(with_superusers, T0, 6.0)
    notice = with_superusers.superuser_notice(True)
    assert _said(capsys) == ["database reachable: PostgreSQL 15.8, primary",
                             f"note: {notice}"]


def test_the_live_view_keeps_reminders_to_its_top_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    view = _view(live=True)
    view.on_database(down(), T0, 0.0)
    view.remind(2.0)
    assert capsys.readouterr().out == ""
    assert view.lines[-1].endswith(f"database {down().state_line()}"), view.lines
    assert len(view.lines) == 1
