"""The container image without a container engine: its install steps work in a fresh
virtualenv, and its entrypoint and every Deployment's command are real CLI subcommands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from startupmonkey import cli
from startupmonkey.operator import monitor as operator_monitor

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_pins_a_slim_base_and_runs_as_non_root() -> None:
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", b) for b in bases)
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "USER 10001:10001" in final
    assert "pip install" not in final, "no build tools or installs in the final stage"
    assert 'ENTRYPOINT ["startupmonkey"]' in final


def test_deployment_commands_are_cli_subcommands() -> None:
    chart = (ROOT / "helm" / "startupmonkey" / "templates" / "deployment.yaml").read_text()
    (command,) = re.findall(r"command: \[startupmonkey, (\w+)", chart)
    assert command in cli.COMMANDS
    children = (ROOT / "operator" / "children.py").read_text()
    assert '"command": ["startupmonkey", str(component), "--config"' in children
    for component in operator_monitor.DATA_PLANE:
        assert str(component) in cli.COMMANDS
        assert "--config" in _help(str(component))


def _help(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "startupmonkey.cli", command, "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
