"""The operator as its e2e tests run it on the real API server, and the objects they share.

:class:`Operator` is one ``startupmonkey operator`` subprocess and its log; the fixtures that
start it (``operator_kubeconfig``, ``start_operator``, ``data_plane``) are in
``tests/e2e/conftest.py``, and :func:`spawn` starts it for all of them. The helpers here
make and read the monitor ``shop`` and its children (the Secret it names, the
DatabaseMonitor manifest, a Remediation) with ``kubectl``, and run the built ``helm``.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ControlPlane, free_port
from tests.support.eventually import wait_until

ROOT = Path(__file__).resolve().parents[2]
RBAC_MANIFEST = ROOT / "deploy" / "operator-rbac.yaml"
CHART = ROOT / "helm" / "startupmonkey"
EXE = Path(sys.executable).with_name("startupmonkey")
OPERATOR_NS = "startupmonkey"
OPERATOR_SA = "startupmonkey-operator"
COMPONENTS = ("collector", "analyser", "executor", "nats")
#: Short windows through the operator's real settings (never hidden knobs).
TEST_SETTINGS = {"STARTUPMONKEY_WATCHING_STATUS_INTERVAL": "2s",
                 "STARTUPMONKEY_WATCHING_RESYNC_INTERVAL": "10m",
                 "STARTUPMONKEY_IMAGES_DATA_PLANE": "registry.test/startupmonkey:e2e",
                 "STARTUPMONKEY_DELETION_POLL_INTERVAL": "1s"}


def die_with_the_tests() -> None:  # pragma: no cover - runs between fork and exec
    # If pytest is killed without teardown, the kernel stops the operator too (PDEATHSIG).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


class Operator:
    """One ``startupmonkey operator`` process and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, port: int,
                 observability_port: int | None = None) -> None:
        self.process, self.log, self.port = process, log, port
        #: STARTUPMONKEY_OBSERVABILITY_PORT: /metrics, /healthz, /readyz
        self.observability_port = observability_port

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError("the operator did not stop within 30s of SIGTERM") from None
        return int(self.process.returncode)


def spawn(cp: ControlPlane, kubeconfig: Path, namespace: str, log: Path, *,
          base: Mapping[str, str] | None = None, settings: Mapping[str, str] | None = None,
          die_with_pytest: bool = False) -> Operator:
    """Start ``startupmonkey operator --namespace <namespace>`` as ``kubeconfig`` (output in
    ``log``, free liveness and observability ports); its environment is ``base`` (the chart's
    env, say), then :data:`TEST_SETTINGS`, then ``settings``. Not waited for: see :func:`live`.
    ``die_with_pytest``: the kernel kills it if pytest dies without its teardown."""
    port, observability_port = free_port(), free_port()
    env = cp.env(kubeconfig)
    env.update(base or {})
    env.update(TEST_SETTINGS)
    env["STARTUPMONKEY_OBSERVABILITY_PORT"] = str(observability_port)
    env.update(settings or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(EXE), "operator", "--namespace", namespace, "--liveness-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_the_tests if die_with_pytest else None)
    return Operator(process, log, port, int(env["STARTUPMONKEY_OBSERVABILITY_PORT"]))


def live(op: Operator) -> bool:
    """True once the operator's liveness endpoint answers 200 (asserts it is still running)."""
    assert op.alive(), f"the operator exited:\n{op.text()[-3000:]}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError as exc:
        raise AssertionError(f"not live yet: {exc}") from None


def start_with_chart_env(cp: ControlPlane, kubeconfig: Path, namespace: str,
                         env_from_chart: list[dict[str, str]], log: Path) -> Operator:
    """The operator with the environment of the chart's Deployment, once it is live."""
    operator = spawn(cp, kubeconfig, namespace, log,
                     base={item["name"]: item.get("value", "") for item in env_from_chart})
    wait_until(lambda: live(operator), timeout=30, what="the operator's liveness endpoint")
    return operator


def monitor_manifest(namespace: str, name: str = "shop", **spec: Any) -> str:
    body: dict[str, Any] = {"database": {"host": "db.example", "dbname": "shop",
                                         "credentialsSecret": {"name": "shop-db"}}}
    body.update(spec)
    return yaml.safe_dump({"apiVersion": "startupmonkey.dev/v1alpha1",
                           "kind": "DatabaseMonitor",
                           "metadata": {"name": name, "namespace": namespace}, "spec": body})


def create_secret(cp: ControlPlane, namespace: str, name: str = "shop-db") -> None:
    cp.kubectl("create", "secret", "generic", name, "-n", namespace,
               "--from-literal=username=startupmonkey", "--from-literal=password=s3cret")


def get(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.kubectl_json("get", kind, name, "-n", namespace)
    return found


def exists(cp: ControlPlane, namespace: str, kind: str, name: str) -> bool:
    return cp.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0


CHILDREN = [("configmap", "shop-config"), ("secret", "shop-nats"),
            *[(k, f"shop-{c}") for k in ("deployment", "serviceaccount", "networkpolicy")
              for c in COMPONENTS],
            *[("service", f"shop-{c}") for c in ("analyser", "executor", "nats")],
            ("role", "shop-executor"), ("rolebinding", "shop-executor")]


def wait_for_children(cp: ControlPlane, namespace: str) -> None:
    def all_there() -> bool:
        missing = [f"{k}/{n}" for k, n in CHILDREN if not exists(cp, namespace, k, n)]
        assert not missing, f"missing: {missing}"
        return True

    wait_until(all_there, timeout=30, interval=0.5)


def remediation(namespace: str, name: str, monitor: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"startupmonkey.dev/monitor": monitor}},
            "spec": {"monitor": monitor, "detectionKey": f"k-{name}", "detectionId": "d" * 32,
                     "detector": "dead_tuples", "action": "vacuum", "riskClass": "maintenance",
                     "target": {"schema": "public", "table": "orders"},
                     "sql": 'VACUUM "public"."orders"', "sqlHash": "a" * 64}}


def helm(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the built helm against the control plane."""
    result = subprocess.run([str(cp.binaries.helm), *args], capture_output=True, text=True,
                            env=cp.env(), timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result
