#!/usr/bin/env bash
# Installs the ClickHouse server and client that the ClickHouse store's tests start (Debian's own
# package: no systemd, no Docker needed). Idempotent: does nothing when clickhouse-server is on PATH.
set -euo pipefail

if command -v clickhouse-server >/dev/null 2>&1; then
    echo "clickhouse-server already installed: $(command -v clickhouse-server)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq clickhouse-server clickhouse-client
command -v clickhouse-server
