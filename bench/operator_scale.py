"""How long the operator takes to reconcile 100, 300 and 1,000 DatabaseMonitors, and what it uses.

On the real local control plane of the e2e tier (``tests/support/controlplane.py``: etcd,
kube-apiserver, kube-controller-manager; binaries from ``bash hack/build-binaries.sh``), for
each size: a fresh namespace with one database Secret, a fresh ``startupmonkey operator
--namespace <it>`` (a subprocess, admin kubeconfig, default settings), then N monitors created
as fast as the API server takes them (Python client, one request each). Timed from the first
create until every monitor reports ``status.observedGeneration == metadata.generation`` with
all six conditions (the operator writes that only after applying every child), each monitor's
own time kept for the median; then one listing checks the children per monitor. Meanwhile the
operator's resident memory and CPU are sampled from /proc (the API server's and etcd's CPU
too: they share the cores), and the API request rate is read from the operator's own
``/metrics`` (its requests by method, and each handler's reconciles and requests per
reconcile) and from the API server's ``apiserver_request_total`` (every client). The load
average is recorded before and after each size. The API server gets a /16 Service range
(:class:`WideControlPlane`): the tests' /24 runs out of ClusterIPs at about 84 monitors.

No kubelet or Deployment controller runs, so Deployments stay unavailable and ``Ready`` is
False (``Progressing``): what is timed is the operator's work, not pods starting.

    .venv/bin/python bench/operator_scale.py --quick          # 10 monitors
    .venv/bin/python bench/operator_scale.py                  # 100, 300, 1000
    .venv/bin/python bench/operator_scale.py --sizes 1000     # one size

Writes ``bench/results/operator_scale.json`` (``operator_scale.quick.json`` with ``--quick``).
Aims: 300 monitors reconciled within 60 s (issue 13); 1,000 within 120 s with the operator's
peak RSS at most 250 MB (issue 19, item 5). Without the control-plane binaries this records
why it measured nothing (and exits 2 under ``CI=true``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import common
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig

from tests.support import controlplane

GROUP, VERSION, PLURAL = "startupmonkey.dev", "v1alpha1", "databasemonitors"
CONDITIONS = {"Ready", "CollectorAvailable", "AnalyserAvailable", "ExecutorAvailable",
              "EventBusAvailable", "DatabaseReachable"}
CHILD_KINDS = "configmaps,secrets,deployments,services,serviceaccounts,networkpolicies," \
              "roles,rolebindings"
LABEL_MONITOR = "startupmonkey.dev/monitor"
EXE = Path(sys.executable).with_name("startupmonkey")
AIM_S = 60.0
AIM_1000_S = 120.0
AIM_1000_RSS_MB = 250.0
SIZES = [100, 300, 1000]
TEST_SERVICE_RANGE = "10.0.0.0/24"
SERVICE_RANGE = "10.0.0.0/16"


class WideControlPlane(controlplane.ControlPlane):
    """The e2e tier's control plane with a /16 Service range instead of its /24.

    A /24 holds 254 ClusterIPs and every monitor has three Services (analyser, executor,
    NATS), so from about 84 monitors on the API server refuses Services ("failed to allocate
    a serviceIP: range is full") and the operator retries forever: a limit of the test
    cluster, not of the operator. The first address stays 10.0.0.1, which the serving
    certificate names.
    """

    widened = False

    def _spawn(self, name: str, argv: list[str]) -> None:
        if name == "kube-apiserver" and TEST_SERVICE_RANGE in argv:
            argv = [SERVICE_RANGE if arg == TEST_SERVICE_RANGE else arg for arg in argv]
            self.widened = True
        super()._spawn(name, argv)



def _monitor(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseMonitor",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"database": {"host": "db.example", "dbname": name,
                                  "credentialsSecret": {"name": "db"}}}}


def _reconciled(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    types = {c.get("type") for c in status.get("conditions", [])}
    return status.get("observedGeneration") == body["metadata"].get("generation") \
        and types >= CONDITIONS


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _start_operator(cp: controlplane.ControlPlane, namespace: str,
                    log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The operator and its observability port (``/metrics``)."""
    port, metrics_port = controlplane.free_port(), controlplane.free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(EXE), "operator", "--namespace", namespace, "--liveness-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**cp.env(), "STARTUPMONKEY_OBSERVABILITY_PORT": str(metrics_port)},
            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited: {log.read_text()[-2000:]}")
        if _live(port):
            return process, metrics_port
        time.sleep(0.2)
    _stop(process)
    raise TimeoutError("the operator's liveness endpoint did not answer within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def _children(cp: controlplane.ControlPlane, namespace: str) -> dict[str, int]:
    """Children per monitor, from one label-selected listing of every child kind."""
    out = cp.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", LABEL_MONITOR, "-o",
                     "jsonpath={range .items[*]}{.metadata.labels.startupmonkey\\.dev/monitor}"
                     "{\"\\n\"}{end}", timeout=120).stdout
    return dict(collections.Counter(line for line in out.splitlines() if line))


_SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} ([0-9.e+-]+)$')


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus text: (labels, value)."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', match.group(2)))
            found.append((labels, float(match.group(3))))
    return found


def _operator_metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def _apiserver_requests(cp: controlplane.ControlPlane) -> float | None:
    """Every request the API server has served (all clients), from its own metrics."""
    try:
        text = cp.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    except Exception:
        return None
    return sum(v for _, v in _samples(text, "apiserver_request_total"))


def _api_figures(text: str, seconds: float) -> dict[str, Any]:
    """The operator's API requests while reconciling, and each handler's cost."""
    by_method: dict[str, float] = {}
    for labels, value in _samples(text, "startupmonkey_operator_api_requests_total"):
        method = labels.get("method", "")
        by_method[method] = by_method.get(method, 0.0) + value
    total = sum(by_method.values())
    handlers: dict[str, dict[str, float]] = {}
    for suffix, key in (("_count", "reconciles"), ("_sum", "requests")):
        for labels, value in _samples(
                text, f"startupmonkey_operator_handler_reconcile_api_requests{suffix}"):
            handlers.setdefault(labels["handler"], {})[key] = value
    for labels, value in _samples(
            text, "startupmonkey_operator_handler_reconcile_duration_seconds_sum"):
        handlers.setdefault(labels["handler"], {})["seconds"] = round(value, 1)
    for labels, value in _samples(text, "startupmonkey_operator_reconciles_coalesced_total"):
        handlers.setdefault(labels["handler"], {})["coalesced"] = value
    for figures in handlers.values():
        if figures.get("reconciles"):
            figures["requests_per_reconcile"] = round(
                figures.get("requests", 0) / figures["reconciles"], 1)
    return {"operator_requests": int(total),
            "operator_requests_per_s": round(total / seconds, 1) if seconds else None,
            "operator_requests_by_method": {k: int(v) for k, v in sorted(by_method.items())},
            "handlers": handlers}


def _control_plane_pids(cp: controlplane.ControlPlane) -> dict[str, int]:
    procs = getattr(cp, "_procs", [])
    return {p.name: p.popen.pid for p in procs if p.name in ("kube-apiserver", "etcd")}


def measure(cp: controlplane.ControlPlane, api: kclient.ApiClient, size: int,
            workdir: Path) -> dict[str, Any]:
    namespace = cp.create_namespace(f"bench{size}")
    core, custom = kclient.CoreV1Api(api), kclient.CustomObjectsApi(api)
    core.create_namespaced_secret(namespace, kclient.V1Secret(
        metadata=kclient.V1ObjectMeta(name="db"),
        string_data={"username": "startupmonkey", "password": "bench-only"}))
    log = workdir / f"operator-{size}.log"
    process, metrics_port = _start_operator(cp, namespace, log)
    budget = AIM_S + 2.0 * size
    load_before = os.getloadavg()
    served_before = _apiserver_requests(cp)
    try:
        idle = common.Sampler({"operator": process.pid}, period=0.5)
        with idle:
            time.sleep(3)
        with common.Sampler({"operator": process.pid, **_control_plane_pids(cp)},
                            period=0.5) as busy:
            started = time.monotonic()
            for number in range(size):
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                       _monitor(namespace, f"db{number:03d}"))
            created = time.monotonic() - started
            done_at: dict[str, float] = {}
            while len(done_at) < size and time.monotonic() - started < budget:
                listing = cast(dict[str, Any], custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL))
                now = time.monotonic() - started
                for body in listing["items"]:
                    if body["metadata"]["name"] not in done_at and _reconciled(body):
                        done_at[body["metadata"]["name"]] = now
                if process.poll() is not None:
                    raise RuntimeError(f"the operator exited: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            metrics_text = _operator_metrics(metrics_port)
        served_after = _apiserver_requests(cp)
        load_after = os.getloadavg()
        children = _children(cp, namespace)
    finally:
        code = _stop(process)
        cp.delete_namespace(namespace, wait=False)
    errors = [line for line in log.read_text(errors="replace").splitlines()
              if '"error"' in line.lower() or "traceback" in line.lower()]
    times = sorted(done_at.values())
    figures = busy.figures()
    served = served_after - served_before \
        if served_before is not None and served_after is not None else None
    return {
        "monitors": size,
        "reconciled": len(done_at),
        "create_seconds": round(created, 2),
        "all_reconciled_s": round(times[-1], 1) if len(times) == size else None,
        "per_monitor_s": common.summary(times, 1),
        "children_per_monitor": common.summary(
            [children.get(f"db{n:03d}", 0) for n in range(size)], 0),
        "operator_idle": idle.figures()["operator"],
        "operator_busy": figures["operator"],
        "control_plane_busy": {k: v for k, v in figures.items() if k != "operator"},
        "seconds_sampled": round(elapsed, 1),
        "api": {**_api_figures(metrics_text, elapsed),
                "apiserver_requests_all_clients": int(served) if served is not None else None,
                "apiserver_requests_per_s_all_clients":
                    round(served / elapsed, 1) if served is not None and elapsed else None},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "operator_exit_code": code,
        "operator_log_errors": len(errors),
        "operator_log_error_samples": [line[:400] for line in errors[:3]],
    }


def _print(results: list[dict[str, Any]]) -> None:
    print(f"{'monitors':>8} {'created s':>9} {'all s':>7} {'median s':>8} {'children':>8} "
          f"{'rss MB':>7} {'peak MB':>7} {'cpu s':>6} {'cpu %':>6} {'req/s':>6} {'errors':>6}")
    for r in results:
        busy = r["operator_busy"]
        print(f"{r['monitors']:>8} {r['create_seconds']:>9.1f} "
              f"{r['all_reconciled_s'] if r['all_reconciled_s'] is not None else '-':>7} "
              f"{r['per_monitor_s'].get('median', '-'):>8} "
              f"{r['children_per_monitor'].get('median', '-'):>8} "
              f"{busy['rss_mb']:>7} {busy['rss_peak_mb']:>7} {busy['cpu_seconds']:>6} "
              f"{busy['cpu_percent']:>6} {r['api']['operator_requests_per_s'] or '-':>6} "
              f"{r['operator_log_errors']:>6}")
    print("all s: from the first create until every monitor has observedGeneration and its six "
          "conditions; rss/cpu: the operator meanwhile (cpu % of one core); req/s: the "
          "operator's API requests meanwhile (kopf's own excluded)")


def aims(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = {r["monitors"]: r for r in results}
    thousand = at.get(1000)
    return {"operator_300_monitors_reconciled_s": common.gap(
                at[300]["all_reconciled_s"] if 300 in at else None, AIM_S),
            "operator_1000_monitors_reconciled_s": common.gap(
                thousand["all_reconciled_s"] if thousand else None, AIM_1000_S),
            "operator_1000_monitors_rss_peak_mb": common.gap(
                thousand["operator_busy"].get("rss_peak_mb") if thousand else None,
                AIM_1000_RSS_MB)}


def limit_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's memory limit of the operator against 1.3 x its peak over every size."""
    values = yaml.safe_load((common.ROOT / "helm" / "startupmonkey" / "values.yaml").read_text())
    peaks = [r["operator_busy"]["rss_peak_mb"] for r in results
             if r["operator_busy"].get("rss_peak_mb") is not None]
    return [common.limit_check("operator pod (chart)", values["resources"]["limits"]["memory"],
                               max(peaks) if peaks else None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 monitors only")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/operator_scale[.quick].json")
    args = parser.parse_args(argv)
    args.output = args.output or common.result_path("operator_scale", args.quick)
    sizes = [10] if args.quick else args.sizes
    started = time.monotonic()
    found = controlplane.find_binaries()
    if isinstance(found, str):
        print(f"operator_scale: not measured: {found}", file=sys.stderr)
        common.publish(
            "operator_scale", quick=args.quick, started=started, output=args.output, results=[],
            not_measured=[{"what": "operator scale (100/300/1000 monitors)", "why": found}])
        return 2 if common.in_ci() else 0
    results = []
    with WideControlPlane(found) as cp, \
            tempfile.TemporaryDirectory(prefix="smbench-") as workdir:
        cp.apply_crds(sorted((common.ROOT / "crds").glob("*.yaml")))
        api = kconfig.new_client_from_config(config_file=str(cp.kubeconfig))
        versions = yaml.safe_load(cp.kubectl("version", "-o", "yaml").stdout)
        try:
            for size in sizes:
                print(f"reconciling {size} monitors...", file=sys.stderr, flush=True)
                results.append(measure(cp, api, size, Path(workdir)))
        finally:
            api.close()
    common.publish(
        "operator_scale", quick=args.quick, started=started, output=args.output,
        results=results, printer=_print,
        kubernetes=versions.get("serverVersion", {}).get("gitVersion"),
        service_cluster_ip_range=SERVICE_RANGE if cp.widened else TEST_SERVICE_RANGE,
        aims=aims(results), limits=limit_checks(results))
    common.print_limit_checks(limit_checks(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
