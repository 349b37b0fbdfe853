#!/usr/bin/env bash
# Mixed load (`make bench`): warm 1-day searches while nothing is ingested and while the simulator's
# large changing feed (3,000 base plans x 4 plans x 50 zones, about 61 MB, every plan changed each
# round) is fetched every second, side by side in one run, for each ingestion profile below.
# Prints one line per run and writes them to target/mixed/results.txt.
#
#   scripts/mixed.sh
#   MIXED_SECONDS=5 MIXED_PROFILES="default" scripts/mixed.sh
#
# One planfeed in the default role (`both`) on a fresh embedded store, rate limits out of the way,
# fetching the simulator (a separate process on this machine, standing for the provider) every
# second. Idle phases stop the simulator (SIGSTOP: the fetch under way waits, nothing is parsed or
# written) and wait until the pipeline holds no chunk; busy phases let it go on (SIGCONT). In each
# phase: a wrk closed loop (-t2 -c$CONNS) and a fixed rate (examples/loadgen.rs, latency from each
# request's scheduled time) on the same 1-day range. A busy phase also reports the rounds ingested,
# plans/s and MB/s, failed fetches, and the CPU seconds of planfeed's ingestion threads, its other
# threads and the simulator.
#
# Profiles (MIXED_PROFILES, space-separated): `default` (config/default.toml: every core but one for
# parsing, nice +10), `same-priority` (two parse threads at the searches' priority: what tokio's
# blocking pool gave before), `bound-only` (one thread, no nice), `nice19` (one thread, nice +19).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${MIXED_SECONDS:-10}
RATE=${MIXED_RATE:-10000}
CONNS=${MIXED_CONNECTIONS:-32}
BASE_PLANS=${MIXED_BASE_PLANS:-3000}
PROFILES=${MIXED_PROFILES:-default same-priority bound-only nice19}
SIM_PORT=18190
PORT=18191
WORK=target/mixed
mkdir -p "$WORK"
RESULTS=$WORK/results.txt
: >"$RESULTS"
PIDS=()
SIM=
cleanup() {
    [ -n "$SIM" ] && kill -CONT "$SIM" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
cargo build --release --bin planfeed --example loadgen
BIN=target/release/planfeed
DAY="/search?starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z"

for port in $SIM_PORT $PORT; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "port $port is already in use: stop what listens there first" >&2
        exit 1
    fi
done
"$BIN" simulate-provider --listen "127.0.0.1:$SIM_PORT" --base-plans "$BASE_PLANS" --plans 4 --zones 50 \
    >"$WORK/simulator.log" 2>&1 &
SIM=$!
PIDS+=("$SIM")
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$SIM_PORT/" && break; sleep 0.1; done
FEED_BYTES=$(curl -s "http://127.0.0.1:$SIM_PORT/api/events" | wc -c)

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
    printf '%-40s %9s req/s  p50 %7s ms  p99 %7s ms  p99.9 %7s ms  errors %s\n' "$@" | tee -a "$RESULTS"
}
closed() { # LABEL
    local line
    line=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$WRK_LUA" "http://127.0.0.1:$PORT$DAY" | grep '^RESULT')
    # shellcheck disable=SC2086
    report "$1" ${line#RESULT }
}
fixed() { # LABEL
    local line
    line=$(target/release/examples/loadgen "127.0.0.1:$PORT" "$RATE" "$SECS" "$CONNS" "$DAY" | grep '^RESULT')
    # shellcheck disable=SC2086
    report "$1" ${line#RESULT }
}

# A counter or gauge of planfeed's /metrics (summed over its labels), 0 when absent.
metric() { # NAME [LABEL_FILTER]
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" -v f="${2:-}" \
        '($1 == n || index($1, n "{") == 1) && index($1, f) { s += $2 } END { printf "%d\n", s }'
}
# CPU seconds (user + system) of a process's threads whose name matches (or not) a pattern.
cpu_secs() { # PID PATTERN [invert]
    local tick total=0 t name fields
    tick=$(getconf CLK_TCK)
    for t in /proc/"$1"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        if [[ $name == $2 ]]; then [ "${3:-}" = invert ] && continue; else [ "${3:-}" = invert ] || continue; fi
        fields=$(sed 's/.*) //' "$t/stat" 2>/dev/null) || continue
        total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
    done
    python3 -c "print(round($total / $tick, 2))"
}

# Stops the simulator and waits until the pipeline holds no chunk and the writer's count stands.
pause_ingestion() {
    kill -STOP "$SIM"
    local last now
    last=$(metric planfeed_plans_total)
    for _ in $(seq 1 600); do
        sleep 0.5
        now=$(metric planfeed_plans_total)
        if [ "$now" = "$last" ] && [ "$(metric planfeed_pipeline_chunks_in_flight)" = 0 ]; then
            return
        fi
        last=$now
    done
    echo "the pipeline never went idle" >&2
    exit 1
}

# Profile name -> planfeed environment.
profile_env() {
    case $1 in
    default) echo "" ;;
    same-priority) echo "PLANFEED__PIPELINE__INGEST_THREADS=2 PLANFEED__PIPELINE__INGEST_NICE=0" ;;
    bound-only) echo "PLANFEED__PIPELINE__INGEST_THREADS=1 PLANFEED__PIPELINE__INGEST_NICE=0" ;;
    nice19) echo "PLANFEED__PIPELINE__INGEST_THREADS=1 PLANFEED__PIPELINE__INGEST_NICE=19" ;;
    *) echo "unknown profile $1" >&2; exit 1 ;;
    esac
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); feed $((FEED_BYTES / 1000000)) MB" \
    "($BASE_PLANS x 4 x 50), fetched every 1 s; ${SECS} s per run, fixed rate ${RATE}/s, $CONNS connections" |
    tee -a "$RESULTS"
for profile in $PROFILES; do
    STORE=$(mktemp -d /tmp/planfeed-mixed.XXXXXX)
    # shellcheck disable=SC2046
    env PLANFEED__LOG__LEVEL=warn PLANFEED__SERVER__LISTEN="127.0.0.1:$PORT" \
        PLANFEED__STORE__PATH="$STORE/plans.db" PLANFEED__SPOOL__PATH="$STORE/spool" \
        PLANFEED__PROVIDER__URL="http://127.0.0.1:$SIM_PORT/api/events" \
        PLANFEED__PROVIDER__INTERVAL=1s PLANFEED__PROVIDER__JITTER=0s PLANFEED__PROVIDER__TIMEOUT=1h \
        PLANFEED__SEARCH__CACHE_BYTES=2147483648 \
        PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_PER_SECOND=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_BURST=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__GLOBAL_PER_SECOND=10000000 \
        PLANFEED__SERVER__RATE_LIMIT__GLOBAL_BURST=10000000 \
        $(profile_env "$profile") "$BIN" serve >"$WORK/serve-$profile.log" 2>&1 &
    PF=$!
    PIDS+=("$PF")
    # The first round ingested, then the day searched once (warm).
    for _ in $(seq 1 1200); do
        [ "$(metric planfeed_fetches_total 'outcome="ok"')" -ge 1 ] 2>/dev/null && break
        kill -0 "$PF" || { cat "$WORK/serve-$profile.log" >&2; exit 1; }
        sleep 0.5
    done
    curl -sf -o /dev/null "http://127.0.0.1:$PORT$DAY"
    echo "# profile $profile: $(profile_env "$profile" | sed 's/PLANFEED__PIPELINE__//g')" | tee -a "$RESULTS"

    pause_ingestion
    closed "idle, closed loop"
    IDLE_RPS=$LAST_RPS IDLE_P99=$LAST_P99
    fixed "idle, fixed ${RATE}/s"
    IDLE_FIXED_P99=$LAST_P99

    OK0=$(metric planfeed_fetches_total 'outcome="ok"')
    ALL0=$(metric planfeed_fetches_total)
    SEEN0=$(metric planfeed_plans_total 'outcome="seen"')
    ING0=$(cpu_secs "$PF" 'planfeed-ingest*')
    REST0=$(cpu_secs "$PF" 'planfeed-ingest*' invert)
    SIM0=$(cpu_secs "$SIM" '*')
    T0=$(date +%s.%N)
    kill -CONT "$SIM"
    closed "busy, closed loop"
    BUSY_RPS=$LAST_RPS BUSY_P99=$LAST_P99
    fixed "busy, fixed ${RATE}/s"
    BUSY_FIXED_P99=$LAST_P99
    T1=$(date +%s.%N)
    OK1=$(metric planfeed_fetches_total 'outcome="ok"')
    ALL1=$(metric planfeed_fetches_total)
    SEEN1=$(metric planfeed_plans_total 'outcome="seen"')
    ING1=$(cpu_secs "$PF" 'planfeed-ingest*')
    REST1=$(cpu_secs "$PF" 'planfeed-ingest*' invert)
    SIM1=$(cpu_secs "$SIM" '*')
    python3 - "$T0" "$T1" "$OK0" "$OK1" "$ALL0" "$ALL1" "$SEEN0" "$SEEN1" "$FEED_BYTES" \
        "$ING0" "$ING1" "$REST0" "$REST1" "$SIM0" "$SIM1" <<'PY' | tee -a "$RESULTS"
import sys
t0, t1, ok0, ok1, all0, all1, seen0, seen1, feed, i0, i1, r0, r1, s0, s1 = map(float, sys.argv[1:])
secs = t1 - t0
rounds = ok1 - ok0
print(f"busy ingestion: {rounds:.0f} rounds ok, {all1 - all0 - rounds:.0f} failed in {secs:.1f} s; "
      f"{(seen1 - seen0) / secs:,.0f} plans/s, {rounds * feed / 1e6 / secs:.1f} MB/s; CPU s: ingestion threads "
      f"{i1 - i0:.1f}, other planfeed threads {r1 - r0:.1f}, simulator {s1 - s0:.1f}")
PY
    python3 -c "
i, b, ip, bp, fi, fb = $IDLE_RPS, $BUSY_RPS, $IDLE_P99, $BUSY_P99, $IDLE_FIXED_P99, $BUSY_FIXED_P99
print(f'busy/idle: closed loop req/s {b / i:.2f} (target >= 0.7), p99 {bp / ip:.2f}x (target <= 2x); '
      f'fixed-rate p99 {fb / fi:.2f}x')" | tee -a "$RESULTS"
    # How the cache met the writes: days reloaded by invalidations, lookups served the previous copy
    # meanwhile, misses (searches that read the store) and store deadlines passed.
    echo "search cache: reloaded days $(metric planfeed_search_reloaded_days_total)," \
        "previous copies served $(metric planfeed_search_previous_served_total)," \
        "misses $(metric planfeed_search_cache_misses_total)," \
        "store deadlines $(metric planfeed_search_store_deadlines_total)" | tee -a "$RESULTS"
    kill "$PF"
    wait "$PF" 2>/dev/null || true
    rm -rf "$STORE"
done
echo "results in $RESULTS"
