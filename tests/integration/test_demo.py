"""``startupmonkey demo``, the README's first command, run as a newcomer runs it: its own
throwaway PostgreSQL, the whole data plane, every seeded problem handled, the index kept
because it measurably helped, and nothing left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
EXE = Path(sys.executable).with_name("startupmonkey")


def _row(output: str, detector: str, target: str) -> str:
    found = [line for line in output.splitlines()
             if line.split()[:1] == [detector] and target in line]
    assert found, f"no {detector} row for {target} in:\n{output}"
    return found[0]


PREFIXES = ("smpg-", "smnats-", "startupmonkey-")
"""Where the demo's PostgreSQL, nats-server and data plane keep their files."""


def _ours() -> tuple[set[str], set[str]]:
    """Temporary folders with the demo's prefixes, and processes running from them."""
    tmp = Path(tempfile.gettempdir())
    folders = {p.name for p in tmp.iterdir() if p.name.startswith(PREFIXES)}
    listed = subprocess.run(["pgrep", "-af", "|".join(f"{tmp}/{p}" for p in PREFIXES)],
                            capture_output=True, text=True, check=False).stdout
    return folders, {line for line in listed.splitlines() if line.strip()}


def test_demo_fixes_every_seeded_problem_and_keeps_the_index_that_helped(
        tmp_path: Path) -> None:
    folders_before, processes_before = _ours()
    done = subprocess.run([str(EXE), "demo"], capture_output=True, text=True, timeout=400,
                          cwd=tmp_path, check=False)
    output = done.stdout
    assert done.returncode == 0, output[-4000:] + done.stderr[-4000:]
    report = output.split("What StartupMonkey found and did:")[1]
    assert "Succeeded" in _row(report, "idle_in_transaction", "pid")
    assert "50000 dead tuples removed" in _row(report, "dead_tuples", "public.events")
    assert "Succeeded" in _row(report, "stale_statistics", "public.products")
    index = _row(report, "missing_index", "public.orders")
    assert "Succeeded" in index and "kept public.sm_orders_customer_id_" in index
    # The hot query got faster, measured before and after over the same length of time.
    times = re.search(r"Hot query mean time per call: ([\d.]+) ms before, ([\d.]+) ms", report)
    assert times is not None, report
    assert float(times[2]) < float(times[1]) / 2
    # Seeded statistics are honest: orders was analysed after its rows went in.
    assert "public.orders" not in "".join(
        line for line in report.splitlines() if line.startswith("  stale_statistics"))
    # Everything it started is gone: its folders and any process running from them.
    folders_after, processes_after = _ours()
    assert folders_after - folders_before == set(), "the demo left folders behind"
    assert processes_after - processes_before == set(), "demo processes outlived it"
