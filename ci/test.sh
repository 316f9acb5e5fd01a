#!/usr/bin/env bash
# The project's test command (README, and what CI runs): formatting, lints, every test
# (unit, property, end-to-end in real namespaces; needs root), then the smoke scenario
# as a regression gate, on the userspace backend here and on the kernel backend inside a VM
# (ci/vm.sh; these hosts' kernels lack WireGuard). Artifacts land in target/ci-smoke/ and
# target/ci-smoke-kernel/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh
if [ "$(id -u)" != 0 ]; then
  echo "ci/test.sh: end-to-end tests build network namespaces and need root" >&2
  exit 3
fi
export CI="${CI:-true}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== smoke scenario (regression gate)"
rm -rf target/ci-smoke
target/debug/jitwg run scenarios/smoke.toml --quiet --out target/ci-smoke
echo "== smoke scenario, kernel backend, in a VM"
# ci/vm.sh installs its own prerequisites (qemu, busybox-static, linux-image-amd64, virtme-ng)
# and exits with the command's status. Under TCG emulation the step takes ~1-2 minutes; the
# timeout only stops a wedged VM. Both streams go through cat because vng reopens them, which
# garbles it when stdout is a file.
rm -rf target/ci-smoke-kernel
bash ci/vm.sh --timeout 900 -- \
  target/debug/jitwg run scenarios/smoke-kernel.toml --quiet --out target/ci-smoke-kernel 2>&1 | cat
