#!/usr/bin/env bash
# Build the real Kubernetes control plane used by the e2e tests (etcd, kube-apiserver,
# kube-controller-manager, kubectl) and helm from their Go modules, into a cache directory
# outside the clone, keyed by version. See docs/control-plane.md.
#
#   bash hack/build-binaries.sh          # build what is missing, print timings
#   bash hack/build-binaries.sh --node   # also kubelet and kube-scheduler (the real-pods node,
#                                        # tests/support/node.py; a cold kubelet build ~17 min)
#   . "$(bash hack/build-binaries.sh --print-env-file)"   # put the binaries first on PATH
#
# Cache root: ${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startupmonkey}
#   bin/k8s-<ver>/{kube-apiserver,kube-controller-manager,kubectl}  (+ kubelet, kube-scheduler)
#   bin/etcd-<ver>/etcd
#   bin/helm-<ver>/helm
#   bin/env.sh        (export PATH=... with the three directories first; source it)
#   go-build/, gomod/ (GOCACHE and GOMODCACHE, so a warm run is near-instant)
#
# A binary is skipped when it exists, reports the pinned version and was built from the
# helper module's current go.mod/go.sum with the same Go and flags (a stamp file beside it
# records their hash).
# Builds go to a temp file that is renamed into place, and a lock serialises concurrent runs.
set -euo pipefail
# The whole script is one compound command, so bash has parsed all of it before running any of
# it: editing or checking out this file while a long build runs cannot derail that build.
{

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v4.3.1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODS=$HERE/controlplane
HOME_DIR=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME_DIR/.cache}/startupmonkey}
BIN=$CACHE/bin
K8S_DIR=$BIN/k8s-$K8S_VERSION
ETCD_DIR=$BIN/etcd-$ETCD_VERSION
HELM_DIR=$BIN/helm-$HELM_VERSION
ENV_FILE=$BIN/env.sh

NODE=0
case "${1:-}" in
    --print-env-file)
        echo "$ENV_FILE"
        exit 0
        ;;
    --node) NODE=1 ;;
    "") ;;
    *)
        echo "usage: $0 [--node | --print-env-file]" >&2
        exit 2
        ;;
esac

die() {
    echo "build-binaries: ERROR: $*" >&2
    exit 1
}

GO=${GO:-}
if [[ -z "$GO" ]]; then
    GO=$(command -v go || true)
    [[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
fi
[[ -n "$GO" && -x "$GO" ]] || die "no Go toolchain found at '${GO:-PATH, /usr/local/go/bin}' (install Go >= 1.26 or set GO=/path/to/go)"
GO_VERSION=$(GOTOOLCHAIN=local "$GO" env GOVERSION) || die "'$GO env GOVERSION' failed"
case "$GO_VERSION" in
    go1.2[6-9]* | go1.[3-9][0-9]*) ;;
    *) die "$GO is $GO_VERSION; the pinned modules declare 'go 1.26.0' and need Go >= 1.26" ;;
esac

mkdir -p "$BIN" "$K8S_DIR" "$ETCD_DIR" "$HELM_DIR" "$CACHE/go-build" "$CACHE/gomod" "$CACHE/gopath"
export GOCACHE=$CACHE/go-build
export GOMODCACHE=$CACHE/gomod
export GOPATH=$CACHE/gopath
export GOTOOLCHAIN=local
export CGO_ENABLED=0
# -mod=readonly: go.sum committed in each helper module must already be complete, so the
# build never needs the checksum database (sum.golang.org) for anything not listed there.
export GOFLAGS="-mod=readonly -buildvcs=false"
unset GOOS GOARCH GOEXPERIMENT GOWORK
export GOWORK=off

NICE=()
command -v nice >/dev/null && NICE=(nice -n 10)

# Serialise concurrent runs (a second run waits, then finds everything built).
exec 9>"$BIN/.build.lock"
if command -v flock >/dev/null; then
    if ! flock -n 9; then
        echo "build-binaries: another build holds $BIN/.build.lock; waiting for it"
        flock 9
    fi
fi

TMPFILES=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local f
    for f in "${TMPFILES[@]}"; do rm -f -- "$f"; done
}
trap cleanup EXIT

stamp_of() { # module dir, package, ldflags -> hash of what determines the build
    cat "$1/go.mod" "$1/go.sum" <(echo "$GO_VERSION $2 $3") | sha256sum | cut -d' ' -f1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

SUMMARY=()

# version_of BINARY ARGS: what the binary says about its version (word-split ARGS, no quoting)
version_of() {
    local -a args
    read -ra args <<<"$2"
    "$1" "${args[@]}" 2>&1 || true
}

# build NAME MODULE_DIR PKG OUT_DIR EXPECTED_VERSION_SUBSTRING VERSION_ARGS LDFLAGS
#   The binary run with VERSION_ARGS must print something containing the expected version.
build() {
    local name=$1 moddir=$2 pkg=$3 outdir=$4 want=$5 verargs=$6 ldflags=$7
    local out=$outdir/$name stampfile=$outdir/.$name.stamp stamp start got tmp
    stamp=$(stamp_of "$moddir" "$pkg" "$ldflags")
    start=$(now)
    if [[ -x "$out" && -f "$stampfile" && "$(cat "$stampfile")" == "$stamp" ]]; then
        got=$(version_of "$out" "$verargs")
        if [[ "$got" == *"$want"* ]]; then
            echo "build-binaries: $name $want: cached ($(elapsed "$start")s) $out"
            SUMMARY+=("$name: cached $(elapsed "$start")s")
            return 0
        fi
        echo "build-binaries: $name at $out reports '$got', want $want: rebuilding"
    fi
    echo "build-binaries: building $name $want from $pkg (module $moddir) ..."
    tmp=$(mktemp "$outdir/.$name.tmp.XXXXXX")
    TMPFILES+=("$tmp")
    if ! (cd "$moddir" && "${NICE[@]}" "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"); then
        die "go build of $name ($pkg in $moddir) failed; see the output above"
    fi
    got=$(version_of "$tmp" "$verargs")
    [[ "$got" == *"$want"* ]] || die "freshly built $name reports '$got', expected $want"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$out"
    echo "$stamp" >"$stampfile.tmp.$$" && mv -f "$stampfile.tmp.$$" "$stampfile"
    echo "build-binaries: built $name $want in $(elapsed "$start")s -> $out"
    SUMMARY+=("$name: built $(elapsed "$start")s")
}

K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
K8S_LDFLAGS="-s -w"
for pkgvar in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkgvar.gitVersion=$K8S_VERSION -X $pkgvar.gitMajor=1"
    K8S_LDFLAGS+=" -X $pkgvar.gitMinor=$K8S_MINOR -X $pkgvar.gitTreeState=clean"
done

TOTAL_START=$(now)
echo "build-binaries: cache $CACHE, $GO ($GO_VERSION)"

build etcd "$MODS/etcd" go.etcd.io/etcd/server/v3 "$ETCD_DIR" "${ETCD_VERSION#v}" \
    "--version" "-s -w"
build kube-apiserver "$MODS/kube" k8s.io/kubernetes/cmd/kube-apiserver "$K8S_DIR" "$K8S_VERSION" \
    "--version" "$K8S_LDFLAGS"
build kube-controller-manager "$MODS/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$K8S_DIR" \
    "$K8S_VERSION" "--version" "$K8S_LDFLAGS"
build kubectl "$MODS/kube" k8s.io/kubernetes/cmd/kubectl "$K8S_DIR" "$K8S_VERSION" \
    "version --client" "$K8S_LDFLAGS"
if [[ "$NODE" == 1 ]]; then
    build kube-scheduler "$MODS/kube" k8s.io/kubernetes/cmd/kube-scheduler "$K8S_DIR" \
        "$K8S_VERSION" "--version" "$K8S_LDFLAGS"
    build kubelet "$MODS/kube" k8s.io/kubernetes/cmd/kubelet "$K8S_DIR" "$K8S_VERSION" \
        "--version" "$K8S_LDFLAGS"
fi
build helm "$MODS/helm" helm.sh/helm/v4/cmd/helm "$HELM_DIR" "$HELM_VERSION" \
    "version --template {{.Version}}" "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"

cat >"$ENV_FILE.tmp.$$" <<EOF
# Written by hack/build-binaries.sh: source it to put the control-plane binaries first on PATH.
export STARTUPMONKEY_K8S_BIN='$K8S_DIR'
export STARTUPMONKEY_ETCD_BIN='$ETCD_DIR'
export STARTUPMONKEY_HELM_BIN='$HELM_DIR'
export PATH='$K8S_DIR:$ETCD_DIR:$HELM_DIR':"\$PATH"
EOF
mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"

echo "build-binaries: done in $(elapsed "$TOTAL_START")s"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "build-binaries: binaries in:"
echo "  $K8S_DIR"
echo "  $ETCD_DIR"
echo "  $HELM_DIR"
echo "build-binaries: to use them: . $ENV_FILE"
exit 0
}
