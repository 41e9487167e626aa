"""Run the Deployments the operator rendered as local processes (there is no kubelet here).

For each Deployment of a monitor this does what a kubelet and the cluster network would: the
container's command and args as given, env resolved (values, the pod name from the downward
API), every volume written to a private folder from the live ConfigMaps and Secrets (and kept
in sync, as a kubelet refreshes mounted ConfigMaps), Service DNS names mapped to loopback
ports, and the executor given a token minted for the ServiceAccount the operator created. The
only rewrites are those mappings: mount paths to the private folders, cluster addresses and
container ports to free loopback ports. A Deployment is marked available (its status patched)
only once the process's readiness endpoint says so.

Where a real pod adds nothing: fast tests of the operator's logic against the e2e control plane
(tests/e2e/test_events_kube.py runs the rendered NATS here, reached on loopback as after
``kubectl port-forward``). The full loop, crashes and approvals included, runs on real pods
from the image on a real kubelet (tests/pods, docs/control-plane.md#real-pods-issue-18).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane, free_port
from tests.support.eventually import wait_until

ORDER = ("nats", "analyser", "executor", "collector")
BIN = Path(sys.executable).parent


@dataclasses.dataclass
class LocalPod:
    """One Deployment running as a process."""

    deployment: str
    component: str
    root: Path
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # container port name -> local port
    files: dict[Path, tuple[str, str, str | None]]  # local path -> (kind, name, key)
    mounts: dict[str, Path] = dataclasses.field(default_factory=dict)  # mountPath -> local
    container_ports: dict[str, int] = dataclasses.field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.component} exited:\n{self.tail()}"
        port, path = ((self.ports["monitoring"], "/healthz") if self.component == "nats"
                      else (self.ports["observability"], "/readyz"))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class DataPlane:
    """Every Deployment of one monitor, run locally."""

    def __init__(self, cp: ControlPlane, namespace: str, monitor: str, workdir: Path) -> None:
        self.cp = cp
        self.namespace = namespace
        self.monitor = monitor
        self.workdir = workdir
        self.pods: dict[str, LocalPod] = {}
        self.addresses: dict[str, str] = {}
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    def _items(self, kind: str) -> list[dict[str, Any]]:
        selector = f"startupmonkey.dev/monitor={self.monitor}"
        listing: dict[str, Any] = self.cp.kubectl_json("get", kind, "-n", self.namespace,
                                                       "-l", selector)
        return list(listing["items"])

    def _data(self, kind: str, name: str) -> dict[str, str]:
        obj = self.cp.kubectl_json("get", kind, name, "-n", self.namespace)
        data = obj.get("data") or {}
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return dict(data)

    def start(self, timeout: float = 60.0) -> None:
        """Start every component in dependency order, each marked available once ready."""
        deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                       for d in self._items("deployments")}
        services = self._items("services")
        local_ports = {c: {p["name"]: free_port() for p in d["spec"]["template"]["spec"]
                           ["containers"][0].get("ports", [])}
                       for c, d in deployments.items()}
        for service in services:
            owner = next(c for c, d in deployments.items()
                         if _selects(service, d))
            for port in service["spec"]["ports"]:
                local = local_ports[owner][str(port["targetPort"])]
                name = service["metadata"]["name"]
                for host in (f"{name}.{self.namespace}.svc.cluster.local",
                             f"{name}.{self.namespace}.svc", name):
                    self.addresses[f"{host}:{port['port']}"] = f"127.0.0.1:{local}"
        try:
            for component in ORDER:
                if component in deployments:
                    pod = self._prepare(component, deployments[component],
                                        local_ports[component])
                    self.pods[component] = pod
                    self._write_files(pod)
                    pod.start()
                    self._wait_ready(pod, timeout)
        except BaseException:
            self.stop()  # the pods already started would outlive a failed start otherwise
            raise
        self._syncer = threading.Thread(target=self._sync_loop, daemon=True)
        self._syncer.start()

    def _prepare(self, component: str, deployment: dict[str, Any],
                 ports: dict[str, int]) -> LocalPod:
        name = deployment["metadata"]["name"]
        root = self.workdir / component
        root.mkdir(parents=True, exist_ok=True)
        pod_spec = deployment["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        files: dict[Path, tuple[str, str, str | None]] = {}
        mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            local = root / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
            volume = volumes[mount["name"]]
            for kind, field, ref in (("configmap", "configMap", "name"),
                                     ("secret", "secret", "secretName")):
                if field in volume:
                    source = volume[field]
                    for item in source.get("items", []):
                        files[local / item["path"]] = (kind, source[ref], item["key"])
                    if not source.get("items"):
                        files[local] = (kind, source[ref], None)
        container_ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        pod = LocalPod(name, component, root, [], {}, ports, files, mounts, container_ports)
        pod.argv = [self._rewrite(arg, pod, mounts, container_ports)
                    for arg in container["command"] + container.get("args", [])]
        pod.argv[0] = str(BIN / pod.argv[0]) if (BIN / pod.argv[0]).exists() else pod.argv[0]
        pod.env = self._env(container, pod, pod_spec)
        return pod

    def _rewrite(self, text: str, pod: LocalPod, mounts: dict[str, Path],
                 container_ports: dict[str, int]) -> str:
        """One pass over ``text`` (so a replacement is never replaced again)."""
        mapping: dict[str, str] = dict(self.addresses)
        mapping.update({path: str(local) for path, local in mounts.items()})
        for name, port in container_ports.items():
            mapping[f"0.0.0.0:{port}"] = f"127.0.0.1:{pod.ports[name]}"
            mapping[f"port: {port}\n"] = f"port: {pod.ports[name]}\n"
            if text == str(port):
                return str(pod.ports[name])
        pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len,
                                                                  reverse=True)))
        return pattern.sub(lambda m: mapping[m.group(0)], text)

    def _env(self, container: dict[str, Any], pod: LocalPod,
             pod_spec: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(pod.root),
               "GRPC_ENABLE_FORK_SUPPORT": "false"}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == \
                    "metadata.name":
                env[item["name"]] = f"{pod.deployment}-local"
        if pod_spec.get("automountServiceAccountToken"):
            account = pod_spec["serviceAccountName"]
            token = self.cp.mint_token(self.namespace, account)
            env["KUBECONFIG"] = str(self.cp.kubeconfig_for_token(
                token, pod.root / "kubeconfig", self.namespace))
        return env

    def _write_files(self, pod: LocalPod) -> bool:
        changed = False
        cache: dict[tuple[str, str], dict[str, str]] = {}
        for path, (kind, name, key) in pod.files.items():
            data = cache.setdefault((kind, name), self._data(kind, name))
            targets = {path: data[key]} if key is not None else {
                path / k: v for k, v in data.items()}
            for target, content in targets.items():
                text = self._rewrite(content, pod, pod.mounts, pod.container_ports)
                if not target.exists() or target.read_text() != text:
                    target.write_text(text)
                    target.chmod(0o400 if kind == "secret" else 0o644)
                    changed = True
        return changed

    def _sync_loop(self) -> None:
        while not self._stop.wait(1.0):
            for pod in list(self.pods.values()):
                with contextlib.suppress(Exception):
                    self._write_files(pod)

    def _wait_ready(self, pod: LocalPod, timeout: float) -> None:
        wait_until(pod.ready, timeout=timeout, what=f"{pod.component} ready")
        self.cp.mark_deployment_available(self.namespace, pod.deployment)

    def stop(self) -> None:
        """SIGTERM every process (reverse order), then SIGKILL what lingers."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5)
        for component in reversed(ORDER):
            if component in self.pods:
                self.pods[component].kill(signal.SIGTERM)


def _selects(service: dict[str, Any], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"].get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
