#!/usr/bin/env bash
# Creates .venv and installs the package with its dev extras as a *strict* editable install
# (the default editable finder does not map the namespace portions;
# docs/design.md#repository-layout). Re-run after adding a file: strict mode links files, it
# does not watch folders.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "need Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
# A venv left half-made (e.g. by a Python without ensurepip) has no pip: make it again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "removing a .venv without pip"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict 2>&1 \
  | grep -vE '^\s*$|editable|\*{10}|!!|^\s{2,}' || true
.venv/bin/python -c 'import startupmonkey.cli, startupmonkey.executor.about' \
  || { echo "the package did not install" >&2; exit 1; }
echo "python environment ready: $(.venv/bin/python --version)"
