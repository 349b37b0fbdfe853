#!/usr/bin/env bash
# Runs the README's "Running on ClickHouse" commands (the fenced block after the marker comment
# naming this script) against a throwaway clickhouse-server whose `default` user has a password,
# and checks what they promise: planfeed builds, takes the password from the prompt, creates the
# database and applies every migration at start, turns ready, and serves the stored plans.
#
#   scripts/readme-clickhouse.sh                       # the block exactly as written (release build)
#   README_PROFILE=debug scripts/readme-clickhouse.sh  # `make test`: the debug build the tests made
#
# The block runs from the repository's root in a shell of its own, the password on its standard
# input (as a person types it at the prompt). Around it, the environment says what the README leaves
# to the reader: the server's address (PLANFEED__STORE__CLICKHOUSE__URL, as the README says for a
# server elsewhere than 127.0.0.1:8123), and, so that nothing outside the repository is read or
# written, a provider on 127.0.0.1 serving tests/fixtures/provider/response_1.xml, a free listen
# port, and the spool and configuration folder in a temporary directory. README_PROFILE=debug runs
# `cargo build` and `./target/debug/` in place of `cargo build --release` and `./target/release/`,
# nothing else. PLANFEED_SKIP_CLICKHOUSE=1 skips it when clickhouse-server is missing (never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${README_PROFILE:-release}
SKIPPED=${CARGO_TARGET_DIR:-$ROOT/target}/skipped-tests.txt

fail() { echo "readme-clickhouse: $*" >&2; exit 1; }

SERVER=$(command -v clickhouse-server || true)
if [ -z "$SERVER" ]; then
    if [ "${PLANFEED_SKIP_CLICKHOUSE:-}" = 1 ] && [ -z "${CI:-}" ]; then
        echo "SKIPPED readme-clickhouse: clickhouse-server not installed (PLANFEED_SKIP_CLICKHOUSE=1)"
        mkdir -p "$(dirname "$SKIPPED")"
        echo "scripts/readme-clickhouse.sh: clickhouse-server not installed (PLANFEED_SKIP_CLICKHOUSE=1)" >>"$SKIPPED"
        exit 0
    fi
    fail "clickhouse-server is not installed: run scripts/install-clickhouse.sh, or set PLANFEED_SKIP_CLICKHOUSE=1 to skip (never in CI)"
fi

# The block: the first ```sh fence after the marker.
BLOCK=$(awk '/<!-- scripts\/readme-clickhouse.sh runs the next block/ { marked = 1; next }
             marked && /^```sh$/ { inside = 1; next }
             inside && /^```$/ { exit }
             inside { print }' README.md)
[ -n "$BLOCK" ] || fail "README.md has no block after the marker naming scripts/readme-clickhouse.sh"
grep -q 'cargo build --release' <<<"$BLOCK" || fail "the block does not build planfeed"
grep -q 'planfeed serve' <<<"$BLOCK" || fail "the block does not start planfeed serve"
if [ "$PROFILE" = debug ]; then
    BLOCK=${BLOCK//cargo build --release/cargo build}
    BLOCK=${BLOCK//.\/target\/release\//.\/target\/debug\/}
elif [ "$PROFILE" != release ]; then
    fail "README_PROFILE is release or debug, not $PROFILE"
fi
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "$(realpath -m "$CARGO_TARGET_DIR")" != "$ROOT/target" ]; then
    BLOCK=${BLOCK//.\/target\//$CARGO_TARGET_DIR\/}
fi

PARENT=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && PARENT=/dev/shm
WORK=$(mktemp -d "$PARENT/readme-clickhouse.XXXXXX")
CH_PID= PROVIDER_PID= BLOCK_PID=
cleanup() {
    if [ -n "$BLOCK_PID" ]; then kill -KILL -- "-$BLOCK_PID" 2>/dev/null || true; fi
    for pid in $PROVIDER_PID $CH_PID; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port) TCP_PORT=$(free_port) PROVIDER_PORT=$(free_port) PORT=$(free_port)
PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
CH=http://127.0.0.1:$HTTP_PORT
BASE=http://127.0.0.1:$PORT

mkdir -p "$WORK/ch/data" "$WORK/ch/tmp" "$WORK/ch/user_files" "$WORK/ch/format_schemas" "$WORK/config"
cat >"$WORK/ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$HTTP_PORT</http_port>
    <tcp_port>$TCP_PORT</tcp_port>
    <path>$WORK/ch/data/</path>
    <tmp_path>$WORK/ch/tmp/</tmp_path>
    <user_files_path>$WORK/ch/user_files/</user_files_path>
    <format_schema_path>$WORK/ch/format_schemas/</format_schema_path>
    <users_config>$WORK/ch/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
EOF
cat >"$WORK/ch/users.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default>
            <password>$PASSWORD</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
EOF
"$SERVER" --config-file="$WORK/ch/config.xml" >"$WORK/ch.log" 2>&1 &
CH_PID=$!

# A provider: the sample feed served by a plain HTTP server.
python3 -m http.server --bind 127.0.0.1 --directory tests/fixtures/provider "$PROVIDER_PORT" \
    >"$WORK/provider.log" 2>&1 &
PROVIDER_PID=$!

# Waits (polling every 0.1 s) until `$@` succeeds, while process $1 lives; at most $2 seconds.
wait_for() {
    local pid=$1 limit=$2 what=$3 log=$4
    shift 4
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { tail -n 40 "$log" >&2; fail "$what: the process ended"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 40 "$log" >&2; fail "$what: not within ${limit} s"; }
        sleep 0.1
    done
}
query() { curl -fsS --user "default:$PASSWORD" --data-binary "$1" "$CH/"; }
wait_for "$CH_PID" 60 "clickhouse-server answering" "$WORK/ch.log" curl -fsS "$CH/ping"
wait_for "$PROVIDER_PID" 60 "the provider answering" "$WORK/provider.log" \
    curl -fsS "http://127.0.0.1:$PROVIDER_PORT/response_1.xml"
# The server refuses a client without the password: the block must pass it on.
if curl -fsS --data-binary 'SELECT 1' "$CH/" >/dev/null 2>&1; then
    fail "the test server answers without a password"
fi

printf '%s\n' "$BLOCK" >"$WORK/block.sh"
echo "readme-clickhouse: running the README's block ($PROFILE):"
sed 's/^/    /' "$WORK/block.sh"
# A process group of its own (job control), so the block's shell and planfeed stop together.
set -m
PLANFEED__STORE__CLICKHOUSE__URL=$CH \
PLANFEED__PROVIDER__URL=http://127.0.0.1:$PROVIDER_PORT/response_1.xml \
PLANFEED__SERVER__LISTEN=127.0.0.1:$PORT \
PLANFEED__SPOOL__PATH=$WORK/spool \
PLANFEED_CONFIG_DIR=$WORK/config \
    bash -e "$WORK/block.sh" <<<"$PASSWORD" >"$WORK/block.log" 2>&1 &
BLOCK_PID=$!
set +m

# The build comes first (from a fresh clone, many minutes); then planfeed serves /health at once,
# and is ready once it reached the store and migrated.
wait_for "$BLOCK_PID" 3600 "planfeed serving HTTP" "$WORK/block.log" curl -fsS "$BASE/health"
wait_for "$BLOCK_PID" 60 "planfeed ready" "$WORK/block.log" curl -fsS "$BASE/ready"
curl -fsS "$BASE/ready" | grep -q '"status":"ready"' || fail "/ready: $(curl -sS "$BASE/ready")"

MIGRATIONS=$(find clickhouse -maxdepth 1 -name '*.sql' | wc -l)
APPLIED=$(query 'SELECT count() FROM planfeed.schema_migrations')
[ "$APPLIED" = "$MIGRATIONS" ] || fail "migrations applied at start: $APPLIED of $MIGRATIONS"

RANGE='starts_at=2021-06-01T00:00:00Z&ends_at=2021-08-01T00:00:00Z'
WANT='Camela en concierto 2021-06-30 21:00:00 2021-06-30 22:00:00 15 30
Los Morancos 2021-07-31 20:00:00 2021-07-31 21:00:00 65 75'
events() {
    curl -fsS "$BASE/search?$RANGE" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["data"]["events"]:
    print(e["title"], e["start_date"], e["start_time"], e["end_date"], e["end_time"],
          "%g" % e["min_price"], "%g" % e["max_price"])'
}
searched() { [ "$(events)" = "$WANT" ]; }
# The first fetch runs at start: wait until its plans are served.
wait_for "$BLOCK_PID" 120 "the sample plans searchable" "$WORK/block.log" searched
STORED=$(query 'SELECT uniqExact(provider, base_plan_id, plan_id) FROM planfeed.plans')
[ "$STORED" = 4 ] || fail "plans in ClickHouse: $STORED, the sample feed has 4"

# SIGTERM to the block's shell and planfeed: a graceful stop, logged as `stopped`.
kill -TERM -- "-$BLOCK_PID"
deadline=$((SECONDS + 60))
while kill -0 -- "-$BLOCK_PID" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "planfeed did not stop within 60 s of SIGTERM"
    sleep 0.1
done
BLOCK_PID=
grep -q 'stopped' "$WORK/block.log" || { tail -n 20 "$WORK/block.log" >&2; fail "no graceful stop logged"; }
echo "readme-clickhouse: ok (database created, $APPLIED migrations applied at start, the sample plans served, stopped gracefully)"
