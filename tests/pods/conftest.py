"""Fixtures of the real-pods tier (issue 18): the chart and the operator's Deployments as real
containers from the image built here, on a real kubelet (tests/support/node.py).

The tier is `make e2e-pods` (`make test` runs it too): its files are collected only when
STARTUPMONKEY_E2E_PODS=1 (hack/test.sh sets it) or when tests/pods is named on the command
line. It needs root, the Debian packages of hack/install-node-packages.sh, kubelet and
kube-scheduler (`bash hack/build-binaries.sh --node`) and the images (`make image`, run by the
fixture and cached); without them it skips, and fails under CI=true.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from startupmonkey.localserv import postgres  # noqa: E402
from tests.pods.helpers import CHART, PG_PORT, Cluster, helm, pods, pods_story  # noqa: E402
from tests.support.components import require  # noqa: E402
from tests.support.controlplane import find_binaries  # noqa: E402
from tests.support.eventually import wait_until  # noqa: E402
from tests.support.node import (  # noqa: E402
    CGROUP_FS,
    INSTALL_HINT,
    NODE_IP,
    SYSCTLS,
    Images,
    Node,
    PodsControlPlane,
    missing,
)

HERE = Path(__file__).resolve().parent
CRD_DIR = REPO_ROOT / "crds"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if os.environ.get("STARTUPMONKEY_E2E_PODS") == "1":
        return None
    named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if any(p == HERE or HERE in p.parents for p in named):
        return None
    return collection_path != HERE and HERE in collection_path.parents


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """The project, NATS and pause images (hack/build-image.sh: cached, seconds when warm)."""
    lacking = missing()
    if lacking:
        require("the real-pods node", lacking)
    return Images.build(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def host_sysctls() -> dict[str, str]:
    """The host's values of the kernel tunables kubelet sets, before any node ran."""
    return {f: Path(f"/proc/sys/{f}").read_text().strip() for f in SYSCTLS}


@pytest.fixture(scope="session")
def cluster(images: Images, host_sysctls: dict[str, str]
            ) -> Iterator[tuple[PodsControlPlane, Node]]:
    """The control plane (ServiceAccount admission on, CRDs applied) and one Ready node. At
    the end: the host's tunables unchanged, the node's cgroups and folder gone."""
    found = find_binaries()
    if isinstance(found, str):
        require("the Kubernetes control plane", found)
    kubelet = found.k8s_dir / "kubelet"
    if not kubelet.exists() or not (found.k8s_dir / "kube-scheduler").exists():
        require("kubelet and kube-scheduler", INSTALL_HINT)
    t0 = time.monotonic()
    with PodsControlPlane(found) as cp:
        cp.apply_crds(sorted(CRD_DIR.glob("*.yaml")))
        with Node(cp, images) as node:
            print(f"\nnode Ready in {node.start_seconds:.1f}s "
                  f"({time.monotonic() - t0:.1f}s with the control plane)", file=sys.stderr)
            yield cp, node
    assert {f: Path(f"/proc/sys/{f}").read_text().strip() for f in SYSCTLS} == host_sysctls
    assert not node.tmp.exists(), f"{node.tmp} left behind"
    left = [h / node.cgroup_root.lstrip("/") for h in CGROUP_FS.iterdir()
            if (h / node.cgroup_root.lstrip("/")).exists()]
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture(scope="session")
def release(cluster: Cluster, images: Images) -> Iterator[str]:
    """The chart installed once for the session with our image and the local NATS image (its
    namespace's name); `helm install --wait` returns once the operator pod is Ready by its real
    readiness probe. The operator watches every namespace: each test puts its monitor in a
    namespace of its own (``namespace``)."""
    cp, _node = cluster
    namespace = cp.create_namespace("pods")
    repository, tag = images.image.rsplit(":", 1)
    name = f"sm-{uuid.uuid4().hex[:6]}"
    try:
        helm(cp, "install", name, str(CHART), "-n", namespace, "--wait", "--timeout", "300s",
             "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
             "--set", "image.pullPolicy=Never", "--set", f"natsImage={images.nats}",
             "--set", "resync.statusInterval=2s")
        yield namespace
    except BaseException:
        print(pods_story(cp, namespace), file=sys.stderr)
        raise
    finally:
        subprocess.run([str(cp.binaries.helm), "uninstall", name, "-n", namespace],
                       env=cp.env(), capture_output=True, timeout=120, check=False)
        cp.delete_namespace(namespace, wait=False)


@pytest.fixture
def namespace(cluster: Cluster, release: str) -> Iterator[str]:
    """A fresh namespace for one test's monitor. Deleted afterwards, and waited for until its
    pods are gone, so the next test has the node's two cores to itself."""
    cp, _node = cluster
    name = cp.create_namespace("mon")
    yield name
    cp.delete_namespace(name, wait=False)
    wait_until(lambda: not pods(cp, name), timeout=180, interval=1,
               what=lambda: pods_story(cp, name))


@pytest.fixture
def pg_in_node(cluster: Cluster, pg_cluster: postgres.PostgresCluster) -> str:
    """The test PostgreSQL, reachable from pods at NODE_IP:PG_PORT (relayed once a session)."""
    _cp, node = cluster
    node.relay(pg_cluster.port, NODE_IP, PG_PORT)
    return f"{NODE_IP}:{PG_PORT}"


@pytest.fixture
def login(pg_cluster: postgres.PostgresCluster, app_conninfo: str) -> tuple[str, str]:
    """A password login with the executor's documented privileges."""
    owner = app_conninfo.split("user=")[1].split()[0]
    user, password = f"sm_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    pg_cluster.create_role(user, password, member_of=["pg_monitor", "pg_signal_backend", owner])
    return user, password
