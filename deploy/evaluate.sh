#!/usr/bin/env bash
# The evaluation, end to end: the held-out and attacker photos (made once by
# models/train/prepare_data.py from Debian and PyPI packages: fetch_photos.sh's
# natural photos, opencv-doc, scikit-image, scikit-learn; the 18 test photos are
# never trained on), release builds of the nodes, then `ambishare-eval
# evaluation`, which writes docs/EVALUATION.md and its plots (every figure from
# that one run, fixed seed). About 20 minutes on 2 cores after the build (1164 s for model v5 and 1630 s for v4, beside other work; 941-1156 s alone).
# Needs deploy/setup.sh first.
#
#   bash deploy/evaluate.sh [DATA_DIR]     (default: .data/v2; git-ignored)
#   extra flags go to ambishare-eval:  EVAL_FLAGS="--seed 7" bash deploy/evaluate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
data="${1:-.data/v2}"

if [ ! -d "$data/test" ] || [ ! -d "$data/train" ]; then
    echo "== photos: fetch_photos.sh's packages, opencv-doc (Debian), scikit-image and scikit-learn (PyPI) into $data"
    venv="$data/.venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet numpy==2.4.6 pillow==13.0.0 scikit-image==0.26.0 scikit-learn==1.9.1
    "$venv/bin/python" models/train/prepare_data.py --out "$data"
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
