"""What each process pays before it does anything: its imports (issue 19, item 2).

Each entry imports what one process of StartupMonkey imports at start (its ``main`` module,
and for the modes that choose their parts at run time, the parts that mode loads) in a fresh
interpreter, ``--repeats`` times, and reports:

- ``import_ms``: wall time of the imports alone (median, spread);
- ``rss_mib``: the peak resident set after them (``VmHWM``), which is the floor of that
  process's memory: nothing it later holds can make it smaller;
- ``heavy``: which of the heavy optional libraries (the Kubernetes client, kopf, pglast, jinja2,
  aiohttp, nats-py) were loaded, so a module pulled in where it is not used shows here;
- ``interpreter``: the same for an interpreter that imports nothing, the floor of every floor.

    .venv/bin/python bench/imports.py --quick     # 3 repetitions (seconds)
    .venv/bin/python bench/imports.py             # 10 repetitions

The data plane's aim (docs/performance.md §6; issue 19) is about the resident memory of the
running processes; this benchmark says how much of it the imports alone already take.
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

#: Each process, and the modules it imports at start (in that order).
ENTRIES: dict[str, tuple[str, ...]] = {
    "collector": ("startupmonkey.collector.main",),
    "analyser": ("startupmonkey.analyser.main",),
    "executor, standalone (JSONL store)": ("startupmonkey.executor.main",),
    "executor, in a cluster": ("startupmonkey.executor.main", "startupmonkey.executor.kube"),
    "operator": ("startupmonkey.operator.main",),
    "runner (startupmonkey run)": ("startupmonkey.runner",),
    "dashboard, local (kubeconfig)": ("startupmonkey.dashboard.server",
                                      "startupmonkey.dashboard.kube"),
    "dashboard, standalone (executor API)": ("startupmonkey.dashboard.server",
                                             "startupmonkey.dashboard.standalone"),
    "cli (startupmonkey --help)": ("startupmonkey.cli",),
}
#: The optional libraries worth knowing about when they are loaded.
HEAVY = ("kubernetes", "kopf", "pglast", "jinja2", "aiohttp", "nats", "grpc", "psycopg")

#: VmHWM (the peak resident set of this process's own memory) rather than ``ru_maxrss``: the
#: latter is carried over exec from the parent (this benchmark, already large).
_PROBE = """
import importlib, json, sys, time
names = json.loads(sys.argv[1])
started = time.perf_counter()
for name in names:
    importlib.import_module(name)
elapsed = (time.perf_counter() - started) * 1000
heavy = json.loads(sys.argv[2])
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"ms": elapsed, "rss_kib": hwm,
                  "heavy": [h for h in heavy if h in sys.modules]}))
"""


def probe(modules: tuple[str, ...]) -> dict[str, Any]:
    """One fresh interpreter importing ``modules``: time, peak RSS and heavy modules."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(modules)),
                           json.dumps(list(HEAVY))], cwd="/", capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"importing {modules} failed: {done.stderr.strip()[-500:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def measure(entries: dict[str, tuple[str, ...]], repeats: int) -> list[dict[str, Any]]:
    """Every entry (and the bare interpreter), ``repeats`` fresh interpreters each."""
    out = []
    for label, modules in {"interpreter": (), **entries}.items():
        samples = [probe(modules) for _ in range(repeats)]
        out.append({"process": label, "modules": list(modules),
                    "import_ms": common.summary((s["ms"] for s in samples), 1),
                    "rss_mib": common.summary((s["rss_kib"] / 1024 for s in samples), 1),
                    "heavy": samples[-1]["heavy"]})
    return out


def _print(results: list[dict[str, Any]]) -> None:
    print(f"{'process':<38} {'imports ms (range)':>22} {'RSS MiB':>9}  heavy libraries loaded")
    for r in results:
        ms, rss = r["import_ms"], r["rss_mib"]
        print(f"{r['process']:<38} {ms['median']:>10} ({ms['min']}-{ms['max']})"
              f"{'':>2} {rss['median']:>9}  {', '.join(r['heavy']) or '-'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/imports[.quick].json")
    args = parser.parse_args(argv)
    output = args.output or common.result_path("imports", args.quick)
    repeats = args.repeats or (3 if args.quick else 10)
    started = time.monotonic()
    results = measure(ENTRIES, repeats)
    common.publish("imports", quick=args.quick, started=started, output=output,
                   results=results, printer=_print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
