"""Superusers (issue 17, item 4): the user learns, before a remediation is refused, what
happens to sessions that log in as a superuser: ``startupmonkey validate`` says it from the
manifest, the executor's report names such sessions, and its notice says what follows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from startupmonkey import manifest
from startupmonkey.models import monitor

EXE = Path(sys.executable).with_name("startupmonkey")
ROOT = Path(__file__).resolve().parents[2]


def _validate(tmp_path: Path, protect: dict[str, object]) -> str:
    body = yaml.safe_load((ROOT / "examples" / "monitor.yaml").read_text())
    body["spec"]["protect"] = protect
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(body))
    result = subprocess.run([str(EXE), "validate", "-f", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_validate_says_what_happens_to_superusers_sessions(tmp_path: Path) -> None:
    out = _validate(tmp_path, {})
    assert "never touched (spec.protect.superusers: true, the default)" in out
    assert "SuperuserSessions condition" in out
    out = _validate(tmp_path, {"superusers": False})
    assert "only when the executor itself logs in as a superuser" in out


def test_the_reports_notice_names_the_logins_and_what_follows() -> None:
    assert monitor.DatabaseStatus(reachable=True).superuser_notice(True) is None
    report = monitor.DatabaseStatus(reachable=True, superuser_logins=["postgres"],
                                    executor_superuser=False)
    protected = report.superuser_notice(True)
    assert protected is not None and "superuser(s) postgres" in protected
    assert "Rejected" in protected and "set spec.protect.superusers to false" in protected
    unable = report.superuser_notice(False)
    assert unable is not None and "the executor's role is not a superuser" in unable
    able = report.model_copy(update={"executor_superuser": True}).superuser_notice(False)
    assert able is not None and "may be signalled" in able
    assert manifest.superuser_note(monitor.Protect()).startswith("sessions that log in as")
