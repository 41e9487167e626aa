#!/usr/bin/env bash
# Installs the Debian packages of `make image` and the real-pods node (tests/support/node.py),
# only when they are missing: buildah, mmdebstrap and skopeo build the images without a
# registry or a Docker engine; containerd, runc and the CNI plugins run the pods; socat relays
# ports into the node's network namespace; gcc and libc6-dev link the static pause binary.
# crun is not used: it fails on this kind of host (cgroup v1/hybrid). Needs root (or sudo).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-system-packages.sh" buildah mmdebstrap skopeo \
  containerd runc containernetworking-plugins socat iproute2 gcc libc6-dev
