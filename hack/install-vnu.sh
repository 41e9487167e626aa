#!/usr/bin/env bash
# Fetch the Nu Html Checker (vnu, the W3C's HTML validator) and every jar it needs at run time
# from Maven Central into the cache outside the clone, keyed by version. The dashboard's pages
# are checked with it (tests/unit/test_web_dashboard_html_valid.py, issue 25). Maven resolves
# the dependencies from a tiny pom (hack/vnu/pom.xml) into a local repository inside the cache,
# so nothing lands in ~/.m2 and a cold machine works. Same rules as hack/build-promtool.sh:
# a stamp, a lock, a fast "cached" path.
#
#   bash hack/install-vnu.sh                # fetch it unless the cached one is current
#   bash hack/install-vnu.sh --print-path   # the directory of jars (fetched or not)
#
# Run it:  java -cp "$(bash hack/install-vnu.sh --print-path)/*" \
#              nu.validator.client.SimpleCommandLineValidator --format json --stdout FILES...
#
# Cache root: ${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startupmonkey}
#   vnu-<ver>/*.jar  (+ .vnu.stamp: hash of hack/vnu/pom.xml and the jar names)
#   m2/              (Maven's local repository for these downloads)
set -euo pipefail
{

# Maven Central serves nu.validator:validator 26.1.11 (older 2x.y releases are not there).
VNU_VERSION=26.1.11
MAIN_CLASS=nu.validator.client.SimpleCommandLineValidator

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM=$HERE/vnu/pom.xml
HOME_DIR=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${STARTUPMONKEY_CACHE:-${XDG_CACHE_HOME:-$HOME_DIR/.cache}/startupmonkey}
OUT=$CACHE/vnu-$VNU_VERSION
STAMP_FILE=$OUT/.vnu.stamp
M2=$CACHE/m2

case "${1:-}" in
    --print-path) echo "$OUT"; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--print-path]" >&2; exit 2 ;;
esac

die() {
    echo "install-vnu: ERROR: $*" >&2
    exit 1
}

[[ -f "$POM" ]] || die "$POM is missing"
grep -q "<version>$VNU_VERSION</version>" "$POM" \
    || die "$POM does not depend on nu.validator:validator $VNU_VERSION (keep the two in step)"

start=$(date +%s.%N)
took() { awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
pom_hash=$(sha256sum "$POM" | cut -d' ' -f1)

# The stamp is the pom's hash, then one jar name a line: cached when all of them are there.
cached() {
    [[ -f "$STAMP_FILE" && -f "$OUT/validator-$VNU_VERSION.jar" ]] || return 1
    [[ "$(head -n1 "$STAMP_FILE")" == "$pom_hash" ]] || return 1
    local jar
    while IFS= read -r jar; do
        [[ -f "$OUT/$jar" ]] || return 1
    done < <(tail -n +2 "$STAMP_FILE")
}

if cached; then
    echo "install-vnu: vnu $VNU_VERSION: cached ($(took)s) $OUT"
    exit 0
fi

JAVA=${JAVA:-$(command -v java || true)}
[[ -n "$JAVA" && -x "$JAVA" ]] || die "no java found (install a JRE >= 11, e.g. apt-get install \
openjdk-17-jre-headless, or set JAVA=/path/to/java)"
MVN=${MVN:-$(command -v mvn || true)}
[[ -n "$MVN" && -x "$MVN" ]] || die "no Maven found (apt-get install maven, or set MVN=/path/to/mvn)"

mkdir -p "$CACHE" "$M2"
exec 9>"$CACHE/.vnu-$VNU_VERSION.lock"
if command -v flock >/dev/null && ! flock -n 9; then
    echo "install-vnu: another install holds $CACHE/.vnu-$VNU_VERSION.lock; waiting for it"
    flock 9
fi
if cached; then  # the other install did it
    echo "install-vnu: vnu $VNU_VERSION: cached ($(took)s) $OUT"
    exit 0
fi

echo "install-vnu: fetching vnu $VNU_VERSION and its runtime dependencies with Maven, cache $CACHE ..."
tmp=$(mktemp -d "$CACHE/.vnu-$VNU_VERSION.tmp.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
# From inside $tmp so Maven's own files (if any) land there, not in the clone.
(cd "$tmp" && "$MVN" -q -B -Dstyle.color=never -f "$POM" -Dmaven.repo.local="$M2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/lib") \
    || die "mvn could not fetch nu.validator:validator:$VNU_VERSION and its dependencies; see \
above (is Maven Central reachable? a proxy goes in ~/.m2/settings.xml or MAVEN_OPTS)"
[[ -f "$tmp/lib/validator-$VNU_VERSION.jar" ]] \
    || die "Maven finished but $tmp/lib has no validator-$VNU_VERSION.jar"

# It must start and validate, not just load: a one-line document from stdin.
got=$("$JAVA" -cp "$tmp/lib/*" "$MAIN_CLASS" --version 2>&1 || true)
[[ "$got" == "$VNU_VERSION" ]] || die "the fetched vnu reports '$got', want $VNU_VERSION"
doc='<!DOCTYPE html><html lang="en"><head><title>t</title></head><body><p>ok</p></body></html>'
if ! check=$(echo "$doc" | "$JAVA" -cp "$tmp/lib/*" "$MAIN_CLASS" --errors-only - 2>&1); then
    die "the fetched vnu failed to check a valid document: $check"
fi

{ echo "$pom_hash"; (cd "$tmp/lib" && ls -1 -- *.jar); } >"$tmp/lib/.vnu.stamp"
rm -rf -- "$OUT"
mv -- "$tmp/lib" "$OUT"
echo "install-vnu: installed vnu $VNU_VERSION ($(find "$OUT" -name '*.jar' | wc -l) jars) in $(took)s -> $OUT"
exit 0
}
