#!/usr/bin/env bash
# Build promtool (Prometheus's rule checker and rule unit-test runner) from its Go module into
# the cache outside the clone, keyed by version. The tests of the chart's PrometheusRule run
# `promtool check rules` and `promtool test rules` with it (tests/e2e/test_alerts.py,
# docs/operator.md#alerts-and-dashboards). Same rules as hack/build-binaries.sh: a helper
# module with a committed go.sum (hack/promtool/), -mod=readonly, nice, a stamp, a lock.
#
#   bash hack/build-promtool.sh                # build it unless the cached one is current
#   bash hack/build-promtool.sh --print-path   # where the binary is (built or not)
#
# Cache root: ${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startupmonkey}
#   bin/promtool-<ver>/promtool  (+ .promtool.stamp: hash of go.mod, go.sum, Go, ldflags)
#   go-build/, gomod/            (GOCACHE and GOMODCACHE, shared with build-binaries.sh)
set -euo pipefail
{

# github.com/prometheus/prometheus v0.3XX.Y is Prometheus 3.XX.Y.
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMTOOL_VERSION=3.16.0

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD=$HERE/promtool
HOME_DIR=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME_DIR/.cache}/startupmonkey}
OUT_DIR=$CACHE/bin/promtool-v$PROMTOOL_VERSION
OUT=$OUT_DIR/promtool
STAMP_FILE=$OUT_DIR/.promtool.stamp
LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION"
LDFLAGS+=" -X github.com/prometheus/common/version.Branch=HEAD"
LDFLAGS+=" -X github.com/prometheus/common/version.Revision=$PROMETHEUS_MODULE_VERSION"

case "${1:-}" in
    --print-path) echo "$OUT"; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--print-path]" >&2; exit 2 ;;
esac

die() {
    echo "build-promtool: ERROR: $*" >&2
    exit 1
}

grep -Eq "^\s*(require )?github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION( |\$)" "$MOD/go.mod" \
    || die "$MOD/go.mod does not require github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION"

GO=${GO:-$(command -v go || true)}
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "$GO" && -x "$GO" ]] || die "no Go toolchain found (install Go >= 1.26 or set GO=/path/to/go)"
GO_VERSION=$(GOTOOLCHAIN=local "$GO" env GOVERSION) || die "'$GO env GOVERSION' failed"
case "$GO_VERSION" in
    go1.2[6-9]* | go1.[3-9][0-9]*) ;;
    *) die "$GO is $GO_VERSION; hack/promtool/go.mod says which Go it needs (go 1.26.7 for $PROMETHEUS_MODULE_VERSION)" ;;
esac

mkdir -p "$OUT_DIR" "$CACHE/go-build" "$CACHE/gomod" "$CACHE/gopath"
export GOCACHE=$CACHE/go-build GOMODCACHE=$CACHE/gomod GOPATH=$CACHE/gopath
export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
unset GOOS GOARCH GOEXPERIMENT

exec 9>"$OUT_DIR/.build.lock"
if command -v flock >/dev/null && ! flock -n 9; then
    echo "build-promtool: another build holds $OUT_DIR/.build.lock; waiting for it"
    flock 9
fi

stamp=$(cat "$MOD/go.mod" "$MOD/go.sum" <(echo "$GO_VERSION $LDFLAGS") | sha256sum | cut -d' ' -f1)
start=$(date +%s.%N)
took() { awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [[ -x "$OUT" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$stamp" ]] \
        && "$OUT" --version 2>&1 | grep -q "version $PROMTOOL_VERSION "; then
    echo "build-promtool: promtool $PROMTOOL_VERSION: cached ($(took)s) $OUT"
    exit 0
fi

echo "build-promtool: building promtool $PROMTOOL_VERSION ($PROMETHEUS_MODULE_VERSION) with $GO_VERSION, cache $CACHE ..."
tmp=$(mktemp "$OUT_DIR/.promtool.tmp.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
NICE=()
command -v nice >/dev/null && NICE=(nice -n 10)
(cd "$MOD" && "${NICE[@]}" "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$tmp" \
    github.com/prometheus/prometheus/cmd/promtool) || die "go build of promtool failed; see above"
got=$("$tmp" --version 2>&1 || true)
[[ "$got" == *"version $PROMTOOL_VERSION "* ]] || die "the built promtool reports '$got', want $PROMTOOL_VERSION"
chmod 0755 "$tmp"
mv -f "$tmp" "$OUT"
echo "$stamp" >"$STAMP_FILE.tmp.$$" && mv -f "$STAMP_FILE.tmp.$$" "$STAMP_FILE"
echo "build-promtool: built promtool $PROMTOOL_VERSION in $(took)s -> $OUT"
exit 0
}
