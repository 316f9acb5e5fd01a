#!/usr/bin/env bash
#! Runs every cargo-fuzz target in fuzz/ for a fixed time each (or to an exec count), seeded
#! from the wire vectors in ../shared/vectors (or $JITWG_VECTORS) and the shipped scenarios,
#! and prints execs/s, total execs and wall time per target (the figures BENCHMARKS.md records).
#
# usage: ci/fuzz.sh [MINUTES_PER_TARGET] [TARGET...]   (default: 5 minutes, every target)
#        FUZZ_RUNS=10000000 ci/fuzz.sh 120 identify    (stop at 10M execs, or after 120 min)
#        ci/fuzz.sh 0                                   (only write the seed corpora)
# An input that runs longer than FUZZ_TIMEOUT seconds (default 30) counts as a hang.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Corpora and any
# crash inputs are kept in fuzz/corpus/<target> and fuzz/artifacts/<target> (git-ignored),
# so a second run continues where the first stopped.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
minutes="${1:-5}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame identify api_document daemon_config scenario)
fi
vectors="${JITWG_VECTORS:-$here/../shared/vectors/wireguard-go-initiations.json}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "ci/fuzz.sh: needs a nightly toolchain and cargo-fuzz:" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 3
fi

cd "$here/fuzz"
mkdir -p corpus artifacts

# Seeds: wire vectors as raw initiations (identify) and wrapped in IPv4 and IPv6 UDP
# headers (frame); peer documents (api_document); shipped daemon settings (daemon_config);
# shipped scenarios (scenario).
python3 - "$vectors" "$here" <<'PY'
import json, os, struct, sys, glob
vectors, root = sys.argv[1], sys.argv[2]
def put(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/seed-{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
if os.path.exists(vectors):
    v = json.load(open(vectors))
    for i, p in enumerate(v["valid"] + v["invalid"]):
        pkt = bytes.fromhex(p["packet"])
        put("identify", f"vector{i}", pkt)
        udp = struct.pack("!HHHH", 40000 + i, 51820, 8 + len(pkt), 0) + pkt
        ip4 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                          bytes([198, 18, 0, i + 1]), bytes([198, 19, 0, 1]))
        put("frame", f"v4-{i}", ip4 + udp)
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                          bytes.fromhex("20010002000000000000000000000001"),
                          bytes.fromhex("20010002000000010000000000000001"))
        put("frame", f"v6-{i}", ip6 + udp)
    key = v["valid"][0]["initiator_public_key"]
else:
    print(f"ci/fuzz.sh: no vectors at {vectors}; seeding without them", file=sys.stderr)
    key = "aHCBtyiPyEDj500p94e7Yhz0/1nQvqbYh0wWAr8xEw0="
put("api_document", "one", "\x00" + json.dumps({"public_key": key, "allowed_ips": ["100.64.0.7/32"]}))
put("api_document", "psk", "\x01" + json.dumps({"public_key": key, "allowed_ips": ["100.64.0.7/32", "100.64.1.0/24"],
                                       "preshared_key": key}))
put("daemon_config", "minimal", 'interface = "wg0"\napi_url = "http://100.64.0.1:8080"\n')
put("daemon_config", "full", 'interface = "wg0"\nlisten_port = 51820\nmode = "jit"\nboot = "preload"\n'
    'allowed_prefix = "100.64.0.0/10"\nsweep_every = "10s"\nevict_after = "3m"\nnegative_ttl = "5s"\n')
for path in glob.glob(f"{root}/scenarios/**/*.toml", recursive=True):
    put("scenario", os.path.basename(path), open(path, "rb").read())
PY

if [ "$minutes" -eq 0 ]; then
    exit 0
fi

limits=(-max_total_time=$((minutes * 60)) -timeout="${FUZZ_TIMEOUT:-30}")
if [ -n "${FUZZ_RUNS:-}" ]; then
    limits+=(-runs="$FUZZ_RUNS")
fi

printf '%-14s %10s %14s %8s %8s\n' target "execs/s" "total execs" "wall s" result
for target in "${targets[@]}"; do
    log="artifacts/$target.log"
    mkdir -p "artifacts/$target"
    status=clean
    started=$SECONDS
    cargo +nightly fuzz run --release "$target" "corpus/$target" -- "${limits[@]}" \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 ||
        status="FAILED (see fuzz/$log)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    printf '%-14s %10s %14s %8s %8s\n' "$target" "${rate:-?}" "${execs:-?}" \
        "$((SECONDS - started))" "$status"
done
