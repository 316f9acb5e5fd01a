#!/usr/bin/env bash
# The guest-side half of ci/vm.sh: runs inside the VM, where kernel WireGuard exists.
#   vm-inner.sh exec RUN_DIR PROJECT -- COMMAND...   (called by ci/vm.sh; do not call by hand)
#     loads wireguard, runs COMMAND, writes its exit status to RUN_DIR/rc for the host,
#     because virtme-ng does not reliably propagate it.
#   vm-inner.sh kernel-bench add|remove|parallel|loaded|removal|all OUTDIR [REMOVE_N]
#     measures kernel WireGuard configuration costs with plain wg/ip (BENCHMARKS.md, kernel
#     section). Run it through the VM: ci/vm.sh -- bash ci/vm-inner.sh kernel-bench add target/vm-bench
#   vm-inner.sh daemon-check JITWGD OUTDIR
#     checks that jitwgd starts and attaches to a kernel WireGuard interface.
set -euo pipefail
export LC_ALL=C

die() {
  echo "vm-inner.sh: $*" >&2
  exit 5
}

cmd_exec() {
  local run_dir="$1" project="$2"
  shift 2
  [ "${1:-}" = -- ] && shift
  # Proves to the host that the guest booted and that the project directory is shared
  # read-write (the run directory lives under it).
  touch "$run_dir/started" || die "cannot write to $run_dir: is $project shared read-write?"
  if ! modprobe wireguard 2>"$run_dir/modprobe.err"; then
    echo "modprobe wireguard failed on $(uname -r): $(cat "$run_dir/modprobe.err")" >"$run_dir/setup-failed"
    exit 5
  fi
  local probe="$project/target/.vm-write-probe.$$"
  if ! { mkdir -p "$project/target" && : >"$probe" && rm -f "$probe"; }; then
    echo "project directory $project/target is not writable in the guest" >"$run_dir/setup-failed"
    exit 5
  fi
  echo "vm-inner.sh: kernel $(uname -r) up $(cut -d' ' -f1 /proc/uptime) s, wireguard loaded, running: $*" >&2
  local rc=0
  "$@" || rc=$?
  echo "$rc" >"$run_dir/rc"
  sync
  exit "$rc"
}

# ---- kernel-bench --------------------------------------------------------------------
IFACE=jwgbench0
OUT=""

now_us() { echo "${EPOCHREALTIME/./}"; }

log() {
  echo "$*"
  echo "$*" >>"$OUT/results.txt"
}

# gen_peers N OFFSET NAME: NAME.conf (wg addconf format) and NAME.keys ("key ip" lines)
# with N random public keys and tunnel addresses 100.64.0.0/10 numbered from OFFSET.
gen_peers() {
  python3 - "$1" "$2" "$WORK/$3.conf" "$WORK/$3.keys" <<'PY'
import base64, os, sys
n, off = int(sys.argv[1]), int(sys.argv[2])
with open(sys.argv[3], "w") as conf, open(sys.argv[4], "w") as keys:
    for i in range(off, off + n):
        key = base64.b64encode(os.urandom(32)).decode()
        ip = f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"
        conf.write(f"[Peer]\nPublicKey = {key}\nAllowedIPs = {ip}\n\n")
        keys.write(f"{key} {ip}\n")
PY
}

fresh_iface() {
  if ip link show "$IFACE" >/dev/null 2>&1; then
    local n t0 t1
    n="$(peer_count)"
    t0="$(now_us)"
    ip link del "$IFACE"
    t1="$(now_us)"
    log "(deleting the interface with $n peers took $(((t1 - t0) / 1000)) ms)"
  fi
  ip link add "$IFACE" type wireguard
  wg set "$IFACE" private-key "$WORK/priv" listen-port 51820
  ip link set "$IFACE" up
}

peer_count() { wg show "$IFACE" peers | wc -l; }

# stats LABEL FILE: median/p90/max of microsecond samples, printed in ms.
stats() {
  sort -n "$2" | awk -v label="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { printf "%s: no samples\n", label; exit }
    p50 = v[int((NR + 1) / 2)]; p90 = v[int(NR * 0.9 + 0.5) > 0 ? int(NR * 0.9 + 0.5) : 1]
    printf "%s: n=%d median=%.1f ms p90=%.1f ms max=%.1f ms\n", label, NR, p50 / 1000, p90 / 1000, v[NR] / 1000 }'
}

# timed_addconf NAME: adds NAME.conf in one wg addconf call, logs seconds and peers/s.
timed_addconf() {
  local name="$1" label="$2" n t0 t1
  n="$(wc -l <"$WORK/$name.keys")"
  t0="$(now_us)"
  wg addconf "$IFACE" "$WORK/$name.conf"
  t1="$(now_us)"
  log "$(awk -v l="$label" -v n="$n" -v d="$((t1 - t0))" 'BEGIN { printf "%s: %d peers in %.2f s = %.0f peers/s\n", l, n, d / 1e6, n / (d / 1e6) }')"
}

# single_adds NAME COUNT FILE: COUNT single-peer `wg set` calls from NAME.keys, one
# sample (microseconds) per call appended to FILE. Stops early when $STOP_PID exits.
single_adds() {
  local name="$1" count="$2" file="$3" i=0 key ip t0 t1
  while read -r key ip && ((i < count)); do
    if [ -n "${STOP_PID:-}" ] && ! kill -0 "$STOP_PID" 2>/dev/null; then break; fi
    t0="$(now_us)"
    wg set "$IFACE" peer "$key" allowed-ips "$ip"
    t1="$(now_us)"
    echo "$((t1 - t0))" >>"$file"
    i=$((i + 1))
    if [ -n "${PACE:-}" ]; then sleep "$PACE"; fi
  done <"$WORK/$name.keys"
}

# remove_chunked NAME CHUNK: removes every peer of NAME.keys, CHUNK peers per wg call
# (CHUNK=0: all in one call).
remove_chunked() {
  local name="$1" chunk="$2" args=() n=0 key ip
  while read -r key ip; do
    args+=(peer "$key" remove)
    n=$((n + 1))
    if ((chunk > 0 && n % chunk == 0)); then
      wg set "$IFACE" "${args[@]}"
      args=()
    fi
  done <"$WORK/$name.keys"
  if ((${#args[@]})); then wg set "$IFACE" "${args[@]}"; fi
}

bench_add() {
  log "## add (kernel $(uname -r), $(nproc) vCPU)"
  gen_peers 10000 0 base10k
  head -n 4000 "$WORK/base10k.conf" >"$WORK/base1k.conf" # 4 lines per peer: 1,000 peers
  head -n 1000 "$WORK/base10k.keys" >"$WORK/base1k.keys"
  gen_peers 1000 20000 extra1k
  gen_peers 200 40000 singles
  : >"$WORK/spawn"
  for _ in $(seq 20); do
    local t0 t1
    t0="$(now_us)"
    wg --version >/dev/null
    t1="$(now_us)"
    echo "$((t1 - t0))" >>"$WORK/spawn"
  done
  log "$(stats "process spawn baseline (wg --version)" "$WORK/spawn")"
  local base
  for base in 0 1k 10k; do
    fresh_iface
    if [ "$base" != 0 ]; then timed_addconf "base$base" "batch add (wg addconf) onto empty interface"; fi
    : >"$WORK/lat-$base"
    single_adds singles 30 "$WORK/lat-$base"
    log "$(stats "single wg set add with $(peer_count) peers installed (base $base)" "$WORK/lat-$base")"
    timed_addconf extra1k "batch add of 1,000 more with base $base installed"
    # the singles are re-added for the next base on a fresh interface
  done
  local t0 t1
  t0="$(now_us)"
  wg show "$IFACE" dump >/dev/null
  t1="$(now_us)"
  log "dump of $(peer_count) peers: $(((t1 - t0) / 1000)) ms"
}

bench_remove() {
  local n="$1" chunk t0 t1
  log "## remove (kernel $(uname -r), $(nproc) vCPU), $n peers per run"
  gen_peers "$n" 0 victims
  for chunk in 0 16 64 256; do
    fresh_iface
    wg addconf "$IFACE" "$WORK/victims.conf"
    t0="$(now_us)"
    remove_chunked victims "$chunk"
    t1="$(now_us)"
    log "$(awk -v c="$chunk" -v n="$n" -v d="$((t1 - t0))" -v left="$(peer_count)" 'BEGIN {
      printf "remove %d peers, %s: %.2f s = %.1f peers/s (left %d)\n", n,
        (c == 0 ? "one wg set call" : "chunks of " c), d / 1e6, n / (d / 1e6), left }')"
  done
}

# Removal with many other peers installed, and deleting a populated interface: does the
# cost per removed peer grow with the interface's size?
bench_loaded() {
  local n="$1" chunk t0 t1
  log "## remove $n peers with 10,000 others installed (kernel $(uname -r), $(nproc) vCPU)"
  gen_peers 10000 0 base10k
  gen_peers "$n" 20000 victims
  gen_peers 1000 40000 doomed
  fresh_iface
  wg addconf "$IFACE" "$WORK/doomed.conf"
  fresh_iface # logs the time to delete an interface holding 1,000 peers
  wg addconf "$IFACE" "$WORK/base10k.conf"
  for chunk in 0 256; do
    wg addconf "$IFACE" "$WORK/victims.conf"
    t0="$(now_us)"
    remove_chunked victims "$chunk"
    t1="$(now_us)"
    log "$(awk -v c="$chunk" -v n="$n" -v d="$((t1 - t0))" -v left="$(peer_count)" 'BEGIN {
      printf "remove %d of %d peers, %s: %.2f s = %.1f peers/s (left %d)\n", n, left + n,
        (c == 0 ? "one wg set call" : "chunks of " c), d / 1e6, n / (d / 1e6), left }')"
  done
}

bench_parallel() {
  local n="$1" chunk t0 t1
  log "## add latency during a removal of $n peers (kernel $(uname -r), $(nproc) vCPU)"
  gen_peers "$n" 0 victims
  gen_peers 2000 40000 singles
  for chunk in 0 16 64 256; do
    fresh_iface
    wg addconf "$IFACE" "$WORK/victims.conf"
    : >"$WORK/plat-$chunk"
    t0="$(now_us)"
    remove_chunked victims "$chunk" &
    STOP_PID=$!
    sleep 0.2
    PACE=0.05 single_adds singles 2000 "$WORK/plat-$chunk"
    wait "$STOP_PID"
    t1="$(now_us)"
    STOP_PID=""
    log "$(stats "single wg set add while removing $n ($( ((chunk == 0)) && echo 'one call' || echo "chunks of $chunk")); removal took $(((t1 - t0) / 1000)) ms" "$WORK/plat-$chunk")"
  done
}

# daemon-check DAEMON OUTDIR: does jitwgd start on the kernel backend and attach to a
# kernel WireGuard interface (it stays up for 10 s, and its log is kept in OUTDIR)?
cmd_daemon_check() {
  local daemon="${1:?daemon-check needs the jitwgd binary}" out="${2:?daemon-check needs an output directory}"
  local iface=jwgkd0 work pid rc=0
  mkdir -p "$out"
  work="$(mktemp -d)"
  modprobe wireguard
  ip link add "$iface" type wireguard
  (umask 077 && wg genkey >"$work/priv")
  wg set "$iface" private-key "$work/priv" listen-port 51821
  ip addr add 100.64.0.1/10 dev "$iface"
  ip link set "$iface" up
  ip link set lo up
  "$daemon" --backend kernel --interface "$iface" --capture-interface lo \
    --api-url http://127.0.0.1:9 --db "$work/jitwgd.db" >"$out/jitwgd.log" 2>&1 &
  pid=$!
  sleep 10
  if kill -0 "$pid" 2>/dev/null; then
    echo "jitwgd (kernel backend) still running after 10 s on $iface"
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    echo "jitwgd exited with $rc after SIGTERM"
    rc=0
  else
    wait "$pid" || rc=$?
    echo "jitwgd exited early with status $rc"
    rc=1
  fi
  echo "--- jitwgd log (last 40 lines)"
  tail -n 40 "$out/jitwgd.log"
  ip link del "$iface"
  rm -rf "$work"
  return "$rc"
}

cmd_kernel_bench() {
  local what="${1:?kernel-bench needs add|remove|parallel|loaded|removal|all}"
  OUT="${2:?kernel-bench needs an output directory}"
  local remove_n="${3:-1000}"
  mkdir -p "$OUT"
  command -v wg >/dev/null || die "wg (wireguard-tools) missing"
  command -v python3 >/dev/null || die "python3 missing (used to generate keys)"
  WORK="$(mktemp -d)"
  # The interface is left for the VM to discard: deleting one with 10,000 peers costs
  # minutes (a grace period per peer).
  trap 'rm -rf "$WORK"' EXIT
  modprobe wireguard
  (umask 077 && wg genkey >"$WORK/priv")
  case "$what" in
    add) bench_add ;;
    remove) bench_remove "$remove_n" ;;
    parallel) bench_parallel "$remove_n" ;;
    loaded) bench_loaded "$remove_n" ;;
    removal) bench_remove "$remove_n"; bench_parallel "$remove_n" ;;
    all) bench_add; bench_remove "$remove_n"; bench_parallel "$remove_n" ;;
    *) die "unknown kernel-bench part '$what' (add|remove|parallel|loaded|removal|all)" ;;
  esac
}

case "${1:-}" in
  exec) shift; cmd_exec "$@" ;;
  kernel-bench) shift; cmd_kernel_bench "$@" ;;
  daemon-check) shift; cmd_daemon_check "$@" ;;
  *) die "usage: vm-inner.sh exec RUN_DIR PROJECT -- COMMAND... | kernel-bench add|remove|parallel|loaded|removal|all OUTDIR [REMOVE_N] | daemon-check JITWGD OUTDIR" ;;
esac
