"""Fixtures for the e2e tier: one real Kubernetes control plane per test session.

The binaries come from ``bash hack/build-binaries.sh`` (run by ``.ci/run`` before pytest,
never from a fixture). Without them the tests skip on a developer machine and fail in CI
(``CI=true``), as DESIGN.md ("Testing tiers") requires.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # `tests.support` lives in the repo, not in the installed package; append (never prepend)
    # so the repo root cannot shadow anything installed (DESIGN.md, "Repository layout").
    sys.path.append(str(REPO_ROOT))

from tests.support.components import require  # noqa: E402
from tests.support.controlplane import Binaries, ControlPlane, find_binaries  # noqa: E402

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
