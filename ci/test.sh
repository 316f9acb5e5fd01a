#!/usr/bin/env bash
# The project's test command (README, and what CI runs): formatting, lints, every test
# (unit, property, end-to-end in real namespaces; needs root), then the smoke scenario
# as a regression gate. Artifacts land in target/ci-smoke/.
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
