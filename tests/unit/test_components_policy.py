"""docs/design.md#testing-tiers: a missing real component fails under ``CI=true``, never skips;
on a developer machine it skips saying how to get the component."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from startupmonkey.localserv import nats, postgres
from tests.support import components

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_require_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception) as info:
        components.require("frobnicator", "apt-get install frobnicator")
    assert "frobnicator is not available: apt-get install frobnicator" in str(info.value)
    assert "CI=true" in str(info.value)


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_require_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception) as info:
        components.require("frobnicator", "apt-get install frobnicator")
    assert str(info.value) == "frobnicator is not available: apt-get install frobnicator"


def _no_nats(*args: object, **kwargs: object) -> Path:
    raise nats.BinaryNotFound("not here")


def _no_postgres(*args: object, **kwargs: object) -> postgres.Binaries:
    raise postgres.BinariesNotFound("no initdb anywhere")


def test_the_fixture_lookups_follow_the_same_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the nats/postgres fixtures call when the binaries are missing."""
    monkeypatch.setattr(nats, "find_binary", _no_nats)
    monkeypatch.setattr(postgres, "find_binaries", _no_postgres)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nats-server is not available"):
        components.nats_server_binary()
    with pytest.raises(pytest.fail.Exception, match="no initdb anywhere"):
        components.postgres_binaries()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="nats-server is not available"):
        components.nats_server_binary()
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL server is not available"):
        components.postgres_binaries()


def _run_pytest_on(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_frobnicator.py"
    test.write_text(
        "from tests.support import components\n\n\n"
        "def test_needs_it():\n"
        "    components.require('frobnicator', 'apt-get install frobnicator')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-q", "-rfs", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_pytest_reports_a_failure_under_ci_and_a_skip_elsewhere(tmp_path: Path) -> None:
    """The outcome as pytest itself reports it, in a separate run."""
    in_ci = _run_pytest_on(tmp_path, "true")
    assert in_ci.returncode == 1, in_ci.stdout + in_ci.stderr
    assert "1 failed" in in_ci.stdout and "skipped" not in in_ci.stdout, in_ci.stdout
    assert "frobnicator is not available" in in_ci.stdout
    local = _run_pytest_on(tmp_path, None)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout and "failed" not in local.stdout, local.stdout
    assert "frobnicator is not available: apt-get install frobnicator" in local.stdout
