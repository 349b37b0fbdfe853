#!/usr/bin/env bash
# One-command demo (`make demo`): the provider simulator serves the sample feeds of
# tests/fixtures/provider in rotation (one snapshot per fetch), planfeed fetches it every 10 s into a
# throwaway embedded store and serves the API. Prints a search, then keeps running until Ctrl-C.
#
#   make demo                                # release build, API on 127.0.0.1:8000, simulator on :9000
#   DEMO_PORT=8080 DEMO_PROVIDER_PORT=9090 make demo
#   DEMO_ONESHOT=1 DEMO_PROFILE=debug make demo   # print the first answer and exit (CI runs this)
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
PROFILE=${DEMO_PROFILE:-release}
PORT=${DEMO_PORT:-8000}
PROVIDER_PORT=${DEMO_PROVIDER_PORT:-9000}
FIXTURES=tests/fixtures/provider

if [ "$PROFILE" = release ]; then
    $CARGO build --release --bin planfeed
else
    $CARGO build --bin planfeed
fi
BIN=target/$PROFILE/planfeed

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$BIN" simulate-provider --listen "127.0.0.1:$PROVIDER_PORT" \
    "$FIXTURES/response_1.xml" "$FIXTURES/response_2.xml" "$FIXTURES/response_3.derived.xml" &
PIDS+=($!)

export PLANFEED__PROVIDER__URL="http://127.0.0.1:$PROVIDER_PORT/api/events"
export PLANFEED__PROVIDER__INTERVAL=10s
export PLANFEED__STORE__BACKEND=embedded
export PLANFEED__STORE__PATH="$WORK/demo.db"
export PLANFEED__SERVER__LISTEN="127.0.0.1:$PORT"
"$BIN" serve &
PIDS+=($!)

BASE="http://127.0.0.1:$PORT"
SEARCH="$BASE/search?starts_at=2021-01-01T00:00:00Z&ends_at=2022-01-01T00:00:00Z"
# Ready and holding the first snapshot's plans (the first fetch runs at start-up).
for _ in $(seq 1 600); do
    if curl -fsS "$SEARCH" 2>/dev/null | grep -q '"id"'; then
        break
    fi
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "demo: a process exited early (port $PORT or $PROVIDER_PORT busy?)" >&2; exit 1; }
    done
    sleep 0.1
done
echo
echo "planfeed demo: API on $BASE, simulated provider on 127.0.0.1:$PROVIDER_PORT"
echo "\$ curl '$SEARCH'"
curl -fsS "$SEARCH"
echo
if [ -n "${DEMO_ONESHOT:-}" ]; then
    curl -fsS "$SEARCH" | grep -q '"id"' || { echo "demo: no plans served" >&2; exit 1; }
    exit 0
fi
echo "Try /search with other ranges, /metrics, /ready. The feed rotates every 10 s. Ctrl-C stops the demo."
wait
