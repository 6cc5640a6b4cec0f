#!/usr/bin/env bash
# The evaluation, end to end: the held-out and attacker photos (made once, from
# PyPI's scikit-image and scikit-learn and Debian's opencv-doc), release builds
# of the nodes, then `ambishare-eval evaluation`, which writes
# docs/EVALUATION.md and its plots (every figure from that one run, fixed seed).
# About 4 minutes on 2 cores after the build. Needs deploy/setup.sh first.
#
#   bash deploy/evaluate.sh [DATA_DIR]     (default: .data; git-ignored)
#   extra flags go to ambishare-eval:  EVAL_FLAGS="--seed 7" bash deploy/evaluate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
data="${1:-.data}"

if [ ! -d "$data/test" ] || [ ! -d "$data/train" ]; then
    echo "== photos: scikit-image, scikit-learn (PyPI) and opencv-doc (Debian) into $data"
    venv="$data/.venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet numpy==2.4.6 pillow==13.0.0 scikit-image==0.26.0 scikit-learn==1.9.1
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download opencv-doc >/dev/null && dpkg -x opencv-doc_*.deb opencv-doc)
    "$venv/bin/python" models/train/prepare_data.py --opencv-doc "$tmp/opencv-doc" --out "$data"
fi
command -v cwebp >/dev/null || echo "(no cwebp: WebP is left out; apt-get install webp adds it)"

echo "== release build"
cargo build --release --locked -p ambishare-registry -p ambishare-owner -p ambishare-client --bins
cargo build --release --locked -p ambishare-tests --bin ambishare-eval
export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"

echo "== evaluation (writes docs/EVALUATION.md)"
# shellcheck disable=SC2086
target/release/ambishare-eval evaluation --model models/photo64 --images "$data/test" \
    --attacker-images "$data/train" --out docs ${EVAL_FLAGS:-}
