"""A real Kubernetes control plane for the e2e tests, run as local processes.

etcd, kube-apiserver and kube-controller-manager (only the garbage-collector, namespace and
service-account-token controllers) run on free ports of 127.0.0.1 in a temporary directory,
the way controller-runtime's envtest does it. The binaries are built from Go modules by
``hack/build-binaries.sh`` into a cache outside the clone; this module only finds and runs
them (never builds: that belongs in ``.ci/run``). See ``docs/control-plane.md``.

Certificates (a CA, the API server's serving certificate, an admin client certificate with
``O=system:masters`` and the service-account signing key pair) are generated with the
``openssl`` command-line tool, which is part of the machine image; the ``cryptography``
package is not a dependency of this project.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
BUILD_HINT = "bash hack/build-binaries.sh"

# Set to 1 to keep the temp dir (logs, certs, etcd data) after stop() for debugging.
KEEP_ENV = "STARTUPMONKEY_KEEP_CONTROLPLANE"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, or a helper call failed."""


class KubectlError(ControlPlaneError):
    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip() or stdout.strip()}"
        )


# --------------------------------------------------------------------------- binaries


def pinned_versions() -> dict[str, str]:
    """The versions pinned in hack/build-binaries.sh (the single source of truth)."""
    text = BUILD_SCRIPT.read_text()
    out = {}
    for key in ("K8S_VERSION", "ETCD_VERSION", "HELM_VERSION"):
        m = re.search(rf"^{key}=(\S+)$", text, re.MULTILINE)
        if not m:
            raise ControlPlaneError(f"{BUILD_SCRIPT} does not pin {key}")
        out[key] = m.group(1)
    return out


def cache_root() -> Path:
    """Same rule as the build script: $STARTUPMONKEY_CACHE, else $XDG_CACHE_HOME/startupmonkey,
    else ~/.cache/startupmonkey."""
    explicit = os.environ.get("STARTUPMONKEY_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "startupmonkey"


@dataclass(frozen=True)
class Binaries:
    k8s_dir: Path
    etcd_dir: Path
    helm_dir: Path
    k8s_version: str
    etcd_version: str
    helm_version: str

    @property
    def etcd(self) -> Path:
        return self.etcd_dir / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.k8s_dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.k8s_dir / "kube-controller-manager"

    @property
    def kubectl(self) -> Path:
        return self.k8s_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.helm_dir / "helm"

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.etcd, self.kube_apiserver, self.kube_controller_manager, self.kubectl,
                self.helm)

    @property
    def path_dirs(self) -> list[str]:
        return [str(self.k8s_dir), str(self.etcd_dir), str(self.helm_dir)]

    def path_env(self, base: str | None = None) -> str:
        """A PATH with the built binaries first."""
        rest = os.environ.get("PATH", "") if base is None else base
        return os.pathsep.join([*self.path_dirs, rest]) if rest else os.pathsep.join(
            self.path_dirs)


def find_binaries() -> Binaries | str:
    """Locate the built binaries in the cache.

    Returns a :class:`Binaries` when every binary is there and executable, otherwise a
    message (a ``str``) saying what is missing and to run ``bash hack/build-binaries.sh``.
    """
    v = pinned_versions()
    root = cache_root() / "bin"
    b = Binaries(
        k8s_dir=root / f"k8s-{v['K8S_VERSION']}",
        etcd_dir=root / f"etcd-{v['ETCD_VERSION']}",
        helm_dir=root / f"helm-{v['HELM_VERSION']}",
        k8s_version=v["K8S_VERSION"],
        etcd_version=v["ETCD_VERSION"],
        helm_version=v["HELM_VERSION"],
    )
    missing = [str(p) for p in b.all if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        return (
            "control-plane binaries missing: " + ", ".join(missing)
            + f". Build them (once, cached outside the clone) with `{BUILD_HINT}`"
            + " (takes 10-30 minutes cold on 2 cores; STARTUPMONKEY_CACHE picks the cache dir)."
        )
    return b


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("the `openssl` command is needed to generate test certificates")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _ec_key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=cwd)


def _issue(cwd: Path, name: str, subject: str, exts: Sequence[str]) -> None:
    """Key ``name.key`` and certificate ``name.crt`` signed by ``ca.crt``/``ca.key``."""
    _ec_key(cwd / f"{name}.key", cwd)
    args = ["req", "-new", "-x509", "-key", f"{name}.key", "-out", f"{name}.crt",
            "-days", "7", "-subj", subject, "-CA", "ca.crt", "-CAkey", "ca.key"]
    for ext in exts:
        args += ["-addext", ext]
    _openssl(*args, cwd=cwd)


def generate_pki(d: Path) -> None:
    """CA, API server serving cert, admin client cert, service-account key pair in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _ec_key(d / "ca.key", d)
    _openssl("req", "-new", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "7",
             "-subj", "/CN=startupmonkey-e2e-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)
    _issue(d, "apiserver", "/CN=kube-apiserver", [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth",
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc",
    ])
    _issue(d, "admin", "/O=system:masters/CN=startupmonkey-e2e-admin", [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=clientAuth",
    ])
    _ec_key(d / "sa.key", d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the test process dies without cleaning up (SIGKILL, os._exit from a hard timeout),
    # the kernel kills the child too. PR_SET_PDEATHSIG = 1.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            self.log.flush()
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""


# --------------------------------------------------------------------------- control plane


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (stop is idempotent and
    always kills every process group started and removes the temp dir).
    """

    def __init__(self, binaries: Binaries | None = None) -> None:
        if binaries is None:
            found = find_binaries()
            if isinstance(found, str):
                raise ControlPlaneError(found)
            binaries = found
        self.binaries = binaries
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()
        self.tmpdir: Path | None = None
        self.etcd_port = 0
        self.apiserver_port = 0
        self.kcm_port = 0
        self.start_seconds: float | None = None

    # ---- paths and environment

    def _dir(self) -> Path:
        if self.tmpdir is None:
            raise ControlPlaneError("control plane is not started")
        return self.tmpdir

    @property
    def pki(self) -> Path:
        return self._dir() / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self._dir() / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def env(self, kubeconfig: Path | str | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for child processes: built binaries first on PATH, KUBECONFIG, and
        kubectl/helm caches inside the temp dir (nothing written to $HOME)."""
        env = dict(os.environ if base is None else base)
        d = self._dir()
        env["PATH"] = self.binaries.path_env(env.get("PATH", ""))
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["KUBECACHEDIR"] = str(d / "kubecache")
        env["HELM_CACHE_HOME"] = str(d / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(d / "helm" / "config")
        env["HELM_DATA_HOME"] = str(d / "helm" / "data")
        return env

    # ---- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> ControlPlane:
        if self.tmpdir is not None:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.tmpdir = Path(tempfile.mkdtemp(prefix="startupmonkey-cp-"))
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start(self, deadline: float) -> None:
        d = self._dir()
        generate_pki(self.pki)
        self.etcd_port, etcd_peer, self.apiserver_port, self.kcm_port = (
            free_port(), free_port(), free_port(), free_port())
        self._write_admin_kubeconfig()

        peer = f"http://127.0.0.1:{etcd_peer}"
        self._spawn("etcd", [
            str(self.binaries.etcd),
            "--name", "e2e",
            "--data-dir", str(d / "etcd"),
            "--listen-client-urls", self.etcd_url,
            "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"e2e={peer}",
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ])
        self._wait_http("etcd", f"{self.etcd_url}/health", deadline, check_etcd=True)

        pki = self.pki
        self._spawn("kube-apiserver", [
            str(self.binaries.kube_apiserver),
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            # Since 1.37 the lease/master-count reconcilers refuse a loopback address for the
            # `kubernetes` Service's endpoints ("may not be in the loopback range"); nothing in
            # this cluster (no Pods, no kubelet) uses those endpoints.
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(self.apiserver_port),
            "--cert-dir", str(d / "apiserver-certs"),
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--authorization-mode", "RBAC",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--service-account-issuer", f"{self.server}/",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--disable-admission-plugins", "ServiceAccount",
            "--allow-privileged",
            "--v", "1",
        ])
        self._wait_http("kube-apiserver", f"{self.server}/healthz", deadline)

        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager),
            "--kubeconfig", str(self.kubeconfig),
            "--authentication-kubeconfig", str(self.kubeconfig),
            "--authorization-kubeconfig", str(self.kubeconfig),
            # Canonical names since 1.28 of the aliases garbagecollector, namespace and
            # serviceaccount-token (the aliases still work in 1.37).
            "--controllers",
            "garbage-collector-controller,namespace-controller,serviceaccount-token-controller",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", str(self.kcm_port),
            "--cert-dir", str(d / "kcm-certs"),
            "--v", "1",
        ])
        self._wait_http("kube-controller-manager", f"https://127.0.0.1:{self.kcm_port}/healthz",
                        deadline, verify=False)

    def stop(self) -> None:
        """Kill every process group started (TERM, then KILL) and remove the temp dir."""
        with self._lock:
            procs, self._procs = self._procs, []
            # One at a time, in reverse start order: TERM to etcd while kube-apiserver is
            # still shutting down makes the API server hang until it is killed.
            for p in reversed(procs):
                _kill_group(p.popen, signal.SIGTERM)
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_group(p.popen, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.popen.wait(timeout=10)
                p.log.close()
            tmp, self.tmpdir = self.tmpdir, None
            if tmp is not None:
                if os.environ.get(KEEP_ENV) == "1":
                    print(f"control plane temp dir kept: {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._procs]

    # ---- internals

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self._dir() / f"{name}.log"
        log = log_path.open("wb")
        preexec = _set_pdeathsig if threading.current_thread() is threading.main_thread() \
            else None
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self._dir(), env=self.env(), start_new_session=True,
                preexec_fn=preexec,
            )
        except BaseException:
            log.close()
            raise
        self._procs.append(_Proc(name, popen, log_path, log))

    def _proc(self, name: str) -> _Proc:
        return next(p for p in self._procs if p.name == name)

    def _ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _wait_http(self, name: str, url: str, deadline: float, verify: bool = True,
                   check_etcd: bool = False) -> None:
        proc = self._proc(name)
        ctx = self._ssl_context(verify) if url.startswith("https") else None
        last = "no answer yet"
        while True:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.popen.returncode} while starting; "
                    f"last log lines:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    body = resp.read().decode(errors="replace")
                    if resp.status == 200 and (
                            not check_etcd or json.loads(body).get("health") == "true"):
                        return
                    last = f"HTTP {resp.status}: {body[:300]}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"
                e.close()
            except (OSError, ValueError) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready at {url} in time ({last}); last log lines:\n"
                    f"{proc.tail()}")
            time.sleep(0.2)

    def _kubeconfig_doc(self, user: dict[str, Any], name: str,
                        namespace: str | None = None) -> dict[str, Any]:
        context: dict[str, Any] = {"cluster": "e2e", "user": name}
        if namespace:
            context["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "e2e", "cluster": {
                "server": self.server,
                "certificate-authority-data": _b64(self.ca_file),
            }}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": context}],
            "current-context": name,
        }

    def _write_admin_kubeconfig(self) -> None:
        doc = self._kubeconfig_doc({
            "client-certificate-data": _b64(self.pki / "admin.crt"),
            "client-key-data": _b64(self.pki / "admin.key"),
        }, "e2e-admin")
        _write_private(self.kubeconfig, yaml.safe_dump(doc, sort_keys=False))

    # ---- helpers for tests

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | str | None = None, timeout: float = 60.0,
                ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (absolute path, also first on PATH) against this cluster."""
        kc = str(kubeconfig or self.kubeconfig)
        argv = [str(self.binaries.kubectl), "--kubeconfig", kc, *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              env=self.env(kc), timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply_crds(self, paths: Iterable[Path | str], timeout: float = 60.0) -> list[str]:
        """Apply CRD files (server-side) and wait until every CRD reports Established.

        Returns the CRD names."""
        files = [str(p) for p in paths]
        if not files:
            return []
        argv = ["apply", "--server-side", "--force-conflicts",
                "--field-manager", "startupmonkey-e2e", "-o", "name"]
        for f in files:
            argv += ["-f", f]
        out = self.kubectl(*argv).stdout.split()
        names = [n.split("/", 1)[1] for n in out
                 if n.startswith("customresourcedefinition")]
        if names:
            self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                         *[f"customresourcedefinition/{n}" for n in names],
                         timeout=timeout + 10)
        return names

    def create_namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.kubectl("create", "namespace", name)
        return name

    def delete_namespace(self, name: str, wait: bool = False) -> None:
        self.kubectl("delete", "namespace", name, "--ignore-not-found",
                     f"--wait={str(wait).lower()}")

    def mint_token(self, namespace: str, serviceaccount: str, duration: str = "1h") -> str:
        """A bound token for the ServiceAccount (TokenRequest API, `kubectl create token`)."""
        return self.kubectl("create", "token", serviceaccount, "-n", namespace,
                            "--duration", duration).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path | str,
                             namespace: str | None = None) -> Path:
        """Write a kubeconfig that authenticates with ``token`` (same cluster and CA)."""
        path = Path(path)
        doc = self._kubeconfig_doc({"token": token}, "e2e-token", namespace)
        _write_private(path, yaml.safe_dump(doc, sort_keys=False))
        return path

    def mark_deployment_available(self, namespace: str, name: str,
                                  available: bool = True) -> dict[str, Any]:
        """Patch ``deployments/status`` as the (absent) deployment controller would.

        ``available=True`` reports every replica ready and available with Available=True;
        ``available=False`` reports none available with Available=False. Returns the
        Deployment as read back after the patch."""
        dep = self.kubectl_json("get", "deployment", name, "-n", namespace)
        replicas = int(dep["spec"].get("replicas", 1))
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ok = replicas if available else 0
        status = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ok,
            "availableReplicas": ok,
            "unavailableReplicas": replicas - ok,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable" if available
                    else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability." if available
                    else "Deployment does not have minimum availability.",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{name}" has successfully progressed.'
                    if available else f'ReplicaSet "{name}" is progressing.',
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
            ],
        }
        self.kubectl("patch", "deployment", name, "-n", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}))
        patched: dict[str, Any] = self.kubectl_json("get", "deployment", name, "-n", namespace)
        return patched


def _kill_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each process was started in its own session, so its pgid is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

