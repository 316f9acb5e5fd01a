#!/usr/bin/env bash
# The main job (README): build, then run the smoke scenario against the real daemon and
# a real wireguard-go in network namespaces, and write results.json, report.html and
# summary.md. Extra arguments go to `jitwg run` (e.g. --set population.0.count=200).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh
cargo build --release --workspace --locked
exec target/release/jitwg run scenarios/smoke.toml --out target/smoke "$@"
