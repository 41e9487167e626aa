"""The image's install steps (from the Dockerfile) work in a fresh virtualenv.

No container engine runs on these machines, so the Dockerfile's COPY and pip steps are
replayed here: the same files, a new virtualenv, `pip install .`, then every server
subcommand answers `--help`. Uses the package index (or pip's cache).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.mark.timeout(600)
def test_the_install_steps_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for copied in re.findall(r"^COPY (?!--from)(.+) \./", DOCKERFILE, re.M):
        for name in copied.split():
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], check=True,
                   timeout=540)
    for command in ("operator", "collector", "analyser", "executor"):
        result = subprocess.run([str(venv / "bin" / "startupmonkey"), command, "--help"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
