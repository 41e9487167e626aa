"""``startupmonkey demo``, the README's first command, run as a newcomer runs it: its own
throwaway PostgreSQL, the whole data plane, every seeded problem handled, the index kept
because it measurably helped, and nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
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


def _processes_under(folder: Path) -> list[str]:
    listed = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True,
                            check=False).stdout
    return [line for line in listed.splitlines() if line.strip()]


def test_demo_fixes_every_seeded_problem_and_keeps_the_index_that_helped(
        tmp_path: Path) -> None:
    # A private TMPDIR (short: it holds PostgreSQL's socket; traversable by the postgres
    # user): whatever the demo leaves behind is its own, even with other work on the machine.
    private = Path(tempfile.mkdtemp(prefix="smdemo-", dir="/tmp"))
    private.chmod(0o755)
    try:
        done = subprocess.run([str(EXE), "demo"], capture_output=True, text=True, timeout=400,
                              cwd=tmp_path, check=False, env={**os.environ, "TMPDIR": str(private)})
        left, running = sorted(p.name for p in private.iterdir()), _processes_under(private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    output = done.stdout
    assert done.returncode == 0, output[-4000:] + done.stderr[-4000:]
    report = output.split("What StartupMonkey found and did:")[1]
    assert "Succeeded" in _row(report, "idle_in_transaction", "pid")
    assert "50000 dead tuples removed" in _row(report, "dead_tuples", "public.events")
    # Under each row, what changed in words (issue 21.3), not a dump of status keys.
    assert "      50,000 dead rows removed" in report, report
    assert not re.search(r"\b(before|after)\.\w+=", report), report
    assert "Succeeded" in _row(report, "stale_statistics", "public.products")
    index = _row(report, "missing_index", "public.orders")
    assert "Succeeded" in index and "kept public.sm_orders_customer_id_" in index
    assert re.search(r"\n      [\d.]+ (ms|s) -> [\d.]+ (ms|s) per call over [\d,]+ / [\d,]+ calls",
                     report), report
    assert re.search(r"\n      benefit: [\d.,]+ (ms|s|min|h) saved per hour", report), report
    # The hot query got faster, measured before and after over the same length of time.
    times = re.search(r"Hot query mean time per call: ([\d.]+) ms before, ([\d.]+) ms", report)
    assert times is not None, report
    assert float(times[2]) < float(times[1]) / 2
    # Seeded statistics are honest: orders was analysed after its rows went in.
    assert "public.orders" not in "".join(
        line for line in report.splitlines() if line.startswith("  stale_statistics"))
    # Everything it started is gone: its folders and any process running from them.
    assert left == [], f"the demo left folders behind: {left}"
    assert running == [], f"demo processes outlived it: {running}"
