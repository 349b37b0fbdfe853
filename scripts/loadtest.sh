#!/usr/bin/env bash
# Load test of GET /search, bounded: every run lasts LOADTEST_SECONDS (default 5 s), all on
# 127.0.0.1. Prints one line per run and writes them to target/loadtest/results.txt.
#
#   scripts/loadtest.sh             # everything (builds release, generates the stores once)
#   LOADTEST_SECONDS=3 scripts/loadtest.sh
#
# Runs: wrk closed loop (requests/s) against planfeed and against a bare warp baseline serving the
# same bytes; a fixed LOADTEST_RATE (default 10000) requests/s with `oha --latency-correction`
# (latency measured from each request's scheduled time: coordinated omission corrected) for 1-day,
# 1-month, 1-year and random ranges, cross-checked on the 1-day runs by `examples/loadgen.rs` (the
# same method, one blocking thread per connection); p99 on a store of 10k plans vs 1 M plans; and a
# fixed-rate run against a ClickHouse-backed planfeed while the ClickHouse server is stopped (cached
# days only), when clickhouse-server is installed.
#
# oha comes from crates.io: `oha` on PATH, or $OHA, or else it is installed once into target/tools
# (`cargo install oha`, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${LOADTEST_SECONDS:-5}
RATE=${LOADTEST_RATE:-10000}
CONNS=${LOADTEST_CONNECTIONS:-32}
WORK=target/loadtest
mkdir -p "$WORK"
RESULTS=$WORK/results.txt
: >"$RESULTS"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
OHA=${OHA:-$(command -v oha || echo target/tools/bin/oha)}
if [ ! -x "$OHA" ]; then
    echo "installing oha into target/tools (once; takes a few minutes)" >&2
    cargo install oha --locked --root target/tools >/dev/null
    OHA=target/tools/bin/oha
fi
cargo build --release --bin planfeed --example gen_store --example baseline_server --example loadgen
BIN=target/release/planfeed

[ -f "$WORK/plans-10k.db" ] || target/release/examples/gen_store "$WORK/plans-10k.db" 10000
[ -f "$WORK/plans-1m.db" ] || target/release/examples/gen_store "$WORK/plans-1m.db" 1000000

DAY="starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z"
MONTH="starts_at=2023-06-01T00:00:00Z&ends_at=2023-07-01T00:00:00Z"
YEAR="starts_at=2023-01-01T00:00:00Z&ends_at=2024-01-01T00:00:00Z"
# About as many plans as 1-day on 10k plans, but on 1 M plans: same answer size, 100x the store.
HOURS="starts_at=2023-06-15T12:00:00Z&ends_at=2023-06-15T14:00:00Z"
# 5000 random ranges of 3 to 58 days at random hours.
RANDOM_PATHS=$WORK/random-paths.txt
python3 -c '
import random
random.seed(5)
for _ in range(5000):
    print("/search?starts_at=2023-06-%02dT%02d:00:00Z&ends_at=2023-07-%02dT%02d:00:00Z" % (
        random.randint(1, 28), random.randint(0, 23), random.randint(1, 28), random.randint(0, 23)))
' >"$RANDOM_PATHS"

# planfeed in the api role on an embedded store; rate limits raised out of the way.
serve() { # PORT DB [extra env...]
    local port=$1 db=$2
    shift 2
    if curl -s -o /dev/null "http://127.0.0.1:$port/health"; then
        echo "port $port is already in use: stop what listens there first" >&2
        exit 1
    fi
    env PLANFEED__ROLE=api PLANFEED__LOG__LEVEL=warn \
        PLANFEED__SERVER__LISTEN="127.0.0.1:$port" \
        PLANFEED__STORE__PATH="$db" \
        PLANFEED__SEARCH__CACHE_BYTES=2147483648 \
        PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_PER_SECOND=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_BURST=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__GLOBAL_PER_SECOND=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__GLOBAL_BURST=10000000 \
        "$@" "$BIN" serve >"$WORK/serve-$port.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    # Warm every day (the start warms them too; this waits until it is done).
    curl -sf -o /dev/null "http://127.0.0.1:$port/search"
}

WRK_LUA=$WORK/report.lua
cat >"$WRK_LUA" <<'LUA'
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.3f %.3f %.3f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, errors))
end
LUA

report() { # LABEL RPS P50 P99 P999 ERRORS; keeps requests/s and p99 in LAST_RPS / LAST_P99
    LAST_RPS=$2
    LAST_P99=$4
    printf '%-44s %9s req/s  p50 %7s ms  p99 %7s ms  p99.9 %7s ms  errors %s\n' "$@" | tee -a "$RESULTS"
}

# The same report, with each request's path taken in turn from the file in $WRK_PATHS.
WRK_PATHS_LUA=$WORK/paths.lua
{
    cat <<'LUA'
paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, paths[(counter % #paths) + 1])
end
LUA
    cat "$WRK_LUA"
} >"$WRK_PATHS_LUA"

closed() { # LABEL URL [PATHS_FILE]
    local line
    if [ -n "${3:-}" ]; then
        line=$(WRK_PATHS=$3 wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$WRK_PATHS_LUA" "$2" | grep '^RESULT')
    else
        line=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$WRK_LUA" "$2" | grep '^RESULT')
    fi
    # shellcheck disable=SC2086
    report "$1" ${line#RESULT }
}

# oha's JSON summary as a RESULT line. Errors are non-200 answers and failed requests; the requests
# still in flight when the run's time is up ("aborted due to deadline") are not errors.
OHA_SUMMARY='
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
errors = sum(n for c, n in codes.items() if c != "200")
errors += sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
print("RESULT %.0f %.3f %.3f %.3f %d" % (codes.get("200", 0) / d["summary"]["total"],
      p["p50"] * 1e3, p["p99"] * 1e3, p["p99.9"] * 1e3, errors))
'

fixed() { # LABEL PORT PATH_OR_@FILE
    local line target=$3 args=()
    if [[ $target == @* ]]; then
        sed "s|^|http://127.0.0.1:$2|" "${target#@}" >"$WORK/urls-$2.txt"
        args=(--urls-from-file "$WORK/urls-$2.txt")
    else
        args=("http://127.0.0.1:$2$target")
    fi
    line=$("$OHA" -z "${SECS}s" -q "$RATE" -c "$CONNS" --latency-correction --no-tui --output-format json \
        "${args[@]}" | python3 -c "$OHA_SUMMARY")
    # shellcheck disable=SC2086
    report "$1" ${line#RESULT }
}

fixed_loadgen() { # LABEL PORT PATH
    local line
    line=$(target/release/examples/loadgen "127.0.0.1:$2" "$RATE" "$SECS" "$CONNS" "$3" | grep '^RESULT')
    # shellcheck disable=SC2086
    report "$1 (loadgen)" ${line#RESULT }
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"

# --- 1 M plans -------------------------------------------------------------------------------------
serve 18081 "$WORK/plans-1m.db"
curl -s "http://127.0.0.1:18081/search?$DAY" >"$WORK/day-1m.json"
curl -s -o /dev/null http://127.0.0.1:18080/search && { echo "port 18080 is already in use" >&2; exit 1; }
target/release/examples/baseline_server 127.0.0.1:18080 "$WORK/day-1m.json" >/dev/null &
PIDS+=($!)
sleep 0.3
for r in DAY HOURS MONTH YEAR; do
    q=${!r}
    echo "# $r on 1 M plans: $(curl -s "http://127.0.0.1:18081/search?$q" | wc -c) bytes" | tee -a "$RESULTS"
done
closed "closed loop, baseline (1-day bytes, 1M)" "http://127.0.0.1:18080/search?$DAY"
BASE_1M=$LAST_RPS
closed "closed loop, 1-day, 1M plans" "http://127.0.0.1:18081/search?$DAY"
SHARE_1M=$(python3 -c "print(round(100 * $LAST_RPS / $BASE_1M))")
fixed "fixed ${RATE}/s, 1-day, 1M plans" 18081 "/search?$DAY"
fixed "fixed ${RATE}/s, 2-hour, 1M plans" 18081 "/search?$HOURS"
P99_1M=$LAST_P99
closed "closed loop, 1-month, 1M plans" "http://127.0.0.1:18081/search?$MONTH"
closed "closed loop, 1-year, 1M plans" "http://127.0.0.1:18081/search?$YEAR"
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()
sleep 0.3

# --- 10k plans -------------------------------------------------------------------------------------
serve 18082 "$WORK/plans-10k.db"
curl -s "http://127.0.0.1:18082/search?$DAY" >"$WORK/day-10k.json"
curl -s -o /dev/null http://127.0.0.1:18080/search && { echo "port 18080 is already in use" >&2; exit 1; }
target/release/examples/baseline_server 127.0.0.1:18080 "$WORK/day-10k.json" >/dev/null &
PIDS+=($!)
sleep 0.3
for r in DAY MONTH YEAR; do
    q=${!r}
    echo "# $r on 10k plans: $(curl -s "http://127.0.0.1:18082/search?$q" | wc -c) bytes" | tee -a "$RESULTS"
done
closed "closed loop, baseline (1-day bytes, 10k)" "http://127.0.0.1:18080/search?$DAY"
BASE_10K=$LAST_RPS
closed "closed loop, 1-day, 10k plans" "http://127.0.0.1:18082/search?$DAY"
SHARE_10K=$(python3 -c "print(round(100 * $LAST_RPS / $BASE_10K))")
closed "closed loop, 1-month, 10k plans" "http://127.0.0.1:18082/search?$MONTH"
closed "closed loop, 1-year, 10k plans" "http://127.0.0.1:18082/search?$YEAR"
closed "closed loop, random 3-58 days, 10k plans" "http://127.0.0.1:18082" "$RANDOM_PATHS"
fixed "fixed ${RATE}/s, baseline (1-day bytes, 10k)" 18080 "/search?$DAY"
fixed "fixed ${RATE}/s, 1-day, 10k plans" 18082 "/search?$DAY"
P99_10K=$LAST_P99
fixed_loadgen "fixed ${RATE}/s, baseline (1-day bytes, 10k)" 18080 "/search?$DAY"
fixed_loadgen "fixed ${RATE}/s, 1-day, 10k plans" 18082 "/search?$DAY"
fixed "fixed ${RATE}/s, 1-month, 10k plans" 18082 "/search?$MONTH"
fixed "fixed ${RATE}/s, 1-year, 10k plans" 18082 "/search?$YEAR"
fixed "fixed ${RATE}/s, random 3-58 days, 10k plans" 18082 "@$RANDOM_PATHS"
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()

# --- ClickHouse down -------------------------------------------------------------------------------
if command -v clickhouse-server >/dev/null; then
    CH=$(mktemp -d /tmp/planfeed-loadtest-ch.XXXXXX)
    mkdir -p "$CH"/{data,tmp,user_files,format_schemas}
    cat >"$CH/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>18123</http_port>
    <tcp_port>19000</tcp_port>
    <path>$CH/data/</path>
    <tmp_path>$CH/tmp/</tmp_path>
    <user_files_path>$CH/user_files/</user_files_path>
    <format_schema_path>$CH/format_schemas/</format_schema_path>
    <users_config>$CH/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
    cat >"$CH/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
XML
    clickhouse-server --config-file="$CH/config.xml" >"$CH/server.log" 2>&1 &
    CH_PID=$!
    PIDS+=($CH_PID)
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18123/ping >/dev/null && break; sleep 0.1; done
    target/release/examples/gen_store clickhouse://127.0.0.1:18123/planfeed 10000
    serve 18083 unused PLANFEED__STORE__BACKEND=clickhouse PLANFEED__STORE__CLICKHOUSE__URL=http://127.0.0.1:18123 \
        PLANFEED__STORE__CLICKHOUSE__DATABASE=planfeed PLANFEED__SEARCH__CACHE_TTL=2s
    curl -sf -o /dev/null "http://127.0.0.1:18083/search?$DAY"
    curl -sf -o /dev/null "http://127.0.0.1:18083/search?$MONTH"
    fixed "fixed ${RATE}/s, 1-day, ClickHouse up" 18083 "/search?$DAY"
    kill "$CH_PID"
    wait "$CH_PID" 2>/dev/null || true
    fixed "fixed ${RATE}/s, 1-day, ClickHouse stopped" 18083 "/search?$DAY"
    fixed "fixed ${RATE}/s, 1-month, ClickHouse stopped" 18083 "/search?$MONTH"
    curl -s http://127.0.0.1:18083/metrics | { grep -E '^planfeed_search_(stale_served|store_errors)_total' || true; } | tee -a "$RESULTS"
    rm -rf "$CH"
fi
{
    echo "closed loop 1-day vs bare warp: ${SHARE_1M} % (1M plans), ${SHARE_10K} % (10k plans) (target >= 70 %)"
    echo "p99 at 1M plans (2-hour range) / p99 at 10k plans (1-day range), same answer size:" \
        "$(python3 -c "print(round($P99_1M / $P99_10K, 2))")x (target < 2x)"
} | tee -a "$RESULTS"
echo "results in $RESULTS"
