"""How long the operator takes to reconcile 10, 100 and 300 DatabaseMonitors, and what it uses.

On the real local control plane of the e2e tier (``tests/support/controlplane.py``: etcd,
kube-apiserver, kube-controller-manager; binaries from ``bash hack/build-binaries.sh``), for
each size: a fresh namespace with one database Secret, a fresh ``startupmonkey operator
--namespace <it>`` (a subprocess, admin kubeconfig, default settings), then N monitors created
as fast as the API server takes them (Python client, one request each). Timed from the first
create until every monitor reports ``status.observedGeneration == metadata.generation`` with
all six conditions (the operator writes that only after applying every child), each monitor's
own time kept for the median; then one listing checks the children per monitor. Meanwhile the
operator's resident memory and CPU are sampled from /proc. The API server gets a /16 Service
range (:class:`WideControlPlane`): the tests' /24 runs out of ClusterIPs at about 84 monitors.

No kubelet or Deployment controller runs, so Deployments stay unavailable and ``Ready`` is
False (``Progressing``): what is timed is the operator's work, not pods starting.

    .venv/bin/python bench/operator_scale.py --quick      # 10 monitors
    .venv/bin/python bench/operator_scale.py              # 10, 100, 300

Writes ``bench/results/operator_scale.json`` (``operator_scale.quick.json`` with ``--quick``).
Aim (issue 13): 300 monitors reconciled within 60 s. Without the control-plane binaries this
records why it measured nothing (and exits 2 under ``CI=true``).
"""

from __future__ import annotations

import argparse
import collections
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
    port = controlplane.free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(EXE), "operator", "--namespace", namespace, "--liveness-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**cp.env(), "STARTUPMONKEY_OBSERVABILITY_PORT": str(controlplane.free_port())},
            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited: {log.read_text()[-2000:]}")
        if _live(port):
            return process, port
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


def measure(cp: controlplane.ControlPlane, api: kclient.ApiClient, size: int,
            workdir: Path) -> dict[str, Any]:
    namespace = cp.create_namespace(f"bench{size}")
    core, custom = kclient.CoreV1Api(api), kclient.CustomObjectsApi(api)
    core.create_namespaced_secret(namespace, kclient.V1Secret(
        metadata=kclient.V1ObjectMeta(name="db"),
        string_data={"username": "startupmonkey", "password": "bench-only"}))
    log = workdir / f"operator-{size}.log"
    process, _port = _start_operator(cp, namespace, log)
    budget = AIM_S + 2.0 * size
    try:
        idle = common.Sampler({"operator": process.pid}, period=0.5)
        with idle:
            time.sleep(3)
        with common.Sampler({"operator": process.pid}, period=0.5) as busy:
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
        children = _children(cp, namespace)
    finally:
        code = _stop(process)
        cp.delete_namespace(namespace, wait=False)
    errors = [line for line in log.read_text(errors="replace").splitlines()
              if '"error"' in line.lower() or "traceback" in line.lower()]
    times = sorted(done_at.values())
    return {
        "monitors": size,
        "reconciled": len(done_at),
        "create_seconds": round(created, 2),
        "all_reconciled_s": round(times[-1], 1) if len(times) == size else None,
        "per_monitor_s": common.summary(times, 1),
        "children_per_monitor": common.summary(
            [children.get(f"db{n:03d}", 0) for n in range(size)], 0),
        "operator_idle": idle.figures()["operator"],
        "operator_busy": busy.figures()["operator"],
        "operator_exit_code": code,
        "operator_log_errors": len(errors),
        "operator_log_error_samples": [line[:400] for line in errors[:3]],
    }


def _print(results: list[dict[str, Any]]) -> None:
    print(f"{'monitors':>8} {'created s':>9} {'all s':>7} {'median s':>8} {'children':>8} "
          f"{'rss MB':>7} {'peak MB':>7} {'cpu s':>6} {'cpu %':>6} {'errors':>6}")
    for r in results:
        busy = r["operator_busy"]
        print(f"{r['monitors']:>8} {r['create_seconds']:>9.1f} "
              f"{r['all_reconciled_s'] if r['all_reconciled_s'] is not None else '-':>7} "
              f"{r['per_monitor_s'].get('median', '-'):>8} "
              f"{r['children_per_monitor'].get('median', '-'):>8} "
              f"{busy['rss_mb']:>7} {busy['rss_peak_mb']:>7} {busy['cpu_seconds']:>6} "
              f"{busy['cpu_percent']:>6} {r['operator_log_errors']:>6}")
    print("all s: from the first create until every monitor has observedGeneration and its six "
          "conditions; rss/cpu: the operator meanwhile (cpu % of one core)")


def aims(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = [r for r in results if r["monitors"] == 300]
    return {"operator_300_monitors_reconciled_s": common.gap(
        at[0]["all_reconciled_s"] if at else None, AIM_S)}


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300])
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
            not_measured=[{"what": "operator scale (10/100/300 monitors)", "why": found}])
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
