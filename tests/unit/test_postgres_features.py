"""What is off on a server and why (issue 22, docs/postgres-support.md): derived from the
executor's ``status.database`` report, said in the DatabaseReachable condition and by
``startupmonkey run``."""

from __future__ import annotations

import pytest

from startupmonkey.models import monitor
from tests.unit import test_operator_status as operator_status

BOTH = ["hypopg", "pg_stat_statements"]


def status(**fields: object) -> monitor.DatabaseStatus:
    return monitor.DatabaseStatus.model_validate({"reachable": True, **fields})


@pytest.mark.parametrize(("version", "major"), [
    ("15.8", 15), ("13.23", 13), ("18.4 (Debian 18.4-1)", 18), ("16beta1", 16),
    ("19devel", 19), (None, None), ("", None)])
def test_server_major(version: str | None, major: int | None) -> None:
    assert monitor.server_major(version) == major


def test_nothing_is_off_with_both_extensions_and_every_privilege() -> None:
    assert status(serverVersion="17.2", extensions=BOTH).features_off() == []


def test_each_missing_piece_names_what_is_off_and_why() -> None:
    off = status(serverVersion="14.9", extensions=[],
                 privilegesMissing=["pg_read_all_stats", "pg_signal_backend"]).features_off()
    assert len(off) == 4, off
    assert off[0].startswith("missing_index, slow_statement") and "pg_stat_statements" in off[0]
    assert off[1].startswith("create_index") and "CREATE EXTENSION hypopg" in off[1]
    assert "lacks pg_read_all_stats" in off[2]
    assert off[3].startswith("cancel_query and terminate_session") and "pg_signal_backend" in off[3]


def test_versions_outside_the_supported_range_say_so() -> None:
    (old,) = status(serverVersion="12.9", extensions=BOTH).features_off()
    assert "PostgreSQL 12 is too old" in old and "13 to 18" in old
    (new,) = status(serverVersion="19.0", extensions=BOTH).features_off()
    assert "newer than the newest tested (18)" in new


def test_a_report_without_extensions_judges_none() -> None:
    assert status(serverVersion="15.8").features_off() == []


def test_the_database_reachable_condition_says_what_is_off() -> None:
    report = {**operator_status.reachable(), "serverVersion": "13.23",
              "extensions": ["pg_stat_statements"], "privilegesMissing": ["pg_signal_backend"]}
    conds = operator_status.by_type(operator_status.status.compute(
        operator_status.inputs(st={"database": report})))
    cond = conds["DatabaseReachable"]
    assert cond["status"] == "True"
    assert cond["message"].startswith(
        "reachable: PostgreSQL 13.23, primary; missing privileges: pg_signal_backend;")
    assert "off on this server: create_index: " in cond["message"]
    assert "cancel_query and terminate_session: " in cond["message"]
