#!/usr/bin/env bash
# The long reliability runs (CI runs only their fast part: the hostile-input,
# mTLS and fuzz-smoke tests of the test suite):
#   1. fuzzing: every cargo-fuzz target for 10 minutes (deploy/fuzz.sh);
#   2. crash consistency: 50 trials of SIGKILL during a large publish, the
#      registry and the owner in turn, then 50 more that also kill both at once;
#   3. load: 1,000 concurrent pulling clients against one registry and one owner.
# About 1 hour on 2 cores. Each step exits non-zero on a failure.
#
#   bash deploy/reliability.sh [fuzz|crash|load ...]    (default: all three)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps=("$@")
((${#steps[@]})) || steps=(fuzz crash load)

build() {
    cargo build --release --locked -p ambishare-registry -p ambishare-owner -p ambishare-client --bins
    cargo build --release --locked -p ambishare-tests --bin ambishare-crash --bin ambishare-load
}

for step in "${steps[@]}"; do
    case "$step" in
        fuzz)
            echo "== fuzzing, 10 minutes a target"
            bash deploy/fuzz.sh --seconds 600
            ;;
        crash)
            build
            echo "== crash consistency: 50 trials, registry and owner killed in turn"
            target/release/ambishare-crash --trials 50 --victim alternate --seed 1
            echo "== crash consistency: 50 trials, registry, owner, then both at once"
            target/release/ambishare-crash --trials 50 --victim cycle --seed 2
            ;;
        load)
            build
            echo "== load: 1000 concurrent clients"
            # Two connections a client: raise the open-file limit where allowed.
            ulimit -n 65536 2>/dev/null || true
            target/release/ambishare-load --clients 1000
            ;;
        *) echo "unknown step $step (fuzz, crash, load)" >&2; exit 2 ;;
    esac
done
