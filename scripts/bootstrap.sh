#!/usr/bin/env bash
# Installs what holmes-stream needs on a fresh machine: a Python venv with the project, Java for
# the local Kafka broker, Maven to fetch Kafka's jars, and redis-server. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install $*" >&2; return 1; fi
  if [ ! -f /tmp/.holmes-stream-apt-updated ]; then apt-get update -qq && touch /tmp/.holmes-stream-apt-updated; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
command -v redis-server >/dev/null || apt_install redis-server

# The venv's interpreter: $PYTHON if set; else the distribution's CPython 3.11 when it can make
# venvs; else python3. Distribution builds are compiled with PGO and LTO (Debian's executable
# without a shared libpython too); pyenv's default build is not, and the worker spent a
# quarter less CPU per alert on Debian's (README, Benchmarks). An existing .venv is kept:
# remove it to switch.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then PY=/usr/bin/python3.11; fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
