"""``startupmonkey run -f`` (the whole product: collector, analyser, executor and nats-server
as child processes) for the integration tests that run it on the temporary PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

EXE = Path(sys.executable).with_name("startupmonkey")


@dataclasses.dataclass
class Run:
    """A run's audit log, and what it printed (everything, once the block has ended)."""

    audit: Path
    output: str = ""
    pid: int = 0  # the `startupmonkey run` process, its children are the components


@contextlib.contextmanager
def run_f(manifest: Mapping[str, object], user: str, tmp_path: Path,
          env: Mapping[str, str] | None = None, *, exit_zero: bool = True) -> Iterator[Run]:
    """``startupmonkey run -f`` on ``manifest`` (written to ``tmp_path/monitor.yaml``) as the
    login ``user``, without PGPASSWORD in its environment (plus ``env``), its audit log
    ``tmp_path/audit.jsonl`` and state file ``tmp_path/state.json``. Stopped with SIGTERM when
    the block ends; its output is attached to an AssertionError of the block, and with
    ``exit_zero`` it must have exited 0."""
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(dict(manifest)))
    run = Run(tmp_path / "audit.jsonl")
    environ = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    environ.update(env or {})
    proc = subprocess.Popen(
        [str(EXE), "run", "-f", str(path), "--plain", "--user", user,
         "--audit-log", str(run.audit), "--state-file", str(tmp_path / "state.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=environ, text=True)
    run.pid = proc.pid
    problem: AssertionError | None = None
    try:
        yield run
    except AssertionError as exc:
        problem = exc
    finally:
        proc.send_signal(signal.SIGTERM)
        run.output, _ = proc.communicate(timeout=60)
    assert problem is None, f"{problem}\nrun output:\n{run.output}"
    if exit_zero:
        assert proc.returncode == 0, run.output
