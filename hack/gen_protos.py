"""Regenerate the committed gRPC/protobuf stubs in ``startupmonkey/v1/`` from ``proto/``.

Usage (from anywhere; paths are resolved from this file)::

    .venv/bin/python hack/gen_protos.py          # regenerate and update startupmonkey/v1/
    .venv/bin/python hack/gen_protos.py --check  # exit 1 with a summary if stubs are stale

It runs ``python -m grpc_tools.protoc`` (the pinned grpcio-tools, with the well-known types it
bundles) with ``-I proto`` so generated imports read ``from startupmonkey.v1 import x_pb2``,
and writes ``*_pb2.py``, ``*_pb2_grpc.py`` (only for files that define a service) and their
``*.pyi`` (mypy-protobuf's ``protoc-gen-mypy`` and ``protoc-gen-mypy_grpc``). Output depends
only on the .proto files and the tool versions, so ``--check`` can compare bytes.

Every message, field, enum, enum value, service and method must carry a comment; the script
refuses to generate otherwise (the contracts are read by people working on other components).
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE_DIR = Path("startupmonkey") / "v1"
STUB_DIR = ROOT / PROTO_PACKAGE_DIR
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
DESCRIPTOR_SET = "descriptors.binpb"

# Field numbers in descriptor.proto, used to build SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


class GenerationError(RuntimeError):
    """protoc failed, a plugin is missing, or a proto element lacks a comment."""


@dataclass(frozen=True)
class Diff:
    """Differences between the committed stubs and freshly generated ones."""

    changed: dict[str, str]
    missing: list[str]
    extra: list[str]

    @property
    def clean(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def summary(self) -> str:
        lines = [f"  changed: {name} ({stat})" for name, stat in sorted(self.changed.items())]
        lines += [f"  missing: {name}" for name in self.missing]
        lines += [f"  extra:   {name}" for name in self.extra]
        return "\n".join(lines)


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to ``proto/``, in a stable order."""
    found = (PROTO_ROOT / PROTO_PACKAGE_DIR).glob("*.proto")
    return sorted(p.relative_to(PROTO_ROOT) for p in found)


def _plugin(name: str) -> Path:
    beside = Path(sys.executable).parent / name
    found = beside if beside.exists() else shutil.which(name)
    if not found:
        raise GenerationError(f"{name} not found: install the dev extras (mypy-protobuf)")
    return Path(found)


def _run_protoc(out_dir: Path, protos: list[Path]) -> None:
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(PROTO_ROOT),
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        "--include_source_info",
        f"--descriptor_set_out={out_dir / DESCRIPTOR_SET}",
        *(str(p) for p in protos),
    ]
    result = subprocess.run(args, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(f"protoc failed ({result.returncode}):\n{result.stderr}")


def _load_descriptors(out_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString((out_dir / DESCRIPTOR_SET).read_bytes())
    return fds


def _message_elements(
    msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    if msg.options.map_entry:  # synthesized for map<,> fields; has no source of its own
        return
    name = f"{prefix}.{msg.name}"
    yield path, f"message {name}"
    for i, field in enumerate(msg.field):
        yield (*path, _MESSAGE_FIELD, i), f"field {name}.{field.name}"
    for i, nested in enumerate(msg.nested_type):
        yield from _message_elements(nested, (*path, _MESSAGE_NESTED, i), name)
    for i, enum in enumerate(msg.enum_type):
        yield from _enum_elements(enum, (*path, _MESSAGE_ENUM, i), name)


def _enum_elements(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str
) -> Iterator[tuple[tuple[int, ...], str]]:
    name = f"{prefix}.{enum.name}"
    yield path, f"enum {name}"
    for i, value in enumerate(enum.value):
        yield (*path, _ENUM_VALUE, i), f"enum value {name}.{value.name}"


def _file_elements(
    fd: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], str]]:
    for i, msg in enumerate(fd.message_type):
        yield from _message_elements(msg, (_FILE_MESSAGE, i), fd.package)
    for i, enum in enumerate(fd.enum_type):
        yield from _enum_elements(enum, (_FILE_ENUM, i), fd.package)
    for i, service in enumerate(fd.service):
        yield (_FILE_SERVICE, i), f"service {fd.package}.{service.name}"
        for j, method in enumerate(service.method):
            yield (_FILE_SERVICE, i, _SERVICE_METHOD, j), f"rpc {service.name}.{method.name}"


def undocumented(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Every element of our .proto files that has neither a leading nor a trailing comment."""
    missing = []
    for fd in fds.file:
        if not fd.name.startswith(f"{PROTO_PACKAGE_DIR.as_posix()}/"):
            continue
        documented = {
            tuple(loc.path)
            for loc in fd.source_code_info.location
            if loc.leading_comments.strip() or loc.trailing_comments.strip()
        }
        missing += [
            f"{fd.name}: {what}" for path, what in _file_elements(fd) if path not in documented
        ]
    return missing


def _drop_serviceless_grpc_stubs(out_dir: Path, fds: descriptor_pb2.FileDescriptorSet) -> None:
    """grpcio-tools writes a ``_pb2_grpc`` module for every file; keep those with services."""
    for fd in fds.file:
        if fd.service or not fd.name.endswith(".proto"):
            continue
        stem = fd.name.removesuffix(".proto")
        for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
            (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)


def generate(out_root: Path) -> dict[str, bytes]:
    """Generate the stubs under ``out_root`` and return them as {file name: content}."""
    protos = proto_files()
    if not protos:
        raise GenerationError(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE_DIR}")
    _run_protoc(out_root, protos)
    fds = _load_descriptors(out_root)
    if gaps := undocumented(fds):
        raise GenerationError("elements without a comment:\n  " + "\n  ".join(gaps))
    _drop_serviceless_grpc_stubs(out_root, fds)
    return _generated_files(out_root / PROTO_PACKAGE_DIR)


def _generated_files(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def _line_stat(old: bytes, new: bytes) -> str:
    added = removed = 0
    diff = difflib.unified_diff(
        old.decode(errors="replace").splitlines(),
        new.decode(errors="replace").splitlines(),
        lineterm="",
        n=0,
    )
    for line in diff:
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return f"+{added} -{removed} lines"


def compare(committed: dict[str, bytes], fresh: dict[str, bytes]) -> Diff:
    """What would change if ``fresh`` replaced ``committed``."""
    changed = {
        name: _line_stat(committed[name], content)
        for name, content in fresh.items()
        if name in committed and committed[name] != content
    }
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    return Diff(changed=changed, missing=missing, extra=extra)


def _write(fresh: dict[str, bytes], committed: Iterable[str]) -> list[str]:
    touched = []
    for name in sorted(set(committed) - set(fresh)):
        (STUB_DIR / name).unlink()
        touched.append(f"removed {name}")
    for name, content in fresh.items():
        target = STUB_DIR / name
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
            touched.append(f"wrote {name}")
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail if the committed stubs differ",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gen_protos-") as tmp:
        try:
            fresh = generate(Path(tmp))
        except GenerationError as exc:
            print(f"gen_protos: {exc}", file=sys.stderr)
            return 1
    committed = _generated_files(STUB_DIR)
    if args.check:
        diff = compare(committed, fresh)
        if diff.clean:
            print(f"gen_protos: {len(fresh)} stubs in {PROTO_PACKAGE_DIR} are up to date")
            return 0
        print(
            f"gen_protos: stubs in {PROTO_PACKAGE_DIR} are stale:\n{diff.summary()}\n"
            "regenerate with: .venv/bin/python hack/gen_protos.py",
            file=sys.stderr,
        )
        return 1
    STUB_DIR.mkdir(parents=True, exist_ok=True)
    touched = _write(fresh, committed)
    print("gen_protos: " + ("; ".join(touched) if touched else "stubs already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
