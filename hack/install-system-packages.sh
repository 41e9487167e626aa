#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, only when they are missing:
# the PostgreSQL 15 server (with pg_stat_statements), HypoPG, openssl (test certificates) and
# python3-venv (Debian's Python has no venv/ensurepip without it). Needs root (or sudo).
set -euo pipefail
PACKAGES=(postgresql-15 postgresql-15-hypopg openssl python3-venv)
# Arguments replace the list: hack/install-node-packages.sh installs the real-pods node's this
# way, and hack/test.sh the browser of the dashboard's test (chromium, chromium-driver), which
# the demo does not need.
[ $# -eq 0 ] || PACKAGES=("$@")
if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  echo "this script needs Debian or Ubuntu (dpkg and apt-get); install these yourself:" >&2
  echo "  PostgreSQL 15 server binaries with pg_stat_statements, HypoPG for PostgreSQL 15," >&2
  echo "  openssl and a Python >= 3.11 with venv (the tests also want Chromium with its" >&2
  echo "  chromedriver, for the dashboard's browser test); then run hack/setup-venv.sh" >&2
  exit 1
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${PACKAGES[*]}"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
