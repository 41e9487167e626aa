"""The JSONL audit log on disk: reading it whatever a crash left, writing it so none is lost.

The standalone executor keeps its Remediations as JSON lines (``executor/journal.py``) and
``startupmonkey run`` reads them back for its final state. A crash mid-write leaves a torn last
line; a disk that filled leaves a short one. Readers skip such lines and say how many
(:func:`read`); writers start every entry on a fresh line (:class:`Appender`), so a torn
fragment never swallows the next record, and create the file readable by its owner only
(0600): it holds SQL, query text and who approved what.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

MODE = 0o600


@dataclasses.dataclass
class Contents:
    """What :func:`read` found: the parsed entries and the lines that were not entries."""

    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    bad_lines: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    ends_with_newline: bool = True


def read(path: Path) -> Contents:
    """Every JSON-object line of ``path`` (none when it does not exist), and the bad ones with
    their line numbers (1-based): torn, not JSON, not UTF-8, or not an object."""
    found = Contents()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return found
    found.ends_with_newline = not data or data.endswith(b"\n")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if isinstance(entry, dict):
            found.entries.append(entry)
        else:
            found.bad_lines.append((number, raw.decode(errors="replace")))
    return found


def _open(path: Path, flags: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, MODE)
    os.fchmod(fd, MODE)  # also an existing file made before this rule
    return fd


class Appender:
    """Appends entries to ``path``, each as one fsynced line that starts on a line of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fresh_line: bool | None = None  # unknown until the first write looks

    def append(self, entry: dict[str, Any], *, sync: bool = True) -> None:
        """Write ``entry`` as one line; ``sync``: fsync before returning."""
        line = json.dumps(entry, default=str).encode() + b"\n"
        fd = _open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            if self._fresh_line is None:
                self._fresh_line = _ends_with_newline(fd)
            if not self._fresh_line:
                line = b"\n" + line  # the torn fragment before stays a bad line of its own
            written = os.write(fd, line)
            self._fresh_line = written == len(line)
            if written != len(line):
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            if sync:
                os.fsync(fd)
        except OSError:
            self._fresh_line = None  # look again next time: the write may be half there
            raise
        finally:
            os.close(fd)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def keep_previous(path: Path) -> Path:
    """Keep the current file as ``<name>.1`` (a hard link, replacing an older ``.1``) before
    it is rewritten: the audit trail of the generation before a compaction survives it."""
    previous = path.with_name(path.name + ".1")
    staging = path.with_name(path.name + ".1.tmp")
    staging.unlink(missing_ok=True)
    os.link(path, staging)
    os.replace(staging, previous)
    return previous


def append_lines(path: Path, lines: list[str]) -> None:
    """Append raw ``lines`` (e.g. quarantined ones) to ``path``, created 0600."""
    fd = _open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (replaced), readable by its owner only."""
    fd = _open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def rewrite(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace ``path`` by ``entries`` atomically (a new file renamed over the old one)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = _open(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"".join(json.dumps(e, default=str).encode() + b"\n" for e in entries))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
