"""The package layout of docs/design.md#repository-layout: component folders mapped
into startupmonkey.<component>,
no shadowing of the standard library, and an import contract that really bites."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import startupmonkey.analyser
import startupmonkey.collector
import startupmonkey.executor
import startupmonkey.operator

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
COMPONENTS = ("operator", "collector", "analyser", "executor")


def test_top_level_folders_are_namespace_portions() -> None:
    for folder in ("startupmonkey", *COMPONENTS):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_components_install_under_startupmonkey() -> None:
    for module in (startupmonkey.operator, startupmonkey.collector, startupmonkey.analyser,
                   startupmonkey.executor):
        (path,) = list(module.__path__)
        component = module.__name__.rsplit(".", 1)[1]
        assert Path(path).resolve().samefile(ROOT / component) or (
            Path(path) / "about.py").resolve() == (ROOT / component / "about.py")


def test_import_operator_in_clean_interpreter_is_stdlib() -> None:
    code = "import operator, sys; print(operator.__file__); print(hasattr(operator, 'itemgetter'))"
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=30)
    location, has_itemgetter = result.stdout.split()
    assert has_itemgetter == "True"
    assert not Path(location).resolve().is_relative_to(ROOT)


def _lint(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(LINT_IMPORTS.parent)}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_import_contract_is_kept_by_the_installed_package(tmp_path: Path) -> None:
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _copy_installed_package(target: Path) -> Path:
    package = target / "startupmonkey"
    package.mkdir()
    shutil.copytree(ROOT / "startupmonkey", package, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for component in COMPONENTS:
        shutil.copytree(ROOT / component, package / component,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return package


def test_import_contract_fails_on_a_deliberate_violation(tmp_path: Path) -> None:
    package = _copy_installed_package(tmp_path)
    clean = _lint(tmp_path, extra_path=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (package / "collector" / "sneaky.py").write_text(
        '"""A collector module that reaches into the executor."""\n'
        "import startupmonkey.executor.about\n")
    broken = _lint(tmp_path, extra_path=tmp_path)
    assert broken.returncode != 0
    assert "startupmonkey.collector.sneaky" in broken.stdout
    assert "BROKEN" in broken.stdout


def test_test_file_basenames_are_unique() -> None:
    """pytest imports test modules by basename (rootdir-relative, no packages): two
    files with one name in different tiers make collection fail for the whole run."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, "test files share a basename: " + "; ".join(clashes)
