"""Maps the design card's top-level component folders onto ``startupmonkey.<component>``.

``operator/``, ``collector/``, ``analyser/`` and ``executor/`` live at the repository root but
install as ``startupmonkey.operator`` and friends. The five top-level folders are namespace
portions (no ``__init__.py``) so that a folder named ``operator`` at the root can never shadow
the standard library's ``operator`` module (docs/design.md#repository-layout).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).parent
COMPONENTS = ("operator", "collector", "analyser", "executor")


def _packages() -> tuple[list[str], dict[str, str]]:
    package_dir = {"startupmonkey": "startupmonkey"}
    packages = ["startupmonkey"] + [
        f"startupmonkey.{p}" for p in find_namespace_packages(where="startupmonkey")
        if "__pycache__" not in p
    ]
    for component in COMPONENTS:
        name = f"startupmonkey.{component}"
        package_dir[name] = component
        packages.append(name)
        packages += [
            f"{name}.{p}" for p in find_namespace_packages(where=component)
            if "__pycache__" not in p
        ]
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
