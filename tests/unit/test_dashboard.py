"""deploy/grafana/startupmonkey.json names only metrics and labels some component exports.

The exported names come from the components' real registries (tests/support/promql.py), not
from grepping the source; the alert rules get the same check once helm has rendered them
(tests/e2e/test_alerts.py), and promtool parses both there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from startupmonkey.models import enums
from tests.support import promql

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "startupmonkey.json"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>[^,]+),\s*(?P<label>[A-Za-z_]+)\)$")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_exprs(node: Any) -> list[str]:
    """Every ``expr`` of every target, panels nested in rows included."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        for value in node.values():
            found += panel_exprs(value)
    elif isinstance(node, list):
        for value in node:
            found += panel_exprs(value)
    return found


def variable_selectors() -> list[tuple[str, str]]:
    """(selector, label) of each ``label_values(...)`` template variable."""
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) \
            else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {variable['name']}: not label_values(metric, label): {query}"
        out.append((match["selector"], match["label"]))
    return out


def dashboard_exprs() -> list[str]:
    """The dashboard's PromQL: panel targets and the variables' selectors."""
    return panel_exprs(dashboard()["panels"]) + [s for s, _ in variable_selectors()]


def unknown_names(exprs: list[str]) -> list[str]:
    """Problems: metrics no component exports, labels a metric does not have, remediation
    states that do not exist."""
    exported = promql.exported()
    states = {s.value for s in enums.RemediationState}
    problems = []
    for expr in exprs:
        for selector in promql.selectors(expr):
            if selector.metric not in exported:
                problems.append(f"{selector.metric!r} is exported by no component: {expr}")
                continue
            allowed = exported[selector.metric] | promql.TARGET_LABELS
            for label, _, value in selector.matchers:
                if label not in allowed:
                    problems.append(f"{selector.metric} has no label {label!r}: {expr}")
                if label == "state" and "remediations" in selector.metric:
                    problems += [f"no remediation state {v!r}: {expr}"
                                 for v in value.split("|") if v not in states]
    return problems


def test_every_panel_and_variable_names_an_exported_metric() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    assert unknown_names(exprs) == []


def test_the_check_sees_a_metric_no_component_exports() -> None:
    problems = unknown_names([
        'sum(rate(startupmonkey_executor_remediations{state="Failed"}[5m]))',
        "startupmonkey_collector_snapshots_dropped_total_total",
        'startupmonkey_dependency_up{dependecy="nats"}',
        'increase(startupmonkey_executor_remediations_total{state=~"Failed|Broken"}[1h])',
        "startupmonkey_collector_cycle_duration_seconds_bucket"])
    assert problems == [
        "'startupmonkey_executor_remediations' is exported by no component: "
        'sum(rate(startupmonkey_executor_remediations{state="Failed"}[5m]))',
        "'startupmonkey_collector_snapshots_dropped_total_total' is exported by no component: "
        "startupmonkey_collector_snapshots_dropped_total_total",
        "startupmonkey_dependency_up has no label 'dependecy': "
        'startupmonkey_dependency_up{dependecy="nats"}',
        "no remediation state 'Broken': "
        'increase(startupmonkey_executor_remediations_total{state=~"Failed|Broken"}[1h])']


def test_suffixes_follow_the_metric_type() -> None:
    exported = promql.exported()
    # counters scrape as _total, histograms as _bucket/_count/_sum, gauges as they are named
    assert "startupmonkey_executor_remediations_total" in exported
    assert "startupmonkey_executor_remediations" not in exported
    assert {"startupmonkey_collector_cycle_duration_seconds_bucket",
            "startupmonkey_collector_cycle_duration_seconds_count"} <= set(exported)
    assert "startupmonkey_collector_cycle_duration_seconds" not in exported
    assert exported["startupmonkey_dependency_up"] == {"dependency"}
    assert "le" in exported["startupmonkey_operator_reconcile_duration_seconds_bucket"]


@pytest.mark.parametrize(("expr", "metrics"), [
    ('sum by (state) (increase(a_total{state="x", n=~"$ns"}[1h]))', ["a_total"]),
    ("histogram_quantile(0.95, sum by (kind, le) (rate(b_bucket[5m])))", ["b_bucket"]),
    ("a - (b offset 12h or on (x) c * 0) >= 1 and bool d", ["a", "b", "c", "d"]),
    ('{__name__="e", s="}"} unless f', ["", "f"]),
])
def test_the_lexer_finds_the_metrics(expr: str, metrics: list[str]) -> None:
    assert [s.metric for s in promql.selectors(expr)] == metrics


def test_the_variables_select_by_namespace_and_monitor() -> None:
    labels = {label for _, label in variable_selectors()}
    assert labels == {"namespace", "monitor"}
    for expr in panel_exprs(dashboard()["panels"]):
        per_monitor = "startupmonkey_operator_" not in expr or "notification" in expr
        if per_monitor:  # the operator's own metrics are not one monitor's
            assert 'namespace=~"$namespace"' in expr, expr


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        cells = {(pos["x"] + dx, pos["y"] + dy)
                 for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
