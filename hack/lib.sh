# Shared shell helpers for hack/ scripts: timed phases and the cache location.
# shellcheck shell=bash

# Where slow builds and downloads are cached, outside the clone, keyed by version below it.
STARTUPMONKEY_CACHE="${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startupmonkey}"
export STARTUPMONKEY_CACHE

PHASE_FAILURES=()

# phase NAME CMD...: run CMD, print its duration, remember a failure and carry on.
phase() {
  local name=$1; shift
  local start end status
  start=$(date +%s%N)
  echo "==> ${name}"
  set +e
  "$@"
  status=$?
  set -e
  end=$(date +%s%N)
  local tenths=$(( (end - start) / 100000000 ))
  printf '<== %s: %s in %d.%ds\n' "$name" "$([ $status -eq 0 ] && echo ok || echo "FAILED ($status)")" \
    $((tenths / 10)) $((tenths % 10))
  [ $status -eq 0 ] || PHASE_FAILURES+=("$name")
  return 0
}

# phase_required NAME CMD...: like phase, but stop the whole script when it fails.
phase_required() {
  phase "$@"
  if [ ${#PHASE_FAILURES[@]} -gt 0 ]; then
    echo "stopping: ${PHASE_FAILURES[*]} failed" >&2
    exit 1
  fi
}
