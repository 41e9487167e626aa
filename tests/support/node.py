"""A real Kubernetes node for the real-pods tier: containerd + runc + kubelet, in namespaces.

Everything the node changes stays inside namespaces and a temporary folder this module made
(docs/control-plane.md#the-node says why each piece is there):

- a holder process (``unshare --mount --net``) owns a private mount namespace and a private
  network namespace. In it: ``lo`` up with the node address (``NODE_IP``) and the
  ``kubernetes`` Service address (``API_IP``); a tmpfs over ``/run`` (containerd's and the CNI
  plugins' fixed ``/run/netns``); files bind-mounted over the ``/proc/sys`` entries kubelet sets
  host-wide (``vm.overcommit_memory``, ``kernel.panic``, ...), so the host keeps its values.
- containerd (root, state, socket, runc root under the temporary folder), kubelet and the
  cluster DNS (tests/support/nodedns.py) run in those namespaces (``nsenter``); pods get their
  own network namespaces on a bridge (the bridge CNI plugin) inside the node's.
- kube-scheduler and a second kube-controller-manager (deployment, replicaset, endpointslice,
  node-lifecycle, root-ca-certificate-publisher, serviceaccount) run beside the control plane
  on 127.0.0.1.
- the API server and any host port (a PostgreSQL the test runs) are relayed into the node's
  network namespace with socat over Unix sockets: nothing is routed between namespaces.
- the other way, the API server reaches the kubelet (``kubectl logs``, ``kubectl exec``) and
  pods through its egress selector: its ``cluster`` traffic goes as HTTP CONNECT over a Unix
  socket to a small proxy in the node's network namespace (``python -m tests.support.node
  egress SOCKET``), which only opens connections to the node's address and the pod subnet.
- pods' cgroups live under a dedicated parent (``cgroupRoot``), removed at stop after every
  process in it is killed.

The control plane is ``PodsControlPlane``: the e2e one with the ServiceAccount admission
plugin on (real pods need their token volume) and the egress selector above.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.controlplane import (
    REPO_ROOT,
    ControlPlane,
    ControlPlaneError,
    _set_pdeathsig,
    free_port,
)
from tests.support.eventually import wait_until

NODE_NAME = "node1"
NODE_IP = "10.99.0.1"
API_IP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP in --service-cluster-ip-range
POD_SUBNET = "10.88.0.0/16"
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "socat", "unshare", "nsenter",
         "ip")
CNI_BIN = Path("/usr/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")
INSTALL_HINT = ("bash hack/install-node-packages.sh && bash hack/build-binaries.sh --node "
                "&& bash hack/build-image.sh (or make e2e-pods)")

HOLDER_SCRIPT = r"""
set -eu
T=$1
ip link set lo up
ip addr add {node_ip}/32 dev lo
ip addr add {api_ip}/32 dev lo
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns "$T/sysctl"
for f in {sysctls}; do
    n=$(echo "$f" | tr / _)
    cat "/proc/sys/$f" >"$T/sysctl/$n"
    mount --bind "$T/sysctl/$n" "/proc/sys/$f"
done
touch "$T/holder.ready"
exec sleep infinity
"""


class NodeError(ControlPlaneError):
    pass


@dataclass(frozen=True)
class Images:
    """What hack/build-image.sh built (its --env-out file)."""

    image: str
    image_archive: Path
    nats: str
    nats_archive: Path
    pause: str
    pause_archive: Path

    @classmethod
    def build(cls, into: Path) -> Images:
        """Run hack/build-image.sh (cached: seconds) and read what it wrote."""
        env_file = into / "images.env"
        result = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-image.sh"),
                                 "--env-out", str(env_file)], capture_output=True, text=True,
                                timeout=1800, check=False)
        if result.returncode != 0:
            raise NodeError(f"hack/build-image.sh failed:\n{result.stdout}\n{result.stderr}")
        values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)
        return cls(values["STARTUPMONKEY_IMAGE"], Path(values["STARTUPMONKEY_IMAGE_ARCHIVE"]),
                   values["STARTUPMONKEY_NATS_IMAGE"],
                   Path(values["STARTUPMONKEY_NATS_IMAGE_ARCHIVE"]),
                   values["STARTUPMONKEY_PAUSE_IMAGE"],
                   Path(values["STARTUPMONKEY_PAUSE_IMAGE_ARCHIVE"]))


def missing() -> str | None:
    """What the node lacks on this machine (None when it can run), with how to get it."""
    lacking = [tool for tool in TOOLS if shutil.which(tool) is None]
    lacking += [f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_BIN / p).exists()]
    if os.geteuid() != 0:
        lacking.append("root")
    if not (CGROUP_FS / "memory").is_dir():
        lacking.append("cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    return f"missing for the node: {', '.join(lacking)}; {INSTALL_HINT}" if lacking else None


class PodsControlPlane(ControlPlane):
    """The e2e control plane with the ServiceAccount admission plugin enabled: real pods get
    their ServiceAccount's token volume from it (the e2e tier disables it, having no pods).

    Its ``cluster`` egress (kubelets, pods, Services: ``kubectl logs/exec``, the proxy
    subresources) goes as HTTP CONNECT over :attr:`egress_socket`, where the node's egress
    proxy listens once it started; the kubelet is addressed by its InternalIP (the node's
    address) and authenticates the API server by the admin client certificate."""

    @property
    def egress_socket(self) -> Path:
        return self._dir() / "cluster-egress.sock"

    def _spawn(self, name: str, argv: list[str]) -> None:
        if name == "kube-apiserver":
            at = argv.index("--disable-admission-plugins")
            del argv[at:at + 2]
            config = self._dir() / "egress-selector.json"
            config.write_text(json.dumps({
                "apiVersion": "apiserver.k8s.io/v1beta1", "kind": "EgressSelectorConfiguration",
                "egressSelections": [{"name": "cluster", "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(self.egress_socket)}}}}]}))
            argv += ["--egress-selector-config-file", str(config),
                     "--kubelet-preferred-address-types", "InternalIP",
                     "--kubelet-client-certificate", str(self.pki / "admin.crt"),
                     "--kubelet-client-key", str(self.pki / "admin.key")]
        super()._spawn(name, argv)


class Node:
    """containerd + kubelet in private namespaces, with a scheduler and the pod controllers.

    Use as a context manager; :meth:`stop` always kills every process, removes the cgroups and
    the temporary folder (set STARTUPMONKEY_KEEP_NODE=1 to keep the folder's logs)."""

    def __init__(self, control_plane: ControlPlane, images: Images) -> None:
        self.cp = control_plane
        self.images = images
        self.tmp = Path(tempfile.mkdtemp(prefix="smnode-", dir="/tmp"))
        self.cgroup_root = f"/{self.tmp.name}"
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.holder: subprocess.Popen[bytes] | None = None
        self._mnt: str | None = None  # the node's mount namespace, once the holder made it
        self._relays: set[tuple[int, str, int]] = set()
        self.start_seconds: float | None = None

    # ---- lifecycle

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> Node:
        t0 = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start(self, timeout: float) -> None:
        t = self.tmp
        for sub in ("containerd", "kubelet", "cni/net.d", "cni/ipam", "pod-logs"):
            (t / sub).mkdir(parents=True, exist_ok=True)
        self._make_cgroup_root()
        script = HOLDER_SCRIPT.format(node_ip=NODE_IP, api_ip=API_IP, sysctls=" ".join(SYSCTLS))
        self.holder = self._popen("holder", ["unshare", "--mount", "--net",
                                             "--propagation", "private", "bash", "-c", script,
                                             "holder", str(t)])
        wait_until(lambda: (t / "holder.ready").exists() or self._dead("holder"),
                   timeout=30, what="the node's namespaces are set up")
        if self._dead("holder"):
            raise NodeError(f"namespace holder failed:\n{self.log('holder')}")
        mnt = _ns(self.holder.pid, "mnt")
        if mnt is None or mnt == _ns(os.getpid(), "mnt"):
            raise NodeError("the namespace holder has no mount namespace of its own")
        self._mnt = mnt
        # The API server, reachable in the node at https://API_IP:443 (the Service address).
        self.relay(self.cp.apiserver_port, API_IP, 443)
        # And the node, reachable from the API server (kubectl logs/exec): its egress proxy.
        if isinstance(self.cp, PodsControlPlane):
            egress = self.cp.egress_socket
            self._in_node("egress", [sys.executable, "-m", "tests.support.node", "egress",
                                     str(egress)])
            wait_until(lambda: egress.exists() or self._dead("egress"),
                       timeout=30, what="the node's egress proxy socket")
        self._write_configs()
        self._in_node("containerd", ["containerd", "--config", str(t / "containerd.toml")])
        wait_until(lambda: (t / "containerd.sock").exists() or self._dead("containerd"),
                   timeout=30, what="containerd's socket")
        for archive in (self.images.pause_archive, self.images.nats_archive,
                        self.images.image_archive):
            self.ctr("image", "import", "--snapshotter", "overlayfs", str(archive))
        self._in_node("nodedns", [sys.executable, "-m", "tests.support.nodedns", NODE_IP,
                                  f"https://{API_IP}:443", str(self.cp.ca_file),
                                  str(self.cp.pki / "admin.crt"), str(self.cp.pki / "admin.key"),
                                  API_IP])
        self._in_node("kubelet", [
            str(self.cp.binaries.k8s_dir / "kubelet"),
            "--config", str(t / "kubelet.yaml"),
            "--kubeconfig", str(t / "kubelet.kubeconfig"),
            "--root-dir", str(t / "kubelet"),
            "--hostname-override", NODE_NAME,
            "--node-ip", NODE_IP,
            "--v", "1",
        ])
        kcm = self.cp.kubeconfig
        self._popen("kube-scheduler", [
            str(self.cp.binaries.k8s_dir / "kube-scheduler"), "--kubeconfig", str(kcm),
            "--authentication-kubeconfig", str(kcm), "--authorization-kubeconfig", str(kcm),
            "--leader-elect=false", "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()), "--v", "1"])
        self._popen("pod-controllers", [
            str(self.cp.binaries.kube_controller_manager), "--kubeconfig", str(kcm),
            "--authentication-kubeconfig", str(kcm), "--authorization-kubeconfig", str(kcm),
            "--controllers", "deployment-controller,replicaset-controller,"
            "endpointslice-controller,node-lifecycle-controller,"
            "root-ca-certificate-publisher-controller,serviceaccount-controller",
            "--root-ca-file", str(self.cp.ca_file), "--use-service-account-credentials=false",
            "--leader-elect=false", "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()), "--cert-dir", str(t / "kcm-certs"), "--v", "1"])
        wait_until(self._node_ready, timeout=timeout, interval=0.5,
                   what=f"node {NODE_NAME} Ready")

    def stop(self) -> None:
        """Kill everything in the node (its namespaces and cgroups), then remove it all."""
        procs, self._procs = self._procs, []
        for _name, popen in reversed(procs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        for _round in range(100):  # containers and shims: in the node's namespace or cgroups
            left = self._node_pids(self._mnt)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for _name, popen in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        self._remove_cgroups()
        if os.environ.get("STARTUPMONKEY_KEEP_NODE") == "1":
            print(f"node folder kept: {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- helpers for tests

    def log(self, name: str, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def ctr(self, *args: str) -> str:
        argv = ["nsenter", "--target", str(self._holder_pid()), "--mount", "--net", "--",
                "ctr", "--address", str(self.tmp / "containerd.sock"), "-n", "k8s.io", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def relay(self, host_port: int, node_ip: str, node_port: int) -> None:
        """Make 127.0.0.1:host_port of the host reachable at node_ip:node_port in the node
        (and so from pods): socat on each side of a Unix socket in the node's folder. Asking
        again for a relay that runs is a no-op (tests of one session share a PostgreSQL)."""
        if (host_port, node_ip, node_port) in self._relays:
            return
        self._relays.add((host_port, node_ip, node_port))
        sock = self.tmp / f"relay-{host_port}.sock"
        self._popen(f"relay-{host_port}-host", [
            "socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{host_port}"])
        wait_until(sock.exists, timeout=10, what=f"relay socket {sock}")
        self._in_node(f"relay-{host_port}-node", [
            "socat", f"TCP-LISTEN:{node_port},bind={node_ip},fork,reuseaddr",
            f"UNIX-CONNECT:{sock}"])

    def container_cgroups(self) -> Iterator[tuple[str, str, Path]]:
        """(pod uid, container id, memory cgroup folder) of every container now running."""
        base = CGROUP_FS / "memory" / self.cgroup_root.lstrip("/") / "kubepods"
        for qos_or_pod in base.rglob("pod*"):
            if not qos_or_pod.is_dir() or not qos_or_pod.name.startswith("pod"):
                continue
            for child in qos_or_pod.iterdir():
                if child.is_dir():
                    yield qos_or_pod.name[3:], child.name, child

    # ---- internals

    def _holder_pid(self) -> int:
        if self.holder is None:
            raise NodeError("the node is not started")
        return self.holder.pid

    def _dead(self, name: str) -> bool:
        return any(n == name and p.poll() is not None for n, p in self._procs)

    def _popen(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = self.cp.env()
        env["PYTHONPATH"] = str(REPO_ROOT)  # nodedns; nsenter --mount starts in /
        # Killed with the test process if it dies without stopping the node (as the control
        # plane's are); nsenter execs, so the signal reaches containerd and kubelet themselves.
        preexec = _set_pdeathsig if threading.current_thread() is threading.main_thread() \
            else None
        with (self.tmp / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                     start_new_session=True, preexec_fn=preexec)
        self._procs.append((name, popen))
        return popen

    def _in_node(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return self._popen(name, ["nsenter", "--target", str(self._holder_pid()), "--mount",
                                  "--net", "--", *argv])

    def _node_ready(self) -> bool:
        for name in ("containerd", "kubelet", "nodedns", "egress"):
            if self._dead(name):
                raise NodeError(f"{name} exited:\n{self.log(name)}")
        result = self.cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _node_pids(self, mnt: str | None) -> set[int]:
        """Processes in the node's mount namespace or in its cgroups (containers)."""
        pids: set[int] = set()
        if mnt is not None:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and _ns(int(entry.name), "mnt") == mnt:
                    pids.add(int(entry.name))
        for hierarchy in _hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            for procs in root.rglob("cgroup.procs") if root.is_dir() else ():
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        pids.discard(os.getpid())
        return pids

    def _make_cgroup_root(self) -> None:
        for hierarchy in _hierarchies():
            path = hierarchy / self.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (path / key).write_text((hierarchy / key).read_text())

    def _remove_cgroups(self) -> None:
        for hierarchy in _hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.is_dir():
                continue
            folders = sorted((p for p in root.rglob("*") if p.is_dir()),
                             key=lambda p: len(p.parts), reverse=True)
            for folder in [*folders, root]:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _write_configs(self) -> None:
        t = self.tmp
        (t / "resolv.conf").write_text("")
        (t / "cni/net.d/10-startupmonkey.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "startupmonkey",
            "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True,
                         "ipMasq": False, "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(t / "cni/ipam"),
                                  "ranges": [[{"subnet": POD_SUBNET}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (t / "containerd.toml").write_text(f"""version = 2
root = "{t}/containerd/root"
state = "{t}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{t}/containerd.sock"
[ttrpc]
  address = "{t}/containerd-ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/containerd/opt"
[{cri}]
  sandbox_image = "{self.images.pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{t}/runc"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{t}/cni/net.d"
""")
        ca = self.cp.ca_file
        (t / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
            "failSwapOn": False, "makeIPTablesUtilChains": False,
            "containerRuntimeEndpoint": f"unix://{t}/containerd.sock",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(ca)}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_IP], "clusterDomain": "cluster.local",
            "resolvConf": str(t / "resolv.conf"), "podLogsDir": str(t / "pod-logs"),
            "staticPodPath": "", "registerNode": True,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                             "imagefs.available": "2%"},
            "serializeImagePulls": False, "protectKernelDefaults": False,
            "nodeStatusUpdateFrequency": "2s", "syncFrequency": "5s",
        }))
        kubeconfig = yaml_kubeconfig(f"https://{API_IP}:443", ca, self.cp.pki / "admin.crt",
                                     self.cp.pki / "admin.key")
        (t / "kubelet.kubeconfig").write_text(kubeconfig)


def yaml_kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "node", "cluster": {"server": server,
                                                  "certificate-authority": str(ca)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(cert),
                                            "client-key": str(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "node", "user": "node"}}]})


def _hierarchies() -> list[Path]:
    return [p for p in sorted(CGROUP_FS.iterdir())
            if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()]


def _ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


# ---- the egress proxy (runs in the node's network namespace)

EGRESS_ALLOWED = (ipaddress.ip_network(f"{NODE_IP}/32"), ipaddress.ip_network(POD_SUBNET))


def _egress_allowed(host: str) -> bool:
    """An IP address of the node or of a pod (never a name: nothing is resolved here)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in EGRESS_ALLOWED)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; at its end pass the half-close on (the other may still talk)."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _egress_connection(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
    """One ``CONNECT host:port HTTP/1.1`` from the API server: a tunnel to host:port when that
    is the node or a pod, a refusal otherwise."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not _egress_allowed(host):
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        address = ipaddress.ip_address(host)
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(str(address), int(port)), timeout=10)
    except (OSError, ValueError, UnicodeDecodeError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError, TimeoutError) as error:
        with contextlib.suppress(OSError, ConnectionError):
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                         f"X-Error: {type(error).__name__}\r\n\r\n".encode())
            writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for end in (up_writer, writer):
            with contextlib.suppress(OSError, ConnectionError):
                end.close()


async def _egress(socket_path: str) -> None:
    server = await asyncio.start_unix_server(_egress_connection, path=socket_path)
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] != ["egress"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.support.node egress SOCKET")
    asyncio.run(_egress(sys.argv[2]))
