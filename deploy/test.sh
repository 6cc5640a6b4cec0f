#!/usr/bin/env bash
# The test command of the README: every test of the workspace, real sockets,
# real TLS, real ONNX models. Needs deploy/setup.sh to have run once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --workspace --locked "$@"
