"""Fixtures for the e2e tier: one real Kubernetes control plane per test session, and the
operator as its tests run it (``operator_kubeconfig``, ``start_operator``, ``data_plane``;
the process and the objects it manages are in ``tests/support/operator_helpers.py``).

The binaries come from ``bash hack/build-binaries.sh`` (run by ``.ci/run`` before pytest,
never from a fixture). Without them the tests skip on a developer machine and fail in CI
(``CI=true``), as docs/design.md#testing-tiers requires.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # `tests.support` lives in the repo, not in the installed package; append (never prepend)
    # so the repo root cannot shadow anything installed (docs/design.md#repository-layout).
    sys.path.append(str(REPO_ROOT))

from tests.support import operator_helpers as ops  # noqa: E402
from tests.support.components import require  # noqa: E402
from tests.support.controlplane import Binaries, ControlPlane, find_binaries  # noqa: E402
from tests.support.eventually import wait_until  # noqa: E402

CRD_DIR = REPO_ROOT / "crds"


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The built control-plane binaries; skips (fails under CI=true) when they are missing."""
    found = find_binaries()
    if isinstance(found, str):
        require("the Kubernetes control plane (etcd, kube-apiserver, kubectl, helm)", found)
    return found


@pytest.fixture(scope="session")
def control_plane(binaries: Binaries) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager for the whole session, with every
    ``crds/*.yaml`` applied and Established."""
    cp = ControlPlane(binaries)
    t0 = time.monotonic()
    cp.start(timeout=90)
    try:
        crds = sorted(CRD_DIR.glob("*.yaml"))
        if crds:
            cp.apply_crds(crds)
        print(
            f"\ncontrol plane up in {cp.start_seconds:.1f}s "
            f"(+{time.monotonic() - t0 - (cp.start_seconds or 0):.1f}s for {len(crds)} CRDs) "
            f"at {cp.server}",
            file=sys.stderr,
        )
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = control_plane.create_namespace()
    try:
        yield name
    finally:
        control_plane.delete_namespace(name, wait=False)


@pytest.fixture
def kube_env(control_plane: ControlPlane) -> dict[str, str]:
    """Environment for subprocesses: built binaries first on PATH, KUBECONFIG (admin), and
    kubectl/helm cache dirs inside the control plane's temp dir."""
    return control_plane.env()


@pytest.fixture(scope="module")
def operator_kubeconfig(control_plane: ControlPlane,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig with a token of the operator's ServiceAccount from deploy/ (removed
    afterwards, so a later Helm install of the same names starts from a clean cluster)."""
    cp = control_plane

    def phase() -> str | None:
        found = cp.kubectl("get", "namespace", ops.OPERATOR_NS, "-o",
                           "jsonpath={.status.phase}", check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    # The previous module's teardown deletes the namespace without waiting: one still being
    # terminated refuses new content, so wait for it to be gone (seen when two modules that
    # use this fixture ran back to back).
    wait_until(lambda: phase() != "Terminating", timeout=120,
               what=f"namespace {ops.OPERATOR_NS} to finish terminating")
    existed = phase() is not None
    if not existed:
        cp.kubectl("create", "namespace", ops.OPERATOR_NS)
    cp.kubectl("apply", "-f", str(ops.RBAC_MANIFEST))
    token = cp.mint_token(ops.OPERATOR_NS, ops.OPERATOR_SA)
    yield cp.kubeconfig_for_token(token, tmp_path_factory.mktemp("operator") / "kubeconfig")
    cp.kubectl("delete", "-f", str(ops.RBAC_MANIFEST), "--ignore-not-found", "--wait=false")
    if not existed:
        cp.delete_namespace(ops.OPERATOR_NS, wait=False)


@pytest.fixture
def start_operator(control_plane: ControlPlane, operator_kubeconfig: Path, namespace: str,
                   tmp_path: Path) -> Iterator[Callable[..., ops.Operator]]:
    """``start_operator(**settings)`` -> a running operator watching the test's namespace."""
    started: list[ops.Operator] = []

    def start(**settings: str) -> ops.Operator:
        op = ops.spawn(
            control_plane, operator_kubeconfig, namespace,
            tmp_path / f"operator-{len(started)}.log",
            # any warning shows in the log, and fails below
            settings={**settings, "PYTHONWARNINGS": "default"},
            # fork with other threads alive is unsafe: then rely on the teardown only
            die_with_pytest=threading.active_count() == 1)
        started.append(op)
        wait_until(lambda: ops.live(op), timeout=30, what="the operator's liveness endpoint")
        return op

    yield start
    for op in started:
        code = op.stop()
        text = op.text()
        assert code == 0, f"operator exited with {code}:\n{text[-3000:]}"
        assert "Traceback" not in text, text[-5000:]
        assert "Warning" not in text, text[-5000:]


@pytest.fixture
def data_plane(control_plane: ControlPlane, namespace: str,
               start_operator: Callable[..., ops.Operator]) -> Callable[..., ops.Operator]:
    """``data_plane(*secrets, operator=None, **spec)`` -> the arrangement most operator tests
    start from: the database Secret ``shop-db`` and any other ``secrets`` in the test's
    namespace, an operator running with the ``operator`` settings, and the monitor ``shop``
    (with ``spec`` over the defaults of ``monitor_manifest``) applied, with every child
    there."""
    def arrange(*secrets: str, operator: Mapping[str, str] | None = None,
                **spec: Any) -> ops.Operator:
        for secret in ("shop-db", *secrets):
            ops.create_secret(control_plane, namespace, secret)
        running = start_operator(**(operator or {}))
        control_plane.kubectl("apply", "-f", "-",
                              input=ops.monitor_manifest(namespace, **spec))
        ops.wait_for_children(control_plane, namespace)
        return running

    return arrange
