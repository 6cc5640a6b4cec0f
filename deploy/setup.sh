#!/usr/bin/env bash
# Installs what a fresh machine needs to build and run ambishare:
#   - the ONNX Runtime shared library (from the PyPI wheel onnxruntime==1.31.1,
#     checked by sha256) into .ort/, where .cargo/config.toml points ORT_DYLIB_PATH;
#   - rustfmt and clippy, when rustup can add them;
#   - SeaweedFS (deploy/seaweedfs.sh) into .seaweedfs/, for the S3 storage tests.
# Idempotent: a second run checks the hash and returns in well under a second.
set -euo pipefail

ORT_VERSION=1.31.1
ORT_LIB=libonnxruntime.so.${ORT_VERSION}
ORT_LIB_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.ort"

have_lib() {
    [ -f "$dest/$ORT_LIB" ] && echo "$ORT_LIB_SHA256  $dest/$ORT_LIB" | sha256sum --check --status
}

if have_lib; then
    echo "setup: ONNX Runtime $ORT_VERSION already in .ort/"
else
    case "$(uname -sm)" in
        "Linux x86_64") ;;
        *) echo "setup: only Linux x86_64 is supported by this script (got $(uname -sm))" >&2; exit 1 ;;
    esac
    echo "setup: fetching ONNX Runtime $ORT_VERSION from PyPI"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
        "onnxruntime==$ORT_VERSION" -d "$tmp"
    wheel=$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl)
    python3 - "$wheel" "$tmp" "$ORT_LIB" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read(f"onnxruntime/capi/{name}")
open(f"{out}/{name}", "wb").write(data)
PY
    echo "$ORT_LIB_SHA256  $tmp/$ORT_LIB" | sha256sum --check --status || {
        echo "setup: sha256 of $ORT_LIB does not match $ORT_LIB_SHA256" >&2
        exit 1
    }
    mkdir -p "$dest"
    install -m 0755 "$tmp/$ORT_LIB" "$dest/$ORT_LIB"
    echo "setup: installed $dest/$ORT_LIB"
fi

if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" ||
            rustup component add "$component" >/dev/null 2>&1 ||
            echo "setup: could not add $component (cargo fmt/clippy may be missing)" >&2
    done
fi

# SeaweedFS, the S3 engine the storage crate's tests run against (prints weed's path).
bash "$(dirname "${BASH_SOURCE[0]}")/seaweedfs.sh" >/dev/null
