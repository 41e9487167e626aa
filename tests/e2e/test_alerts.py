"""The chart's PrometheusRule and PodMonitors (docs/operator.md#alerts-and-dashboards).

helm renders them only when enabled and capable; promtool (built from its Go module by
hack/build-promtool.sh) loads the rendered rules and the dashboard's expressions and runs unit
tests of the alerts on series written here; every metric they name is exported by a component
(the registries, tests/support/promql.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey.operator import children, monitor
from tests.support.components import require
from tests.support.controlplane import Binaries
from tests.support.operator_helpers import CHART
from tests.unit.test_dashboard import dashboard_exprs, unknown_names

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
API = ("--api-versions", "monitoring.coreos.com/v1")


@pytest.fixture(scope="module")
def promtool() -> Path:
    """The cached promtool; skips (fails under CI=true) when it is not built."""
    path = Path(subprocess.run(["bash", str(ROOT / "hack" / "build-promtool.sh"),
                                "--print-path"], capture_output=True, text=True,
                               check=True).stdout.strip())
    if not os.access(path, os.X_OK):
        require("promtool", f"{path} is not built: run `bash hack/build-promtool.sh` (make test "
                "does; about 14 minutes cold on 2 cores, cached by version)")
    return path


def render(binaries: Binaries, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    env = {**os.environ, **{k: str(tmp_path / k) for k in
                            ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}}
    result = subprocess.run([str(binaries.helm), "template", "sm", str(CHART), *args],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1")


def the_rules(binaries: Binaries, tmp_path: Path, *sets: str) -> dict[str, Any]:
    docs = render(binaries, tmp_path, "--set", "monitoring.prometheusRule.enabled=true",
                  *[f"--set={s}" for s in sets])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def rule_exprs(spec: dict[str, Any]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in spec["groups"] for r in g["rules"]}


@pytest.mark.parametrize(("args", "expected"), [
    ((), []),
    (API, ["PodMonitor", "PodMonitor"]),
    (("--set", "monitoring.prometheusRule.enabled=auto"), []),
    (("--set", "monitoring.prometheusRule.enabled=auto", *API),
     ["PodMonitor", "PodMonitor", "PrometheusRule"]),
    (("--set", "monitoring.prometheusRule.enabled=true"), ["PrometheusRule"]),
    (("--set", "monitoring.podMonitors.enabled=true"), ["PodMonitor", "PodMonitor"]),
    (("--set", "monitoring.podMonitors.enabled=false", *API), []),
])
def test_rendered_only_when_enabled_and_the_api_exists(
        binaries: Binaries, tmp_path: Path, args: tuple[str, ...], expected: list[str]) -> None:
    assert kinds(render(binaries, tmp_path, *args)) == expected


def test_the_schema_refuses_a_wrong_switch(binaries: Binaries, tmp_path: Path) -> None:
    result = subprocess.run([str(binaries.helm), "template", "sm", str(CHART), "--set",
                             "monitoring.podMonitors.enabled=yes"], capture_output=True,
                            text=True, check=False, timeout=120,
                            env={**os.environ, "HELM_CACHE_HOME": str(tmp_path)})
    assert result.returncode != 0 and "monitoring" in result.stderr


def test_the_pod_monitors_select_the_pods_the_operator_and_the_chart_make(
        binaries: Binaries, tmp_path: Path) -> None:
    docs = render(binaries, tmp_path, *API, "--set", "monitoring.podMonitors.labels.release=kps")
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    data_plane = by_name["sm-startupmonkey-data-plane"]
    operator = by_name["sm-startupmonkey-operator"]
    assert data_plane["metadata"]["labels"]["release"] == "kps"
    view = monitor.parse({"metadata": {"name": "orders", "namespace": "db", "uid": "u"},
                          "spec": {}})
    selector = data_plane["spec"]["selector"]
    (components,) = [e["values"] for e in selector["matchExpressions"]
                     if e["key"] == monitor.LABEL_COMPONENT]
    for component in monitor.Component:
        labels = view.labels(component)
        chosen = (selector["matchLabels"].items() <= labels.items()
                  and labels[monitor.LABEL_COMPONENT] in components)
        assert chosen == (component in monitor.DATA_PLANE), component
        if chosen:
            ports = [p["name"] for p in children._ports(component)]
            assert data_plane["spec"]["podMetricsEndpoints"][0]["port"] in ports
    relabeled = {r["targetLabel"]: r["sourceLabels"][0]
                 for r in data_plane["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert relabeled == {"monitor": "__meta_kubernetes_pod_label_startupmonkey_dev_monitor",
                         "component": "__meta_kubernetes_pod_label_app_kubernetes_io_component"}
    assert data_plane["spec"]["namespaceSelector"] == {"any": True}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert operator["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c["ports"]]
    assert operator["spec"]["podMetricsEndpoints"][0]["port"] in ports
    scoped = render(binaries, tmp_path, *API, "--set", "watchNamespaces={db,shop}")
    (scoped_dp,) = [d for d in scoped if d["metadata"]["name"] == "sm-startupmonkey-data-plane"]
    assert scoped_dp["spec"]["namespaceSelector"] == {"matchNames": ["db", "shop"]}


def test_the_alerts_name_only_exported_metrics(binaries: Binaries, tmp_path: Path) -> None:
    exprs = rule_exprs(the_rules(binaries, tmp_path))
    assert set(exprs) == {"StartupMonkeyApprovalWaiting", "StartupMonkeyRemediationApprovalExpired",
                          "StartupMonkeyRemediationFailed", "StartupMonkeyDatabaseUnreachable",
                          "StartupMonkeyExecutorWithoutNats", "StartupMonkeySnapshotsDropped"}
    assert unknown_names(list(exprs.values())) == []


def check_rules(promtool: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_promtool_loads_the_rules_and_refuses_a_broken_one(
        promtool: Path, binaries: Binaries, tmp_path: Path) -> None:
    spec = the_rules(binaries, tmp_path, "monitoring.prometheusRule.eventWindow=1h")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    result = check_rules(promtool, rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
    spec["groups"][0]["rules"][1]["expr"] = "sum by (namespace (x_total)"
    rules.write_text(yaml.safe_dump(spec))
    broken = check_rules(promtool, rules)
    assert broken.returncode != 0 and "parse error" in broken.stderr


def test_promtool_loads_every_dashboard_expression(promtool: Path, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(recording))
    result = check_rules(promtool, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def annotations(spec: dict[str, Any], alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The annotations Prometheus renders for ``labels`` (the templates use only $labels)."""
    (rule,) = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert]

    def fill(match: re.Match[str]) -> str:
        return labels[match["label"]]  # a KeyError: the alert does not carry that label

    out = {k: re.sub(r"\{\{ \$labels\.(?P<label>\w+) \}\}", fill, v)
           for k, v in rule["annotations"].items()}
    assert not any("{{" in v for v in out.values()), out
    return out


def expect(spec: dict[str, Any], alert: str, *label_sets: dict[str, str]
           ) -> list[dict[str, Any]]:
    alerts = []
    for labels in label_sets:
        (rule,) = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == alert]
        alerts.append({"exp_labels": {**labels, **rule["labels"]},
                       "exp_annotations": annotations(spec, alert, labels)})
    return alerts


def test_promtool_unit_tests_of_the_alerts(promtool: Path, binaries: Binaries,
                                           tmp_path: Path) -> None:
    spec = the_rules(binaries, tmp_path)  # eventWindow 15m, dependencyDownFor 5m
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    orders = {"namespace": "db", "monitor": "orders"}
    shop = {"namespace": "db", "monitor": "shop"}

    def series(name: str, pod: str, component: str, values: str, **labels: str
               ) -> dict[str, str]:
        where = {**labels, "pod": pod, "component": component}
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(where.items()))
        return {"series": f"{name}{{{inner}}}", "values": values}

    def counter(name: str, pod: str, component: str, totals: str, created: str,
                **labels: str) -> list[dict[str, str]]:
        """A counter's ``_total`` samples and its ``_created`` (when the series began)."""
        return [series(f"{name}_total", pod, component, totals, **labels),
                series(f"{name}_created", pod, component, created, **labels)]

    remediations = "startupmonkey_executor_remediations"
    dropped = "startupmonkey_collector_snapshots_dropped"
    up = "startupmonkey_dependency_up"
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
        {"name": "Failed: a first Failed (a new series) and a later one; resolves",
         "interval": "1m",
         "input_series": [
             # orders' executor exports Failed only from its first one on, at 20m (1200 s),
             # with the time of that first one in _created
             *counter(remediations, "orders-executor-1", "executor", "_x19 1x40",
                      "_x19 1200x40", state="Failed", **orders),
             # shop's: 2 Failed long before (the first an hour before 0m), a third at 10m
             *counter(remediations, "shop-executor-1", "executor", "2x9 3x50", "-3600x60",
                      state="Failed", **shop),
             series(f"{remediations}_total", "shop-executor-1", "executor", "0+1x60",
                    state="Succeeded", **shop)],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "StartupMonkeyRemediationFailed",
              "exp_alerts": []},
             {"eval_time": "12m", "alertname": "StartupMonkeyRemediationFailed",
              "exp_alerts": expect(spec, "StartupMonkeyRemediationFailed", shop)},
             {"eval_time": "22m", "alertname": "StartupMonkeyRemediationFailed",
              "exp_alerts": expect(spec, "StartupMonkeyRemediationFailed", orders, shop)},
             {"eval_time": "50m", "alertname": "StartupMonkeyRemediationFailed",
              "exp_alerts": []}]},
        {"name": "database: down for 5m fires per pod; an executor up, NATS on the analyser",
         "interval": "1m",
         "input_series": [
             series(up, "orders-collector-1", "collector", "1x4 0x20 1x10",
                    dependency="database", **orders),
             series(up, "orders-executor-1", "executor", "1x40", dependency="database",
                    **orders),
             series(up, "orders-analyser-1", "analyser", "0x40", dependency="nats", **orders),
             series(up, "orders-executor-1", "executor", "1x9 0x30", dependency="nats",
                    **orders)],
         "alert_rule_test": [
             {"eval_time": "8m", "alertname": "StartupMonkeyDatabaseUnreachable",
              "exp_alerts": []},
             {"eval_time": "12m", "alertname": "StartupMonkeyDatabaseUnreachable",
              "exp_alerts": expect(spec, "StartupMonkeyDatabaseUnreachable",
                                   {**orders, "pod": "orders-collector-1",
                                    "component": "collector", "dependency": "database"})},
             {"eval_time": "30m", "alertname": "StartupMonkeyDatabaseUnreachable",
              "exp_alerts": []},
             {"eval_time": "16m", "alertname": "StartupMonkeyExecutorWithoutNats",
              "exp_alerts": expect(spec, "StartupMonkeyExecutorWithoutNats",
                                   {**orders, "pod": "orders-executor-1",
                                    "component": "executor", "dependency": "nats"})}]},
        {"name": "waiting for approval past half its time: per monitor, the largest share",
         "interval": "1m",
         "input_series": [
             # orders' executor: nothing waits, then one waits (0.1 a minute), then it is
             # answered; a second executor replica of orders reports nothing waiting
             series("startupmonkey_executor_approval_time_used_ratio", "orders-executor-1",
                    "executor", "0x4 0.1+0.1x9 0x10", **orders),
             series("startupmonkey_executor_approval_time_used_ratio", "orders-executor-2",
                    "executor", "0x25", **orders)],
         "alert_rule_test": [
             {"eval_time": "8m", "alertname": "StartupMonkeyApprovalWaiting",
              "exp_alerts": []},
             {"eval_time": "12m", "alertname": "StartupMonkeyApprovalWaiting",
              "exp_alerts": expect(spec, "StartupMonkeyApprovalWaiting", orders)},
             {"eval_time": "20m", "alertname": "StartupMonkeyApprovalWaiting",
              "exp_alerts": []}]},
        {"name": "expired approvals and dropped snapshots",
         "interval": "1m",
         "input_series": [
             *counter(remediations, "orders-executor-1", "executor", "_x29 1x20",
                      "_x29 1800x20", state="Expired", **orders),
             *counter(dropped, "orders-collector-1", "collector", "_x9 1+5x9 50x30",
                      "_x9 600x40", reason="buffer_full", **orders)],
         "alert_rule_test": [
             {"eval_time": "32m", "alertname": "StartupMonkeyRemediationApprovalExpired",
              "exp_alerts": expect(spec, "StartupMonkeyRemediationApprovalExpired", orders)},
             {"eval_time": "5m", "alertname": "StartupMonkeySnapshotsDropped",
              "exp_alerts": []},
             {"eval_time": "15m", "alertname": "StartupMonkeySnapshotsDropped",
              "exp_alerts": expect(spec, "StartupMonkeySnapshotsDropped",
                                   {**orders, "reason": "buffer_full"})},
             {"eval_time": "45m", "alertname": "StartupMonkeySnapshotsDropped",
              "exp_alerts": []}]},
    ]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, width=1000))
    result = subprocess.run([str(promtool), "test", "rules", "tests.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
