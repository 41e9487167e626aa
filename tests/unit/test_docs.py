"""Docs that cannot rot: the generated configuration reference and the runnable examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from startupmonkey import manifest

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_models() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_config_docs.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_manifest_is_valid(path: Path) -> None:
    monitor = manifest.load(path)
    assert monitor.metadata.name


def test_the_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
