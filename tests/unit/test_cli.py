"""The one CLI: every subcommand has --help from day one; unbuilt ones say so and fail."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from startupmonkey import cli

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("startupmonkey")
DESIGNED = {"operator", "collector", "analyser", "executor", "run", "demo", "approve", "reject",
            "rollback", "status"}


def test_every_designed_subcommand_exists() -> None:
    assert set(cli.COMMANDS) >= DESIGNED


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_works_for_each_subcommand(command: str) -> None:
    result = subprocess.run([str(EXE), command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"startupmonkey {command}" in result.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_is_built(command: str) -> None:
    module_name, _ = cli.COMMANDS[command]
    assert module_name is not None, f"{command} is not built"
    module = importlib.import_module(module_name)
    assert callable(module.main)


def test_an_unbuilt_subcommand_exits_non_zero_saying_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.COMMANDS, "demo", (None, "not yet"))
    assert cli.main(["demo"]) == cli.NOT_BUILT
    assert "not built yet" in capsys.readouterr().err


def test_validate_accepts_the_example() -> None:
    result = subprocess.run([str(EXE), "validate", "-f", str(ROOT / "examples" / "monitor.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "DatabaseMonitor default/shop is valid" in result.stdout


def test_validate_lists_every_problem(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: startupmonkey.dev/v1alpha1\nkind: DatabaseMonitor\n"
        "metadata: {name: shop}\n"
        "spec:\n  database: {host: db, dbname: shop, credentialsSecret: {name: s}}\n"
        "  interval: 10 seconds\n  mode: yolo\n")
    result = subprocess.run([str(EXE), "validate", "-f", str(manifest)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "2 problem(s)" in result.stderr
    assert "spec.interval" in result.stderr and "spec.mode" in result.stderr


def test_validate_refuses_a_password_field(tmp_path: Path) -> None:
    manifest = tmp_path / "pw.yaml"
    manifest.write_text(
        "apiVersion: startupmonkey.dev/v1alpha1\nkind: DatabaseMonitor\n"
        "metadata: {name: shop}\n"
        "spec:\n  database: {host: db, dbname: shop, password: hunter2,"
        " credentialsSecret: {name: s}}\n")
    result = subprocess.run([str(EXE), "validate", "-f", str(manifest)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "spec.database.password" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
