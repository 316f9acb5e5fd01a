#!/usr/bin/env bash
# Installs what jitwg needs at run and test time (Debian packages), once.
# wireguard-go is the data plane (no kernel WireGuard here), wg is used by tests as a
# stock client's configuration tool, nats-server is the push-mode baseline's bus,
# chromium loads the HTML reports in a test.
set -euo pipefail
need=()
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v nats-server >/dev/null || need+=(nats-server)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
# Headless Chromium loads the HTML reports in a test (sim/tests/sweep_browser.rs): no
# console errors, no chart at zero size or without data.
command -v chromium >/dev/null || need+=(chromium)
# tshark: the capture test decrypts `jitwg run --capture`'s initiations with its key log.
command -v tshark >/dev/null || need+=(tshark)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "ci/install-deps.sh: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "deps: $(wireguard-go --version 2>&1 | head -1); $(wg --version); nats-server $(nats-server --version 2>&1 | head -1)"
