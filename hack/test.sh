#!/usr/bin/env bash
# The one test command (README: `make test`; CI: `.ci/run`). On a fresh machine it installs
# what is missing, builds the control-plane binaries into the cache, then runs lint, types,
# the import contract and every test tier, printing how long each phase took.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=hack/lib.sh
source hack/lib.sh

phase_required "system packages" bash hack/install-system-packages.sh
phase_required "python environment" bash hack/setup-venv.sh
# Headless Chromium and its driver: the dashboard's real-browser test (tests/e2e).
phase_required "browser packages" bash hack/install-system-packages.sh chromium chromium-driver
# The real-pods tier (tests/pods, docs/control-plane.md#real-pods-issue-18) needs containerd,
# runc, buildah, mmdebstrap and the CNI plugins, and kubelet + kube-scheduler (--node).
phase_required "node packages" bash hack/install-node-packages.sh
if [ -f hack/build-binaries.sh ]; then
  phase_required "control-plane binaries" bash hack/build-binaries.sh --node
fi
# promtool checks and unit-tests the chart's alert rules (tests/e2e/test_alerts.py).
phase_required "promtool" bash hack/build-promtool.sh
# The Nu Html Checker validates every dashboard page (tests/unit/test_web_dashboard_html_valid.py);
# fetched once from Maven Central with its dependencies into the cache (hack/install-vnu.sh).
phase_required "vnu (HTML validator)" bash hack/install-vnu.sh
export STARTUPMONKEY_E2E_PODS=1
# The PostgreSQL version matrix (docs/postgres-support.md): builds of 13, 14, 16, 17, 18 in the
# cache; pytest's pg_matrix tier runs one of them per run, chosen from the commit hash
# (`make test-matrix` runs all five).
phase_required "PostgreSQL version matrix" bash hack/install-postgres.sh
export STARTUPMONKEY_PG_MAJORS=${STARTUPMONKEY_PG_MAJORS:-rotate}
phase "lint (ruff)" .venv/bin/ruff check .
# mypy and import-linter run from outside the repo root against the installed package, so
# they see the startupmonkey.<component> mapping and not the bare folders.
phase "types (mypy --strict)" bash -c "cd /tmp && '$ROOT/.venv/bin/mypy' \
  --config-file '$ROOT/pyproject.toml' -p startupmonkey"
phase "import contract" bash -c "cd /tmp && '$ROOT/.venv/bin/lint-imports' \
  --config '$ROOT/.importlinter'"
phase "tests (pytest)" .venv/bin/python -m pytest "$@"
# The quick benchmarks run with the whole suite (not when pytest arguments narrow it) so the
# harness cannot rot; they print figures and judge none (docs/performance.md).
if [ $# -eq 0 ]; then
  phase "benchmarks (quick)" .venv/bin/python bench/run.py --quick
fi

if [ ${#PHASE_FAILURES[@]} -gt 0 ]; then
  echo "FAILED phases: ${PHASE_FAILURES[*]}"
  exit 1
fi
echo "all phases passed"
