"""What every benchmark shares: machine details, median and spread, the result file, /proc.

The benchmarks (``bench/*.py``, driven by ``bench/run.py``) print figures and write
``bench/results/<name>.json``; they are not tests and assert no times. Every result file has
the same envelope (:data:`SCHEMA`, checked by :func:`problems` and by
``tests/unit/test_bench_harness.py``) so that ``docs/performance.md`` and the driver's aims
table read them the same way:

    {"schema": SCHEMA, "benchmark": name, "when": ISO time, "quick": bool, "seconds": float,
     "command": how to reproduce it, "machine": {...}, "results": ..., "not_measured": [...]}

``not_measured`` lists what the run could not measure and why (a missing component, a
detector that is not built yet), so a gap is written down instead of silently absent.

Scripts run as ``.venv/bin/python bench/<name>.py``, so this folder is first on ``sys.path``
and ``import common`` finds this file; importing it appends the repository root to
``sys.path`` so the test tiers' workload and control-plane helpers (``tests/support``) are
reused, not copied, and turns gRPC's fork support off before anything loads gRPC.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from startupmonkey import runner
from startupmonkey.localserv import postgres
from startupmonkey.models import durations, monitor

# Before anything imports grpc (scripts import this module first): grpcio's fork handlers make
# a fork() unsafe while gRPC threads live, and the local PostgreSQL is started with fork/exec
# as another OS user when we are root. Nothing here needs gRPC across a fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCHEMA = "startupmonkey.dev/bench-result/v1"
if str(ROOT) not in sys.path:
    # ``tests.support`` (workloads, the control plane) is reused from the repository; appended,
    # so the repository root never shadows anything installed.
    sys.path.append(str(ROOT))
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "benchmark": str, "when": str, "quick": bool, "seconds": (int, float),
    "command": str, "machine": dict, "results": (list, dict), "not_measured": list}
MACHINE_KEYS = ("cpu_model", "cores", "memory_mb", "python", "os", "load_average")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BATCH = 250  # tables per transaction when seeding (each CREATE holds locks until commit)


# ---- figures -------------------------------------------------------------------------------


def summary(values: Iterable[float], digits: int = 1) -> dict[str, Any]:
    """Median and spread of repeated measurements: n, median, min, max, spread (max - min).

    Empty input gives ``{"n": 0}``: a figure that could not be measured stays visible.
    """
    data = sorted(float(v) for v in values)
    if not data:
        return {"n": 0}
    return {"n": len(data), "median": round(statistics.median(data), digits),
            "min": round(data[0], digits), "max": round(data[-1], digits),
            "spread": round(data[-1] - data[0], digits)}


def gap(measured: float | None, aim: float, digits: int = 1) -> dict[str, Any]:
    """A figure against its aim (lower is better): the gap is ``measured - aim``; negative
    means within the aim by that much. ``None`` (not measured) gives no gap."""
    if measured is None:
        return {"measured": None, "aim": aim, "gap": None, "within": None}
    return {"measured": round(measured, digits), "aim": aim,
            "gap": round(measured - aim, digits), "within": measured <= aim}


#: A memory limit should leave this much room above the highest resident set measured
#: (issue 19, item 2): 1.3 x the peak, or the pod risks being OOM-killed on a busier day.
HEADROOM = 1.3


def limit_check(what: str, limit: str, peak_mib: float | None) -> dict[str, Any]:
    """A memory ``limit`` (a Kubernetes quantity, e.g. ``"512Mi"``) against :data:`HEADROOM`
    times the peak resident set measured (MiB, as the samplers report it); ``within`` is None
    when nothing was measured."""
    limit_mib = durations.parse_quantity(limit) / 2**20
    if peak_mib is None:
        return {"what": what, "limit": limit, "limit_mib": round(limit_mib, 1),
                "peak_mib": None, "needed_mib": None, "within": None}
    needed = peak_mib * HEADROOM
    return {"what": what, "limit": limit, "limit_mib": round(limit_mib, 1),
            "peak_mib": round(peak_mib, 1), "needed_mib": round(needed, 1),
            "within": limit_mib >= needed}


def print_limit_checks(checks: Sequence[dict[str, Any]]) -> None:
    """One line per memory limit below :data:`HEADROOM` times its measured peak (to stdout),
    or one saying every limit leaves that room."""
    short = [c for c in checks if c["within"] is False]
    for c in short:
        print(f"limit check: {c['what']} memory limit {c['limit']} ({c['limit_mib']} MiB) is "
              f"below {HEADROOM} x its measured peak {c['peak_mib']} MiB = "
              f"{c['needed_mib']} MiB: raise it, or bring the peak down")
    if not short:
        measured = [c["what"] for c in checks if c["within"]]
        print(f"limit check: every memory limit measured ({', '.join(measured) or 'none'}) "
              f"is at least {HEADROOM} x its peak")


# ---- result files --------------------------------------------------------------------------


def report(benchmark: str, *, quick: bool, started: float, command: str,
           results: list[Any] | dict[str, Any], not_measured: Sequence[dict[str, str]] = (),
           machine_info: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The result document; ``started`` is a ``time.monotonic()`` reading."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "command": command,
        "machine": machine_info if machine_info is not None else machine(),
        "source": source(),
        **extra,
        "results": results,
        "not_measured": list(not_measured),
    }


def problems(document: Any) -> list[str]:
    """What is wrong with a result document (empty when it follows the schema)."""
    if not isinstance(document, dict):
        return ["not a JSON object"]
    found = []
    for key, kind in REQUIRED_KEYS.items():
        if key not in document:
            found.append(f"missing {key}")
        elif not isinstance(document[key], kind) or (
                kind == (int, float) and isinstance(document[key], bool)):
            found.append(f"{key} has type {type(document[key]).__name__}")
    if document.get("schema", SCHEMA) != SCHEMA:
        found.append(f"schema is {document['schema']!r}, expected {SCHEMA!r}")
    for item in document.get("not_measured", []) if isinstance(
            document.get("not_measured"), list) else []:
        if not (isinstance(item, dict) and {"what", "why"} <= set(item)):
            found.append(f"not_measured entry without what/why: {item!r}")
    if isinstance(document.get("machine"), dict):
        found += [f"machine lacks {k}" for k in MACHINE_KEYS if k not in document["machine"]]
    return found


def write(document: dict[str, Any], path: Path) -> Path:
    """Check the document against the schema, then write it (indented, newline-terminated)."""
    wrong = problems(document)
    if wrong:
        raise ValueError(f"result document does not follow {SCHEMA}: {wrong}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def command_line(benchmark: str, quick: bool) -> str:
    """The command that reproduces a result file."""
    return f".venv/bin/python bench/{benchmark}.py" + (" --quick" if quick else "")


def publish(benchmark: str, *, quick: bool, started: float, output: Path,
            results: list[Any] | dict[str, Any], printer: Callable[[Any], None] | None = None,
            **fields: Any) -> dict[str, Any]:
    """Build the result document, write it to ``output``, print the table (``printer``) and
    where the file went; the tail every benchmark's ``main`` shares."""
    document = report(benchmark, quick=quick, started=started,
                      command=command_line(benchmark, quick), results=results, **fields)
    write(document, output)
    if printer is not None:
        printer(results)
    print(f"wrote {output} in {document['seconds']}s", file=sys.stderr)
    return document


def result_path(name: str, quick: bool) -> Path:
    """``bench/results/<name>.json`` for a full run, ``<name>.quick.json`` for a quick one, so
    that a quick run (CI, a developer's check) never overwrites the figures of a full run."""
    return RESULTS / f"{name}{'.quick' if quick else ''}.json"


# ---- machine -------------------------------------------------------------------------------


def _proc_field(path: str, field: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def postgres_version() -> str | None:
    """``postgres --version`` of the server binaries the local clusters use, if installed."""
    try:
        binary = postgres.find_binaries().tool("postgres")
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=10, check=True)
    except (postgres.BinariesNotFound, OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine(server_version: str | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, Python, OS, load average at start, PostgreSQL version."""
    memory_kb = _proc_field("/proc/meminfo", "MemTotal")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_mb": int(memory_kb.split()[0]) // 1024 if memory_kb else None,
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_average": [round(x, 2) for x in load],
        "postgresql": server_version or postgres_version(),
    }


def source() -> dict[str, Any]:
    """The commit measured, and how many paths differ from it (work in progress of others
    changes figures: the analyser's cost depends on the detectors registered, for example)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                 text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None,
            "modified_paths": len(status.splitlines()) if status is not None else None}


def in_ci() -> bool:
    """True under CI (``CI=true``): a missing component is then an error, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


# ---- /proc ---------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process (``VmRSS``), None once it is gone."""
    value = _proc_field(f"/proc/{pid}/status", "VmRSS")
    return int(value.split()[0]) * 1024 if value else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class Sampler:
    """Samples RSS and CPU of named processes in a thread, every ``period`` seconds.

    ``with Sampler({"analyser": pid, ...}) as s: ...`` then ``s.figures()``: per process the
    median and peak RSS in MB and the CPU seconds used while sampling.
    """

    def __init__(self, pids: dict[str, int], period: float = 0.5) -> None:
        self.pids = dict(pids)
        self.period = period
        self.rss: dict[str, list[int]] = {name: [] for name in pids}
        self.cpu_start: dict[str, float | None] = {}
        self.cpu_end: dict[str, float | None] = {}
        self.started = self.ended = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.started = time.monotonic()
        self.cpu_start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.ended = time.monotonic()
        self.cpu_end = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def _run(self) -> None:
        self.sample()  # at least one reading, however short the block
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        """One reading of every process."""
        for name, pid in self.pids.items():
            value = rss_bytes(pid)
            if value is not None:
                self.rss[name].append(value)

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per process: rss_mb (median), rss_peak_mb, rss_first_mb and rss_last_mb (growth
        while sampled), cpu_seconds, cpu_percent (of one core), samples."""
        wall = max(self.ended - self.started, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for name, values in self.rss.items():
            start, end = self.cpu_start.get(name), self.cpu_end.get(name)
            used = end - start if start is not None and end is not None else None
            out[name] = {
                "rss_mb": round(statistics.median(values) / 2**20, 1) if values else None,
                "rss_peak_mb": round(max(values) / 2**20, 1) if values else None,
                "rss_first_mb": round(values[0] / 2**20, 1) if values else None,
                "rss_last_mb": round(values[-1] / 2**20, 1) if values else None,
                "cpu_seconds": round(used, 2) if used is not None else None,
                "cpu_percent": round(100 * used / wall, 1) if used is not None else None,
                "samples": len(values),
            }
        return out


# ---- seeding a database --------------------------------------------------------------------


def create_tables(conn: Any, count: int, rows: int = 10) -> None:
    """``count`` tables ``t_<i>`` (primary key, one secondary index, a TOASTable column),
    ``rows`` rows each, in batches of :data:`BATCH` tables per transaction."""
    for first in range(0, count, BATCH):
        last = min(count, first + BATCH)
        # Integers only in the text, and no parameters: nothing to escape.
        conn.execute(
            f"DO $$ BEGIN FOR i IN {first}..{last - 1} LOOP "
            "EXECUTE format('CREATE TABLE t_%s (id bigint PRIMARY KEY, account int, "
            "note text, created timestamptz DEFAULT now(), amount numeric(10,2))', i); "
            "EXECUTE format('CREATE INDEX t_%s_account ON t_%s (account)', i, i); "
            f"EXECUTE format('INSERT INTO t_%s (id, account, note) "
            f"SELECT g, g %% 10, ''n'' FROM generate_series(1, {int(rows)}) g', i); "
            "END LOOP; END $$")


def statement_text(number: int, tables: int) -> str:
    """The ``number``-th of a family of statements with distinct pg_stat_statements queryids.

    Constants are normalised away, so distinct statements need distinct shapes: statement
    ``n`` reads table ``n % tables`` with ``n // tables + 1`` OR-ed predicates.
    """
    table, terms = number % tables, number // tables + 1
    where = " OR ".join(f"id = {j}" for j in range(1, terms + 1))
    return f"SELECT count(*) FROM t_{table} WHERE {where}"


def seed_statements(conn: Any, count: int, tables: int) -> None:
    """Run ``count`` distinct statements once each, so pg_stat_statements holds them."""
    for number in range(count):
        conn.execute(statement_text(number, tables))


# ---- the local data plane ------------------------------------------------------------------


@contextlib.contextmanager
def running_plane(monitor_: monitor.DatabaseMonitor, user: str) -> Iterator[runner.LocalPlane]:
    """``startupmonkey run``'s data plane (collector, analyser, executor, nats-server as child
    processes) for ``monitor_``, logging in as ``user``; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="smbench-") as workdir:
        plane = runner.LocalPlane(monitor_, user, None, Path(workdir) / "audit.jsonl")
        try:
            plane.start()
            yield plane
        finally:
            plane.stop()


def seeded_database(cluster: postgres.PostgresCluster, dbname: str, tables: int,
                    statements: int) -> float:
    """Create ``dbname`` with ``tables`` tables and ``statements`` statements run once each;
    returns the seconds it took."""
    cluster.create_database(dbname)
    started = time.monotonic()
    with cluster.connect(dbname) as conn:
        create_tables(conn, tables)
        seed_statements(conn, statements, tables)
    return time.monotonic() - started


def plane_pids(plane: runner.LocalPlane) -> dict[str, int]:
    """Process ids of the plane's collector, analyser, executor and nats-server."""
    pids = {name: child.pid for name, child in plane.children.items()}
    if plane.nats is not None and plane.nats.pid is not None:
        pids["nats-server"] = plane.nats.pid
    return pids


def wait_warm(plane: runner.LocalPlane, settle: float, timeout: float = 60.0) -> float:
    """Wait until the executor has checked the database (its first audit-log entry), then
    ``settle`` seconds more; returns the seconds it took. Raises if a child died."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        dead = plane.dead_children()
        if dead:
            raise RuntimeError(f"{dead} exited during start: " + "\n".join(
                plane.log_tail(name) for name in dead))
        if plane.audit_log.exists() and '"kind": "Database"' in plane.audit_log.read_text():
            time.sleep(settle)
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"the executor did not check the database within {timeout}s")
