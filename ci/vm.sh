#!/usr/bin/env bash
# Runs a command inside a throwaway VM whose kernel has the WireGuard module, because these
# hosts' kernels lack it: the kernel backend (issue 5) can only be exercised this way.
# See `ci/vm.sh --help`. Uses virtme-ng (vng): the guest boots Debian's generic kernel on a
# copy-on-write view of the host's root filesystem, with the project directory shared
# read-write at the same path, so results written under target/ land on the host.
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$PROJECT/target/vm"
APT_PKGS=()

usage() {
  cat <<EOF
usage: ci/vm.sh [--memory 2G] [--cpus 2] [--kvm auto|on|off] [--kernel PATH]
                [--timeout SECONDS] [--boot-deadline SECONDS] [--setup-only]
                -- COMMAND [ARG...]

Boots Debian's generic kernel (/boot/vmlinuz-*-amd64, newest; not -rt/-cloud, the
cloud flavour lacks 9p) in qemu via virtme-ng, on a copy-on-write view of this host's
root filesystem, and runs COMMAND there as root after \`modprobe wireguard\`.
COMMAND runs in the current directory if it is inside the project, else in the
project directory ($PROJECT), which is shared read-write at the same
path: anything written under it (e.g. target/) lands on the host. Everything else the
guest writes is discarded. PATH, CI, RUST_LOG and RUST_BACKTRACE are passed through.

Options:
  --memory SIZE     guest memory (qemu -m), default 2G
  --cpus N          guest vCPUs, default 2
  --kvm MODE        auto (default): try KVM, fall back to TCG emulation if the KVM
                    guest fails or does not boot within --boot-deadline (nested KVM
                    fails or hangs on these hosts); the failure is remembered per host
                    in the cache directory below, so later runs go straight to TCG;
                    on: KVM only; off: TCG only
  --kernel PATH     boot this kernel image instead of the newest generic one
  --timeout SECS    kill the VM after SECS seconds in all (default: no limit); a KVM
                    attempt abandoned at the boot deadline counts towards it
  --boot-deadline SECS
                    give a KVM guest SECS seconds to reach the command (the guest
                    signals it by writing a marker into the shared directory), else
                    kill its whole qemu process group and, with --kvm auto, boot under
                    TCG instead (default 60; a working KVM guest needs a few seconds;
                    0: no deadline). TCG boots are not held to it (they take 20-60 s).
  --setup-only      install/check prerequisites and print the chosen kernel, boot nothing

Prerequisites (installed automatically when run as root, else reported):
  apt: qemu-system-x86 busybox-static linux-image-amd64 wireguard-tools iproute2
       (and python3, python3-venv when virtme-ng must be installed and pip is missing)
  pip: virtme-ng (into the current python3, else a venv under /opt/virtme-ng)

Cache: \$JITWG_CACHE_DIR if set, else /var/cache/jitwg when writable (root), else
\${XDG_CACHE_HOME:-~/.cache}/jitwg. It holds kvm-broken: one line per host kernel and
qemu version under which KVM failed; delete it to make the next run try KVM again.

Exit status: COMMAND's own status; 2 usage error; 3 missing prerequisite;
4 the VM failed (did not boot, or did not report COMMAND's status); 5 the guest
could not load the wireguard module or write to the project directory.
Under TCG a boot takes ~20-60 s depending on host load.

Example:
  ci/vm.sh -- target/release/jitwg run scenarios/smoke.toml --set backend=kernel --out target/vm-smoke
EOF
}

die() {
  local code="$1"
  shift
  echo "ci/vm.sh: $*" >&2
  exit "$code"
}

memory=2G
cpus=2
kvm=auto
kernel=""
timeout_s=0
boot_deadline_s=60
setup_only=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --memory) memory="${2:?--memory needs a value}"; shift 2 ;;
    --cpus) cpus="${2:?--cpus needs a value}"; shift 2 ;;
    --kvm) kvm="${2:?--kvm needs auto, on or off}"; shift 2 ;;
    --kernel) kernel="${2:?--kernel needs a path}"; shift 2 ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
    --boot-deadline) boot_deadline_s="${2:?--boot-deadline needs seconds}"; shift 2 ;;
    --setup-only) setup_only=1; shift ;;
    --) shift; break ;;
    *) usage >&2; die 2 "unexpected argument '$1' (put the command after --)" ;;
  esac
done
case "$kvm" in auto | on | off) ;; *) die 2 "--kvm must be auto, on or off, not '$kvm'" ;; esac
[[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die 2 "--cpus must be a positive integer, not '$cpus'"
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die 2 "--timeout must be whole seconds, not '$timeout_s'"
[[ "$boot_deadline_s" =~ ^[0-9]+$ ]] ||
  die 2 "--boot-deadline must be whole seconds, not '$boot_deadline_s'"
if ((setup_only == 0 && $# == 0)); then
  usage >&2
  die 2 "no command given (put it after --)"
fi

is_root() { [ "$(id -u)" = 0 ]; }

# --- host prerequisites -------------------------------------------------------------
find_vng() {
  if command -v vng >/dev/null 2>&1; then
    command -v vng
  elif [ -x /opt/virtme-ng/bin/vng ]; then
    echo /opt/virtme-ng/bin/vng
  else
    return 1
  fi
}

# Newest Debian generic-flavour kernel image whose modules (with wireguard) are installed.
find_kernel() {
  local img ver
  for img in /boot/vmlinuz-*; do
    [ -e "$img" ] || continue
    ver="${img#/boot/vmlinuz-}"
    [[ "$ver" =~ ^[0-9]+\.[0-9]+.*-amd64$ ]] || continue
    [[ "$ver" == *-rt-amd64 || "$ver" == *-cloud-amd64 ]] && continue
    compgen -G "/lib/modules/$ver/kernel/drivers/net/wireguard/wireguard.ko*" >/dev/null || continue
    echo "$ver"
  done | sort -V | tail -n1
}

busybox_static() {
  local bb
  bb="$(command -v busybox 2>/dev/null)" || return 1
  # A dynamic busybox cannot run as the guest's early userspace helper everywhere.
  ! ldd "$bb" >/dev/null 2>&1
}

need_apt() { APT_PKGS+=("$1"); }
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt qemu-system-x86
busybox_static || need_apt busybox-static
command -v wg >/dev/null 2>&1 || need_apt wireguard-tools
command -v ip >/dev/null 2>&1 || need_apt iproute2
if [ -z "$kernel" ] && [ -z "$(find_kernel)" ]; then need_apt linux-image-amd64; fi
need_pip=0
if ! find_vng >/dev/null; then
  need_pip=1
  # A fresh Debian may lack python3, and its python3 has no pip and cannot create a venv
  # without python3-venv: install what the venv fallback below needs.
  command -v python3 >/dev/null 2>&1 || need_apt python3
  python3 -m pip --version >/dev/null 2>&1 || need_apt python3-venv
fi

if ((${#APT_PKGS[@]} || need_pip)); then
  if ! is_root; then
    msg="missing prerequisites:"
    ((${#APT_PKGS[@]})) && msg+=" apt packages ${APT_PKGS[*]} (sudo apt-get install ${APT_PKGS[*]});"
    ((need_pip)) && msg+=" virtme-ng (pip install virtme-ng);"
    die 3 "$msg run as root to install them automatically"
  fi
  if ((${#APT_PKGS[@]})); then
    echo "ci/vm.sh: installing ${APT_PKGS[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die 3 "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null ||
      die 3 "apt-get install ${APT_PKGS[*]} failed"
  fi
  if ((need_pip)); then
    echo "ci/vm.sh: installing virtme-ng" >&2
    if ! python3 -m pip install -q virtme-ng 2>/dev/null &&
      ! python3 -m pip install -q --break-system-packages virtme-ng 2>/dev/null; then
      { python3 -m venv /opt/virtme-ng && /opt/virtme-ng/bin/pip install -q virtme-ng; } ||
        die 3 "could not install virtme-ng (tried pip, pip --break-system-packages, venv /opt/virtme-ng; apt-get install python3-venv may help)"
    fi
    hash -r
  fi
fi
VNG="$(find_vng)" || die 3 "virtme-ng installed but 'vng' not found on PATH or in /opt/virtme-ng/bin"
command -v qemu-system-x86_64 >/dev/null 2>&1 || die 3 "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"

if [ -z "$kernel" ]; then
  ver="$(find_kernel)"
  [ -n "$ver" ] || die 3 "no generic /boot/vmlinuz-*-amd64 with a wireguard module in /lib/modules (apt-get install linux-image-amd64)"
  kernel="/boot/vmlinuz-$ver"
fi
[ -r "$kernel" ] || die 3 "kernel image $kernel is not readable (run as root: Debian installs it mode 0600)"

if ((setup_only)); then
  echo "vng: $VNG ($("$VNG" --version 2>&1 | head -n1)); kernel: $kernel; qemu: $(qemu-system-x86_64 --version | head -n1)"
  exit 0
fi

# --- run ------------------------------------------------------------------------------
mkdir -p "$STATE"
run_dir="$(mktemp -d "$STATE/run.XXXXXX")"
trap 'rm -rf "$run_dir"' EXIT

guest_cwd="$PWD"
case "$guest_cwd/" in "$PROJECT"/*) ;; *) guest_cwd="$PROJECT" ;; esac

# The guest gets a fresh environment: pass through what commands here commonly need.
envs=("PATH=$PATH")
for v in CI RUST_LOG RUST_BACKTRACE; do
  if [ -n "${!v+x}" ]; then envs+=("$v=${!v}"); fi
done
inner="cd $(printf '%q' "$guest_cwd") && exec env"
for e in "${envs[@]}"; do inner+=" $(printf '%q' "$e")"; done
inner+=" bash $(printf '%q' "$PROJECT/ci/vm-inner.sh") exec $(printf '%q' "$run_dir")"
inner+=" $(printf '%q' "$PROJECT") --"
for a in "$@"; do inner+=" $(printf '%q' "$a")"; done

# Whether KVM works is a property of the host (kernel, qemu, nesting), not of the clone:
# it is remembered in a per-host cache so that every fresh CI clone does not pay for a
# failed KVM attempt again.
cache_dir() {
  if [ -n "${JITWG_CACHE_DIR:-}" ]; then
    echo "$JITWG_CACHE_DIR"
  elif mkdir -p /var/cache/jitwg 2>/dev/null && [ -w /var/cache/jitwg ]; then
    echo /var/cache/jitwg
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/jitwg"
  fi
}
CACHE="$(cache_dir)"
kvm_key="$(uname -r) $(qemu-system-x86_64 --version | head -n1)"
kvm_broken_file="$CACHE/kvm-broken"

remember_kvm_broken() {
  if mkdir -p "$CACHE" 2>/dev/null && echo "$kvm_key" >>"$kvm_broken_file" 2>/dev/null; then
    echo "ci/vm.sh: remembered in $kvm_broken_file (delete it to try KVM again)" >&2
  else
    echo "ci/vm.sh: could not write $kvm_broken_file; the next run will try KVM again" >&2
  fi
}

# The VM runs in its own session (setsid) so that vng, qemu and anything they start can be
# killed as one process group: killing only vng leaves a wedged qemu behind.
vm_pgid=""
kill_vm() {
  [ -n "$vm_pgid" ] || return 0
  kill -TERM -- "-$vm_pgid" 2>/dev/null || true
  local i
  for ((i = 0; i < 20; i++)); do
    kill -0 -- "-$vm_pgid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$vm_pgid" 2>/dev/null || true
  wait "$vm_pgid" 2>/dev/null || true
  vm_pgid=""
}
trap 'kill_vm; rm -rf "$run_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

overall_start=$SECONDS
boot_outcome=""
boot() { # $1: "kvm" or "tcg". Sets boot_outcome: done, no-boot (deadline) or timeout.
  local accel=()
  [ "$1" = tcg ] && accel=(--disable-kvm)
  local deadline=0
  [ "$1" = kvm ] && deadline=$boot_deadline_s
  echo "ci/vm.sh: booting $kernel ($1, ${cpus} vCPU, $memory)" >&2
  local start=$SECONDS
  setsid "$VNG" --run "$kernel" "${accel[@]}" --memory "$memory" --cpus "$cpus" \
    --rwdir="$PROJECT" --exec "$inner" </dev/null &
  vm_pgid=$!
  boot_outcome=done
  while kill -0 "$vm_pgid" 2>/dev/null; do
    if ((deadline > 0 && SECONDS - start >= deadline)) && [ ! -e "$run_dir/started" ]; then
      echo "ci/vm.sh: the $1 guest did not reach the command within --boot-deadline ${deadline} s; stopping it" >&2
      boot_outcome=no-boot
      kill_vm
      break
    fi
    if ((timeout_s > 0 && SECONDS - overall_start >= timeout_s)); then
      echo "ci/vm.sh: --timeout ${timeout_s} s reached; stopping the VM" >&2
      boot_outcome=timeout
      kill_vm
      break
    fi
    sleep 1
  done
  if [ -n "$vm_pgid" ]; then
    wait "$vm_pgid" 2>/dev/null || true
    # Whatever qemu or vng left running in the session goes too.
    kill -KILL -- "-$vm_pgid" 2>/dev/null || true
    vm_pgid=""
  fi
  echo "ci/vm.sh: VM session took $((SECONDS - start)) s" >&2
}

use_kvm=0
if [ "$kvm" = on ]; then
  use_kvm=1
elif [ "$kvm" = auto ] && [ -w /dev/kvm ]; then
  if grep -qxF "$kvm_key" "$kvm_broken_file" 2>/dev/null; then
    echo "ci/vm.sh: KVM failed here before ($kvm_broken_file); using TCG" >&2
  else
    use_kvm=1
  fi
fi

if ((use_kvm)); then
  boot kvm
  if [ ! -e "$run_dir/started" ] && [ "$kvm" = auto ] && [ "$boot_outcome" != timeout ]; then
    # The guest never reached the command, so nothing ran twice: retry under emulation.
    echo "ci/vm.sh: KVM guest did not start; falling back to TCG" >&2
    remember_kvm_broken
    boot tcg
  fi
else
  boot tcg
fi

if [ ! -e "$run_dir/started" ]; then
  [ "$boot_outcome" = no-boot ] &&
    die 4 "the KVM guest did not reach the command within --boot-deadline ${boot_deadline_s} s"
  [ "$boot_outcome" = timeout ] &&
    die 4 "--timeout ${timeout_s} s ran out before the guest reached the command"
  die 4 "the VM did not start the command (see qemu/vng output above)"
fi
if [ -e "$run_dir/setup-failed" ]; then
  die 5 "guest setup failed: $(cat "$run_dir/setup-failed")"
fi
[ -s "$run_dir/rc" ] || die 4 "the VM ended without reporting the command's exit status (crash or --timeout?)"
rc="$(cat "$run_dir/rc")"
[[ "$rc" =~ ^[0-9]+$ ]] || die 4 "unreadable exit status '$rc' from the VM"
exit "$rc"
