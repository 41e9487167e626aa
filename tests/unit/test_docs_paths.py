"""Docs that point somewhere must point at something that exists.

``docs/architecture.md`` maps every concept to its file, and comments cite the contract by
section (``docs/design.md#frozen-names``): a moved file or a renamed heading fails here, not in a
newcomer's hands. The design documents outside the repository are no longer cited at all.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: Spelled in two parts so that this file does not cite them itself.
OUTSIDE_DOCS = ("DESIGN" + ".md", "STYLE" + ".md")
_EXTENSIONS = r"\.(py|pyi|md|sh|yaml|yml|json|toml|proto|cfg|txt|tpl)$"
_ANCHOR_REF = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")
_SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                 ".hypothesis", ".cache", "build", "dist"}


def _looks_like_path(token: str) -> bool:
    if " " in token or not re.fullmatch(r"[\w.*/-]+", token):
        return False
    return ("/" in token or token.startswith(".") or bool(re.search(_EXTENSIONS, token))
            or bool(re.fullmatch(r"[A-Z][a-z]+file", token)))


def architecture_paths() -> list[str]:
    """Every backticked token of docs/architecture.md that names a repository path."""
    tokens = re.findall(r"`([^`]+)`", ARCHITECTURE.read_text())
    return sorted({token for token in tokens if _looks_like_path(token)})


def repository_files() -> list[Path]:
    """Tracked and new (not ignored) files; a plain walk when there is no git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        return [path for path in ROOT.rglob("*") if path.is_file()
                and not _SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)]
    names = [name for name in listed.decode().split("\0") if name]
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces become hyphens."""
    found = set()
    for heading in re.findall(r"^#+ +(.+?) *$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower())
        found.add(slug.replace(" ", "-"))
    return found


def test_architecture_names_paths() -> None:
    assert len(architecture_paths()) > 20, "the path pattern no longer matches the page"


@pytest.mark.parametrize("path", architecture_paths())
def test_every_path_in_the_architecture_page_exists(path: str) -> None:
    if "*" in path:
        assert list(ROOT.glob(path)), f"docs/architecture.md names {path}: nothing matches"
    else:
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}: not found"


def test_every_cited_docs_section_exists() -> None:
    headings: dict[str, set[str]] = {}
    broken = []
    for path in repository_files():
        text = path.read_bytes().decode(errors="replace")
        for page, anchor in _ANCHOR_REF.findall(text):
            if page not in headings:
                target = ROOT / "docs" / page
                headings[page] = anchors(target.read_text()) if target.exists() else set()
            if anchor not in headings[page]:
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert not broken, "sections that do not exist:\n" + "\n".join(broken)


def test_no_file_cites_the_design_documents_outside_the_repository() -> None:
    citing = []
    for path in repository_files():
        data = path.read_bytes()
        for number, line in enumerate(data.splitlines(), start=1):
            if any(name.encode() in line for name in OUTSIDE_DOCS):
                citing.append(f"{path.relative_to(ROOT)}:{number}")
    assert not citing, "cite docs/design.md instead:\n" + "\n".join(citing)
