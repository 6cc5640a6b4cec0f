#!/usr/bin/env bash
# The whole mission on one machine, with embedded defaults:
#   builds the nodes; starts a registry and an owner on loopback (temporary
#   directories); publishes the held-out sample images (deploy/samples) with the
#   shipped model; enrolls two parties and grants one full and one preview access;
#   pulls as each and as the public; writes one picture of the three sets beside
#   the originals and a PSNR/SSIM table; stops every process it started.
#   With --keep-running it leaves the registry (and its web view) and the owner
#   running, serves alice's gallery, prints their addresses and waits for Ctrl-C.
#
#   bash deploy/setup.sh && bash deploy/quickstart.sh [--keep-running] [OUT_DIR]   (default: quickstart-out)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
keep_running=0
positional=()
for arg in "$@"; do
    case "$arg" in
        --keep-running) keep_running=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
        *) positional+=("$arg") ;;
    esac
done
[ "${#positional[@]}" -le 1 ] || { echo "at most one OUT_DIR (see --help)" >&2; exit 2; }
out=$(realpath -m "${positional[0]:-quickstart-out}")
model=${AMBISHARE_QUICKSTART_MODEL:-models/photo64}

say() { printf '\n== %s\n' "$*"; }

[ -f .ort/libonnxruntime.so.1.31.1 ] || { echo "run bash deploy/setup.sh first" >&2; exit 1; }
[ -f "$model/manifest.json" ] || { echo "no model at $model" >&2; exit 1; }

say "building the nodes (first time: several minutes)"
cargo build --quiet --locked -p ambishare-registry -p ambishare-owner -p ambishare-client --bins
cargo build --quiet --locked -p ambishare-tests --bin ambishare-eval
bin="$root/target/debug"
export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"
export RUST_LOG=${RUST_LOG:-warn}

# The output folder is replaced: only an empty one, or one an earlier run made.
marker=".ambishare-quickstart"
if [ -e "$out" ] && [ ! -f "$out/$marker" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "$out exists and was not made by the quickstart; give another folder" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ambishare-quickstart.XXXXXX")
pids=()
cleanup() {
    status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # SIGTERM first (graceful shutdown), SIGKILL what is still there after 10 s.
    for _ in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    if [ "$status" != 0 ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] && { echo "--- last lines of $(basename "$log")" >&2; tail -n 20 "$log" >&2; }
        done
        echo "quickstart failed (exit $status)" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

registry_port=$(free_port)
web_port=$(free_port)
owner_port=$(free_port)
gallery_port=$(free_port)
registry="https://localhost:$registry_port"
owner="https://127.0.0.1:$owner_port"

say "registry on $registry (TLS, with a certificate made by ambishare-registry tls-cert), web view on http://127.0.0.1:$web_port/"
"$bin/ambishare-registry" tls-cert --out "$work/registry-tls" --name localhost >/dev/null
registry_ca="$work/registry-tls/ca.pem"
"$bin/ambishare-registry" serve --data-dir "$work/registry" --listen "127.0.0.1:$registry_port" \
    --tls-cert "$work/registry-tls/tls.pem" --tls-key "$work/registry-tls/tls.key" \
    --http-listen "127.0.0.1:$web_port" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_port "$registry_port"
wait_port "$web_port"

say "owner: identity, key service on $owner (mutual TLS)"
"$bin/ambishare-owner" --home "$work/owner" init
"$bin/ambishare-owner" --home "$work/owner" serve --listen "127.0.0.1:$owner_port" >"$work/owner.log" 2>&1 &
pids+=($!)
wait_port "$owner_port"

say "owner: publishing deploy/samples with $model"
"$bin/ambishare-owner" --home "$work/owner" publish --owner "$owner" --registry "$registry" \
    --registry-ca "$registry_ca" --dataset samples --model "$model" --ids-out "$work/ids.tsv" deploy/samples

say "parties: alice (full) and bob (preview) enroll; the owner grants them"
for party in alice bob; do
    "$bin/ambishare-client" --home "$work/$party" enroll --party "$party" >/dev/null
done
"$bin/ambishare-owner" --home "$work/owner" grant --owner "$owner" --csr "$work/alice/party.csr" --party alice \
    --dataset samples --tier full --out "$work/alice/party.pem"
"$bin/ambishare-owner" --home "$work/owner" grant --owner "$owner" --csr "$work/bob/party.csr" --party bob \
    --dataset samples --tier preview --out "$work/bob/party.pem"

rm -rf "$out" && mkdir -p "$out" && touch "$out/$marker"
for party in alice bob; do
    say "$party pulls"
    "$bin/ambishare-client" --home "$work/$party" pull --registry "$registry" --registry-ca "$registry_ca" \
        --owner "$owner" --dataset samples --out "$out/$party" --quiet
done
say "the public browses (no key: every nonzero, real and fake)"
"$bin/ambishare-client" --home "$work/public" browse --registry "$registry" --registry-ca "$registry_ca" \
    --dataset samples --out "$out/public" --quiet

say "picture and table"
cp "$work/ids.tsv" "$out/ids.tsv"
"$bin/ambishare-eval" quickstart-grid --ids "$out/ids.tsv" --set "alice (full key)=$out/alice" \
    --set "bob (preview key)=$out/bob" --set "public (no key)=$out/public" --out "$out"

say "audit log of the owner"
"$bin/ambishare-owner" --home "$work/owner" audit --owner "$owner" --limit 10

echo
echo "done in $SECONDS s: $out/grid.png and $out/table.md"

if [ "$keep_running" = 1 ]; then
    "$bin/ambishare-client" gallery --out "$out/alice" --listen "127.0.0.1:$gallery_port" >"$work/gallery.log" 2>&1 &
    pids+=($!)
    wait_port "$gallery_port"
    echo
    echo "still running (Ctrl-C stops them all):"
    echo "  registry web view  http://127.0.0.1:$web_port/   (what the public sees)"
    echo "  alice's gallery    http://127.0.0.1:$gallery_port/   (her decodes beside the public view)"
    echo "  registry gRPC      $registry   (CA: $registry_ca)"
    echo "  owner key service  $owner   (home: $work/owner)"
    trap 'exit 0' INT TERM
    while :; do sleep 3600 & wait $!; done
fi
