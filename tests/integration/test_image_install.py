"""The image's install steps (from the Dockerfile) work in a fresh virtualenv.

No container engine runs on these machines, so the Dockerfile's COPY and pip steps are
replayed here: the same files, a new virtualenv, `pip install .`, then every server
subcommand answers `--help`. Uses the package index (or pip's cache). The bytecode step is
replayed too: every module of the package gets bytecode that never checks its source, which
a process on the image's read-only root loads instead of compiling the imports at each start.
"""

from __future__ import annotations

import os
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
    (compile_args,) = re.findall(r"/bin/python -m compileall (.+) /opt/startupmonkey/lib$",
                                 DOCKERFILE, re.M)
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache)
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", *compile_args.split(),
                    str(venv / "lib")], check=True, timeout=300)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for command in ("operator", "collector", "analyser", "executor"):
        result = subprocess.run([str(venv / "bin" / "startupmonkey"), command, "--help"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                env=env)
        assert result.returncode == 0, result.stderr
    (package,) = venv.glob("lib/python*/site-packages/startupmonkey")
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 20
    tag = sys.implementation.cache_tag
    for source_file in sources:
        compiled = source_file.parent / "__pycache__" / f"{source_file.stem}.{tag}.pyc"
        assert compiled.exists(), f"no bytecode for {source_file.relative_to(package)}"
        # PEP 552 flags: bit 0 hash-based, bit 1 check the source; 0b01 is unchecked-hash.
        flags = int.from_bytes(compiled.read_bytes()[4:8], "little")
        assert flags == 0b01, (source_file.relative_to(package), flags)
