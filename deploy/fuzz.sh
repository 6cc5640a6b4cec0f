#!/usr/bin/env bash
# Fuzzes every decoder of bytes from disk or the network (fuzz/fuzz_targets/)
# with cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it pass the
# nightly-only sanitizer flags).
#
#   deploy/fuzz.sh                      # every target, 10 minutes each, one after the other
#   deploy/fuzz.sh --seconds 30 entry   # one target, 30 s
#   deploy/fuzz.sh --smoke              # every target 15 s, no sanitizer (a quick look)
#   deploy/fuzz.sh --jobs 2             # run two targets at a time
#
# The corpus starts from shared/testdata/fuzz/seeds/<target>/ and grows in
# fuzz/corpus/<target>/ (git-ignored). A crash stops the run, leaves the input
# in fuzz/artifacts/<target>/ and prints how to keep it as a regression test:
# copy it to shared/testdata/fuzz/<target>/, where `cargo test -p
# ambishare-shared --test fuzz_regressions` replays it on every test run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

seconds=600
jobs=1
sanitizer=address
targets=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --smoke) seconds=15; sanitizer=none; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz (crates.io)"
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

echo "== building ${#targets[@]} targets (sanitizer: $sanitizer)"
cargo fuzz build -O --sanitizer "$sanitizer"

run_one() {
    local target="$1" log="$root/fuzz/logs/$1.log"
    mkdir -p "corpus/$target" "artifacts/$target" "$root/fuzz/logs"
    local seeds="$root/shared/testdata/fuzz/seeds/$target"
    local saved="$root/shared/testdata/fuzz/$target"
    local dirs=("corpus/$target")
    [[ -d "$seeds" ]] && dirs+=("$seeds")
    [[ -d "$saved" ]] && dirs+=("$saved")
    # Seed folders are read, never written: libFuzzer writes new inputs to the first folder only.
    if cargo fuzz run -O --sanitizer "$sanitizer" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        local execs
        execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
        printf '%-16s ok   %8ss  %12s execs  corpus %s\n' "$target" "$seconds" "${execs:-?}" \
            "$(find "corpus/$target" -type f | wc -l)"
    else
        printf '%-16s FAILED, see %s; crash inputs in fuzz/artifacts/%s/\n' "$target" "$log" "$target"
        echo "  keep one as a regression: cp fuzz/artifacts/$target/<file> shared/testdata/fuzz/$target/"
        return 1
    fi
}

echo "== fuzzing: ${targets[*]} for ${seconds}s each, $jobs at a time"
for target in "${targets[@]}"; do
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    run_one "$target" &
done
wait
status=0
for target in "${targets[@]}"; do
    grep -q 'Done [0-9]* runs' "$root/fuzz/logs/$target.log" || status=1
done
exit $status
