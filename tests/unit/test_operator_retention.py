"""Remediation retention: finished ones only, by age and by count per monitor."""

from __future__ import annotations

import datetime
from typing import Any

from startupmonkey.operator import retention

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
HOUR = 3600.0


def rem(name: str, monitor: str, state: str, hours_ago: float,
        namespace: str = "prod") -> dict[str, Any]:
    when = (NOW - datetime.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "9",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"monitor": monitor},
            "status": {"state": state, "history": [{"state": state, "time": when}]}}


def victims(bodies: list[dict[str, Any]], count: int, max_age: float) -> set[str]:
    return {v.name for v in retention.select(map(retention.item, bodies), NOW, count, max_age)}


def test_old_finished_ones_go_open_ones_stay() -> None:
    bodies = [rem("old", "shop", "Succeeded", 48), rem("new", "shop", "Failed", 1),
              rem("waiting", "shop", "PendingApproval", 500),
              rem("running", "shop", "Running", 500)]
    assert victims(bodies, count=10, max_age=24 * HOUR) == {"old"}


def test_count_keeps_the_newest_per_monitor_and_namespace() -> None:
    bodies = [rem(f"a{i}", "shop", "Succeeded", i) for i in range(5)]
    bodies += [rem("b0", "billing", "Observed", 3), rem("c0", "shop", "Rejected", 9, "other")]
    assert victims(bodies, count=2, max_age=1000 * HOUR) == {"a2", "a3", "a4"}


def test_monitors_that_no_longer_exist_are_pruned_the_same_way() -> None:
    bodies = [rem("gone-1", "gone", "Expired", 30), rem("gone-2", "gone", "Recommended", 1)]
    assert victims(bodies, count=5, max_age=24 * HOUR) == {"gone-1"}


def test_last_change_falls_back_to_creation_and_unknown_states_are_open() -> None:
    no_history = {"metadata": {"name": "x", "namespace": "p", "resourceVersion": "1",
                               "creationTimestamp": "2026-01-01T00:00:00Z"},
                  "spec": {"monitor": "shop"}, "status": {"state": "Succeeded"}}
    weird = {**no_history, "metadata": {**no_history["metadata"], "name": "y"},
             "status": {"state": "Exploded"}}
    assert victims([no_history, weird], count=5, max_age=HOUR) == {"x"}
