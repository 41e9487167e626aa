"""``status.databases`` and ``status.databasesReachable`` never go stale (review finding 2):
the executor sends both at every report, the home database unreachable too, and deletes both
(null in the merge patch) when no other database is acted in any more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
import psycopg
import pytest

from startupmonkey import observability
from startupmonkey.executor import journal, records
from startupmonkey.executor import kube as executor_kube
from startupmonkey.executor import main as executor_main
from startupmonkey.models import monitor
from tests.support import executor_helpers as helpers

A = {"name": "a", "reachable": True, "checkedAt": "2026-11-28T12:00:00Z"}
B = {"name": "b", "reachable": True, "checkedAt": "2026-11-28T12:00:00Z"}


async def _patches(reports: list[tuple[dict[str, Any], list[dict[str, Any]] | None]],
                   monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The merge patch bodies KubernetesStore.report_database sends for ``reports``."""
    sent: list[dict[str, Any]] = []
    store = executor_kube.KubernetesStore("prod", "shop", kubernetes.client.ApiClient())

    async def no_records(**_: Any) -> list[records.Record]:
        return []

    async def call(_function: Any, *args: Any, **_: Any) -> Any:
        sent.append(args[-1]["status"])
        return {}

    monkeypatch.setattr(store, "list", no_records)
    monkeypatch.setattr(store, "_call", call)
    try:
        for status, databases in reports:
            await store.report_database(status, databases)
    finally:
        store.client.close()
    return sent


async def test_the_home_database_unreachable_counts_in_the_patch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await _patches([({"reachable": True}, [A, B]),
                           ({"reachable": False, "lastError": "refused"}, [A, B])], monkeypatch)
    assert sent[0]["databasesReachable"] == "3/3"
    assert sent[1]["databasesReachable"] == "2/3", "the home database no longer answers"
    assert [e["name"] for e in sent[1]["databases"]] == ["a", "b"]
    assert sent[1]["database"]["reachable"] is False


async def test_an_emptied_list_deletes_both_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await _patches([({"reachable": True}, [A]), ({"reachable": True}, []),
                           ({"reachable": False}, [])], monkeypatch)
    for body in sent[1:]:
        assert "databases" in body and body["databases"] is None, body
        assert "databasesReachable" in body and body["databasesReachable"] is None, body
    assert "remediations" in sent[1], "the executor's other keys are still sent"
    assert sent[0]["databasesReachable"] == "2/2"


async def test_nothing_given_leaves_both_keys_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = await _patches([({"reachable": True}, None)], monkeypatch)
    assert "databases" not in sent[0] and "databasesReachable" not in sent[0]


class _Recorder:
    """A store that records the database reports only."""

    def __init__(self) -> None:
        self.reports: list[tuple[dict[str, Any], list[dict[str, Any]] | None]] = []

    async def report_database(self, status: dict[str, Any],
                              databases: list[dict[str, Any]] | None = None) -> None:
        self.reports.append((status, None if databases is None else list(databases)))


def _executor(tmp_path: Path, databases: list[str]) -> tuple[executor_main.Executor, _Recorder]:
    """An executor whose home database refuses every connection (nothing listens there)."""
    config = helpers.unreachable_config(tmp_path, databases)
    recorder = _Recorder()
    store: Any = recorder
    return executor_main.Executor(config, observability.Observability("executor"), store), \
        recorder


async def test_an_unreachable_home_database_sends_the_others_as_last_checked(
        tmp_path: Path) -> None:
    executor, recorder = _executor(tmp_path, ["a", "b"])
    executor._reach_names = ("a", "b")
    executor._reached = [A, B]
    with pytest.raises((psycopg.Error, OSError)):
        await executor.report_database()
    status, databases = recorder.reports[-1]
    assert status["reachable"] is False
    assert databases == [A, B]
    assert monitor.databases_reachable(
        status["reachable"], [monitor.DatabaseReach.model_validate(e) for e in databases]) \
        == "2/3"


async def test_an_emptied_list_is_reported_empty(tmp_path: Path) -> None:
    executor, recorder = _executor(tmp_path, [])
    executor._reach_names = ("a", "b")  # listed before a reload emptied the list
    executor._reached = [A, B]
    with pytest.raises((psycopg.Error, OSError)):
        await executor.report_database()
    assert recorder.reports[-1][1] == [], "empty: the store deletes both keys"


async def test_the_journal_keeps_no_list_when_given_an_empty_one(tmp_path: Path) -> None:
    store = journal.JournalStore(tmp_path / "audit.jsonl", "prod", "shop")
    await store.report_database({"reachable": True}, [A])
    assert store.databases == [A]
    await store.report_database({"reachable": True}, [])
    assert store.databases is None
