#!/usr/bin/env bash
# Install Prometheus (Debian's `prometheus` package) for the enrichment tests, if missing.
#
#   bash scripts/install-prometheus.sh     # idempotent; exits 0 at once when installed
#
# Only the binaries are needed: tests start their own Prometheus on a free loopback port with
# a temporary data directory. Package scripts may try to start the system service; on machines
# without systemd that is a harmless no-op, and the service is stopped again if it did start.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus present: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi

if ! $SUDO apt-get install -y --no-install-recommends prometheus; then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends prometheus
fi

# The system service is of no use to the tests and would hold port 9090.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
  $SUDO systemctl disable prometheus || true
fi

echo "prometheus installed: $(prometheus --version 2>&1 | head -1)"
