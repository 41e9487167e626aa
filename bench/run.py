"""Run every benchmark, check their result files, and print the figures against the aims.

Each benchmark is its own script (``bench/<name>.py``) run here as a child process, so one
that fails or leaves state behind cannot skew the next; their output streams through. Then
every result file is checked against the shared schema (``common.problems``) and the ``aims``
they report are gathered into one table, also written to ``bench/results/summary.json``
(``summary.quick.json``: quick runs write ``<name>.quick.json`` and never overwrite the figures
of a full run).

    .venv/bin/python bench/run.py --quick          # `make bench-quick`: a few minutes (CI)
    .venv/bin/python bench/run.py --full           # `make bench`: about two hours (soak: one)
    .venv/bin/python bench/run.py --quick --only executor_intake memory

Exits 1 when a benchmark failed or wrote no valid result file (the harness is broken), else 0.
No figure is judged: a missed aim is a finding for docs/performance.md, not a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

BENCHMARKS = ("collector_cost", "analyser_throughput", "statements_changed", "executor_intake",
              "remediation_time", "memory", "imports", "operator_scale", "dashboard_render",
              "soak")
#: Too long for --quick (its ~3-minute quick run would take the quick set, ~4 minutes, past
#: ~5): run by --full only, or on its own (bench/soak.py --quick).
FULL_ONLY = ("soak",)
TIMEOUT_S = {"quick": 900, "full": 7200}  # soak's full run is 60 minutes plus its start


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run ``bench/<name>.py`` and check the file it wrote."""
    script = common.ROOT / "bench" / f"{name}.py"
    argv = [sys.executable, str(script), *(["--quick"] if quick else [])]
    output = common.result_path(name, quick)
    print(f"\n=== {name} ({' '.join(argv[1:])})", flush=True)
    started_wall, started = time.time(), time.monotonic()
    try:
        code = subprocess.run(argv, cwd=common.ROOT, check=False,
                              timeout=TIMEOUT_S["quick" if quick else "full"]).returncode
    except subprocess.TimeoutExpired:
        code = -1
    outcome: dict[str, Any] = {"benchmark": name, "exit_code": code,
                               "seconds": round(time.monotonic() - started, 1),
                               "result_file": str(output.relative_to(common.ROOT))}
    problems = _check(output, started_wall)
    outcome["problems"] = problems
    outcome["ok"] = code == 0 and not problems
    return outcome


def _check(path: Path, since: float) -> list[str]:
    if not path.exists():
        return [f"{path.name} was not written"]
    if path.stat().st_mtime < since:
        return [f"{path.name} is older than this run"]
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path.name} is not JSON: {exc}"]
    return common.problems(document)


def gather_aims(names: list[str], quick: bool) -> dict[str, Any]:
    """Every ``aims`` entry of the result files, keyed by benchmark, with when each ran."""
    found: dict[str, Any] = {}
    for name in names:
        path = common.result_path(name, quick)
        if path.exists():
            document = json.loads(path.read_text())
            found[name] = {"when": document.get("when"), "aims": document.get("aims", {}),
                           "not_measured": document.get("not_measured", [])}
    return found


def _print_aims(aims: dict[str, Any]) -> None:
    print("\n=== figures against the aims (gap = measured - aim; negative is within)")
    for name, entry in aims.items():
        for figure, value in entry["aims"].items():
            if "gap" in value:
                state = "n/a" if value["within"] is None else (
                    "within" if value["within"] else "MISSED")
                print(f"  {name:>20}  {figure:<58} {value['measured']!s:>8} vs "
                      f"{value['aim']:>6}  gap {value['gap']!s:>8}  {state}")
            else:
                print(f"  {name:>20}  {figure:<58} median gap {value['median_gap_s']} s, "
                      f"worst {value['worst_gap_s']} s  "
                      f"{'within' if value['within'] else 'MISSED'}")
        for item in entry["not_measured"]:
            print(f"  {name:>20}  not measured: {item['what']}: {item['why'][:120]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="a few minutes (what CI runs)")
    mode.add_argument("--full", action="store_true", help="the full run (about an hour)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    started = time.monotonic()
    names = [n for n in BENCHMARKS if n in args.only
             and not (args.quick and n in FULL_ONLY and args.only == list(BENCHMARKS))]
    outcomes = [run_one(name, args.quick) for name in names]
    # Aims of every result file there is, so a partial rerun (--only) keeps the whole table.
    aims = gather_aims(list(BENCHMARKS), args.quick)
    _print_aims(aims)
    document = common.report(
        "summary", quick=args.quick, started=started,
        command=".venv/bin/python bench/run.py " + ("--quick" if args.quick else "--full"),
        results=outcomes, aims=aims)
    common.write(document, common.result_path("summary", args.quick))
    print("\n=== harness")
    for outcome in outcomes:
        state = "ok" if outcome["ok"] else f"FAILED (exit {outcome['exit_code']}, " \
                                             f"{'; '.join(outcome['problems']) or 'no problems'})"
        print(f"  {outcome['benchmark']:>20}  {outcome['seconds']:>7.1f} s  {state}")
    print(f"  {'total':>20}  {document['seconds']:>7.1f} s")
    return 0 if all(o["ok"] for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
