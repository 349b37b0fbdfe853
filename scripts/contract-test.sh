#!/usr/bin/env bash
# Contract test: schemathesis generates valid and invalid requests from openapi.yaml and checks the
# running service's answers (no 5xx, status codes and bodies as the spec says, bad input rejected).
#
# Installs schemathesis into a venv under target/ when missing, ingests the sample feed into a
# throwaway embedded store, serves it with role api on a free port, runs schemathesis against it and
# stops the service. Exit status is schemathesis's.
#
#   scripts/contract-test.sh                 # defaults: 200 examples per phase, 30 s budget (fuzzing runs until it is spent)
#   MAX_EXAMPLES=50 MAX_TIME=30 scripts/contract-test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${MAX_EXAMPLES:-200}
MAX_TIME=${MAX_TIME:-30}
VENV=$ROOT/target/contract/venv
FIXTURE=${FIXTURE:-$ROOT/tests/fixtures/provider/response_1.xml}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV" || { echo "python3 with venv is required (Debian: apt-get install python3-venv)"; exit 1; }
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

${CARGO:-cargo} build --quiet --bin planfeed
BIN=$ROOT/target/debug/planfeed

WORK=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PLANFEED__STORE__BACKEND=embedded
export PLANFEED__STORE__PATH=$WORK/planfeed.db
export PLANFEED__SERVER__LISTEN=127.0.0.1:$PORT
export PLANFEED__LOG__LEVEL=warn
# The fuzzer is one client sending as fast as it can: the limits are not under test here.
export PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_PER_SECOND=1000000
export PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_BURST=1000000
export PLANFEED__SERVER__RATE_LIMIT__GLOBAL_PER_SECOND=1000000
export PLANFEED__SERVER__RATE_LIMIT__GLOBAL_BURST=1000000

"$BIN" --config-dir "$WORK" ingest --once --file "$FIXTURE" >"$WORK/ingest.log" 2>&1 \
    || { cat "$WORK/ingest.log"; exit 1; }
PLANFEED__ROLE=api "$BIN" --config-dir "$WORK" serve >"$WORK/serve.log" 2>&1 &
PID=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 100); do
    curl -fsS "$BASE/ready" >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 0.1
done
curl -fsS "$BASE/ready" >/dev/null || { echo "service not ready"; cat "$WORK/serve.log"; exit 1; }

# The spec's `format: time` means RFC 3339 full-time, which requires an offset ("20:00:00Z"), yet
# its own examples ("22:38:19") and the design want the provider's local wall-clock time without one.
# The copy under test checks the example's shape instead (HH:MM:SS, stricter than dropping it).
SPEC=$WORK/openapi.yaml
sed 's/format: time$/pattern: "^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"/' "$ROOT/openapi.yaml" >"$SPEC"
[ "$(grep -c 'format: time$' "$SPEC")" = 0 ] || { echo "could not adapt format: time"; exit 1; }

# positive_data_acceptance is excluded: the spec cannot say that starts_at must not be after
# ends_at, so schema-valid pairs in the wrong order rightly get 400 (invalid_range).
# The spec's `servers:` entry points at SwaggerHub: --url targets the local service instead.
status=0
# Run from the temp folder: schemathesis and hypothesis leave caches in the working directory.
cd "$WORK"
"$VENV/bin/schemathesis" run "$SPEC" \
    --url "$BASE" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --mode all \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "${SEED:-20260101}" \
    --workers 1 \
    --no-color \
    --generation-database none \
    --report junit --report-dir "$ROOT/target/contract/report" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- service log ---"
    tail -n 50 "$WORK/serve.log"
fi
exit "$status"
