"""Heavy libraries are imported only by the processes and modes that use them (issue 19,
item 2): the Kubernetes client costs about 16 MB resident in every process that loads it.

Each check runs in a fresh interpreter, since this test process has loaded everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("kubernetes", "kopf", "pglast", "jinja2")


def loaded_after(*modules: str) -> set[str]:
    """The heavy top-level packages in ``sys.modules`` after importing ``modules`` fresh."""
    probe = ("import importlib, json, sys\n"
             f"for name in {list(modules)!r}:\n"
             "    importlib.import_module(name)\n"
             f"print(json.dumps([h for h in {list(HEAVY)!r} if h in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True,
                          text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("modules", "allowed"), [
    (("startupmonkey.collector.main",), set()),
    (("startupmonkey.analyser.main",), {"pglast"}),
    # The executor parses index definitions (pglast); the Kubernetes store alone needs the
    # Kubernetes client, and main.make_store imports it only for that store.
    (("startupmonkey.executor.main",), {"pglast"}),
    (("startupmonkey.runner",), set()),
    (("startupmonkey.cli",), set()),
], ids=["collector", "analyser", "executor", "runner", "cli"])
def test_a_process_loads_only_the_heavy_libraries_it_uses(modules: tuple[str, ...],
                                                          allowed: set[str]) -> None:
    assert loaded_after(*modules) <= allowed


def test_the_kubernetes_store_still_brings_the_client_it_needs() -> None:
    # The other side of the laziness: a cluster executor does load the client (so the test
    # above would notice if the store moved and the check became vacuous).
    assert "kubernetes" in loaded_after("startupmonkey.executor.main",
                                        "startupmonkey.executor.kube")
