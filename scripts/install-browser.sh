#!/usr/bin/env bash
# Install the headless browser used by tests/test_http_ui.py: Debian's chromium and its
# chromedriver (nothing is downloaded by the tests themselves). Idempotent; run as root.
#
#   bash scripts/install-browser.sh
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "browser: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "browser: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
