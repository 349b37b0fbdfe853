#!/usr/bin/env bash
# The ClickHouse migrations (single-server and cluster renderings) and the queries of
# docs/analytics.md on the engine of a current ClickHouse release, in process through chDB
# (scripts/current-clickhouse.py says what is checked). The store's own tests run against Debian's
# clickhouse-server 18.16; this covers the other end of "the same files work on 18.16 and on a
# current server". Installs chDB into a venv under target/ when missing.
set -euo pipefail

cd "$(dirname "$0")/.."
CHDB_VERSION=4.4.0
VENV=$PWD/target/chdb/venv

if ! "$VENV/bin/python" -c "import chdb, sys; sys.exit(chdb.__version__ != '$CHDB_VERSION')" 2>/dev/null; then
    echo "installing chdb $CHDB_VERSION into $VENV"
    python3 -m venv "$VENV" || { echo "python3 with venv is required (Debian: apt-get install python3-venv)"; exit 1; }
    "$VENV/bin/pip" install --quiet "chdb==$CHDB_VERSION"
fi

DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
"$VENV/bin/python" scripts/current-clickhouse.py "$DATA/chdb"
