#!/usr/bin/env bash
# Mixed load (`make bench`): searches and ingestion on one 2-core machine, both directions in one
# run. The simulator's large changing feed (3,000 base plans x 4 plans x 50 zones, about 61 MB,
# every plan changed each round) is fetched every second by one planfeed in the default role
# (`both`) on a fresh embedded store, rate limits out of the way; warm 1-day searches come from wrk
# (closed loop, -t2 -c$CONNS) or examples/loadgen.rs (a fixed rate, latency from each request's
# scheduled time). Prints one line per phase and a summary per profile, and writes them to
# target/mixed/results.txt.
#
#   scripts/mixed.sh
#   MIXED_SECONDS=5 MIXED_PAIRS=1 MIXED_PROFILES="default" scripts/mixed.sh
#
# Each round of a profile runs five phases of MIXED_SECONDS (default 10):
#   1. searches alone (the simulator stopped with SIGSTOP once the pipeline is empty): closed-loop
#      req/s and p99, fixed-rate p99;
#   2. ingestion alone (SIGCONT): plans/s and MB/s (at most one 61 MB round a second: the interval);
#   3. ingestion + fixed-rate searches (MIXED_RATE, default 10,000/s): search p99, plans/s;
#   4. ingestion + closed-loop searches (saturating): req/s, plans/s;
#   5. ingestion + one cached search a second: plans/s.
# Ingestion's plans/s in a phase is the writer's `planfeed_plans_total{outcome="seen"}` over it.
# The machine may be shared: each profile runs MIXED_PAIRS (default 3) rounds and judges by each
# round's ratios and their median, printing the load average with each round.
# The simulator stands for a provider on another machine: it runs under SCHED_IDLE (MIXED_SIM_IDLE=1,
# the default) at nice MIXED_SIM_NICE (default 19), so generating the feed does not count against
# either side (MIXED_SIM_IDLE=0 MIXED_SIM_NICE=0 to charge it).
#
# The embedded store lives in a new folder under MIXED_STORE_DIR (default /tmp). On a virtual
# machine whose hypervisor charges its disk emulation to the guest's CPU, a round's writes pause the
# whole machine for ~20 ms when the cores are busy: each ingestion phase prints the CPU the
# hypervisor took (`steal`), and MIXED_STORE_DIR=/dev/shm measures the same rounds without disk.
#
# Profiles (MIXED_PROFILES, space-separated): `default` (config/default.toml: ingestion yields what
# the searches need down to `min_ingest_share` 0.25), `floor-0.1` (min_ingest_share 0.1),
# `never-yield` (min_ingest_share 1: no rests, ingestion under SCHED_IDLE only).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${MIXED_SECONDS:-10}
PAIRS=${MIXED_PAIRS:-3}
SIM_NICE=${MIXED_SIM_NICE:-19}
SIM_IDLE=${MIXED_SIM_IDLE:-1}
RATE=${MIXED_RATE:-10000}
CONNS=${MIXED_CONNECTIONS:-32}
BASE_PLANS=${MIXED_BASE_PLANS:-3000}
PROFILES=${MIXED_PROFILES:-default never-yield}
STORE_DIR=${MIXED_STORE_DIR:-/tmp}
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
BIN=${MIXED_BIN:-target/release/planfeed}
DAY="/search?starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z"

for port in $SIM_PORT $PORT; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "port $port is already in use: stop what listens there first" >&2
        exit 1
    fi
done
SIM_POLICY=()
[ "$SIM_IDLE" = 1 ] && SIM_POLICY=(chrt --idle 0)
"${SIM_POLICY[@]}" nice -n "$SIM_NICE" "$BIN" simulate-provider --listen "127.0.0.1:$SIM_PORT" --base-plans "$BASE_PLANS" --plans 4 --zones 50 \
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
# Like `metric`, for a counter of seconds (a float).
metric_float() { # NAME [LABEL_FILTER]
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" -v f="${2:-}" \
        '($1 == n || index($1, n "{") == 1) && index($1, f) { s += $2 } END { printf "%.3f\n", s }'
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

# The CPU seconds (user + system) of each of a process's threads: "TID NAME SECONDS" lines.
thread_secs() { # PID
    local tick t
    tick=$(getconf CLK_TCK)
    for t in /proc/"$1"/task/*; do
        printf '%s %s ' "${t##*/}" "$(tr ' ' _ <"$t/comm" 2>/dev/null)"
        sed 's/.*) //' "$t/stat" 2>/dev/null | awk -v k="$tick" '{print ($12 + $13) / k}'
    done
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
    floor-0.1) echo "PLANFEED__PIPELINE__MIN_INGEST_SHARE=0.1" ;;
    never-yield) echo "PLANFEED__PIPELINE__MIN_INGEST_SHARE=1" ;;
    *) echo "unknown profile $1" >&2; exit 1 ;;
    esac
}

# Plans the writer has seen so far.
seen() { metric planfeed_plans_total 'outcome="seen"'; }

# Runs "$@" while measuring ingestion over it: sets INGESTED (plans/s), ROUNDS (fetches ok) and
# CONTROL (the controller's periods with the searches delayed, the seconds rested, promotions).
ingesting() {
    local s0 r0 t0 d0 p0 m0
    s0=$(seen) r0=$(metric planfeed_fetches_total 'outcome="ok"') t0=$(date +%s.%N)
    d0=$(metric planfeed_ingest_periods_total 'searches_delayed') p0=$(metric planfeed_ingest_paced_seconds_total)
    m0=$(metric planfeed_ingest_starvation_promotions_total)
    local l0
    l0=$(metric_float planfeed_cpu_lost_seconds_total 'cause="steal"')
    # The searches' mean wait for a core, sampled every half second.
    (while :; do
        curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "planfeed_ingest_search_wait_seconds" { print $2 * 1e6 }'
        sleep 0.5
    done) >"$WORK/waits.txt" &
    local sampler=$!
    "$@"
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null || true
    INGESTED=$(python3 -c "import time; print(round(($(seen) - $s0) / (time.time() - $t0)))")
    ROUNDS=$(($(metric planfeed_fetches_total 'outcome="ok"') - r0))
    CONTROL="$(($(metric planfeed_ingest_periods_total 'searches_delayed') - d0)) periods delayed,"
    CONTROL="$CONTROL $(($(metric planfeed_ingest_paced_seconds_total) - p0)) s rested,"
    CONTROL="$CONTROL $(($(metric planfeed_ingest_starvation_promotions_total) - m0)) promotions,"
    CONTROL="$CONTROL steal $(python3 -c "print(round($(metric_float planfeed_cpu_lost_seconds_total 'cause="steal"') - $l0, 2))") s,"
    CONTROL="$CONTROL search wait median $(sort -n "$WORK/waits.txt" | awk '{a[NR] = $1} END { printf "%.0f", NR ? a[int((NR + 1) / 2)] : 0 }') us"
}

# One search a second for SECS seconds.
trickle() {
    for _ in $(seq 1 "$SECS"); do
        curl -sf -o /dev/null "http://127.0.0.1:$PORT$DAY"
        sleep 1
    done
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); feed $((FEED_BYTES / 1000000)) MB" \
    "($BASE_PLANS x 4 x 50), fetched every 1 s; ${SECS} s per run, fixed rate ${RATE}/s, $CONNS connections;" \
    "$PAIRS idle/busy pairs per profile; simulator at nice $SIM_NICE$([ "$SIM_IDLE" = 1 ] && echo ", SCHED_IDLE")" | tee -a "$RESULTS"
for profile in $PROFILES; do
    STORE=$(mktemp -d "$STORE_DIR/planfeed-mixed.XXXXXX")
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
    RATIOS=$WORK/ratios-$profile.txt
    : >"$RATIOS"
    SIM0=$(cpu_secs "$SIM" '*')
    thread_secs "$PF" >"$WORK/threads0.txt"
    for pair in $(seq 1 "$PAIRS"); do
        echo "round $pair, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"
        pause_ingestion
        closed "searches alone, closed loop"
        IDLE_RPS=$LAST_RPS
        fixed "searches alone, fixed ${RATE}/s"
        IDLE_P99=$LAST_P99
        kill -CONT "$SIM"
        ingesting sleep "$SECS"
        ALONE=$INGESTED
        echo "ingestion alone: $ALONE plans/s, $ROUNDS rounds; $CONTROL" | tee -a "$RESULTS"
        ingesting fixed "with ingestion, fixed ${RATE}/s"
        FIXED_P99=$LAST_P99 FIXED_ING=$INGESTED
        echo "  ingestion meanwhile: $FIXED_ING plans/s, $ROUNDS rounds; $CONTROL" | tee -a "$RESULTS"
        ingesting closed "with ingestion, closed loop"
        SAT_RPS=$LAST_RPS SAT_ING=$INGESTED
        echo "  ingestion meanwhile: $SAT_ING plans/s, $ROUNDS rounds; $CONTROL" | tee -a "$RESULTS"
        ingesting trickle
        TRICKLE_ING=$INGESTED
        echo "ingestion with 1 search/s: $TRICKLE_ING plans/s, $ROUNDS rounds; $CONTROL" | tee -a "$RESULTS"
        python3 - "$IDLE_RPS" "$IDLE_P99" "$ALONE" "$FIXED_P99" "$FIXED_ING" "$SAT_RPS" "$SAT_ING" "$TRICKLE_ING" <<'PY' | tee -a "$RATIOS" |
idle_rps, idle_p99, alone, fixed_p99, fixed_ing, sat_rps, sat_ing, trickle_ing = map(float, __import__("sys").argv[1:])
a = max(alone, 1.0)
print(f"{fixed_p99:.3f} {fixed_ing / a:.3f} {sat_rps / idle_rps:.3f} {sat_ing / a:.3f} {trickle_ing / a:.3f} {idle_p99:.3f} {alone:.0f} {sat_ing:.0f}")
PY
            awk '{printf "round: fixed-rate p99 %.3f ms (alone %.3f), ingestion %.2fx; saturated: searches %.2fx, ingestion %.2fx; 1 search/s: ingestion %.2fx\n", $1, $6, $2, $3, $4, $5}' |
            tee -a "$RESULTS"
    done
    thread_secs "$PF" >"$WORK/threads1.txt"
    SIM1=$(cpu_secs "$SIM" '*')
    python3 - "$SIM0" "$SIM1" "$WORK/threads0.txt" "$WORK/threads1.txt" "$RATIOS" "$FEED_BYTES" "$BASE_PLANS" <<'PY' | tee -a "$RESULTS"
import statistics, sys
s0, s1 = float(sys.argv[1]), float(sys.argv[2])
def threads(path):
    out = {}
    for line in open(path):
        tid, name, cpu = line.split()
        out[tid] = (name, float(cpu))
    return out
before, after = threads(sys.argv[3]), threads(sys.argv[4])
used = {tid: (name, cpu - before.get(tid, (name, 0.0))[1]) for tid, (name, cpu) in after.items()}
groups = {}
for name, cpu in used.values():
    group = ("ingestion pool" if name.startswith("planfeed-ingest")
             else "pipeline runtime" if name.startswith("planfeed-pipe") else name)
    groups[group] = groups.get(group, 0.0) + cpu
print("CPU s over the rounds: "
      + ", ".join(f"{g} {c:.1f}" for g, c in sorted(groups.items(), key=lambda x: -x[1]) if c >= 0.05)
      + f"; simulator {s1 - s0:.1f}")
rows = [list(map(float, line.split())) for line in open(sys.argv[5])]
m = [statistics.median(col) for col in zip(*rows)]
feed_mb, round_plans = float(sys.argv[6]) / 1e6, float(sys.argv[7]) * 4
print(f"median of {len(rows)} rounds: fixed rate: search p99 {m[0]:.3f} ms (target <= 2 ms), ingestion {m[1]:.2f}x alone "
      f"(target >= 0.7); saturated: searches {m[2]:.2f}x alone (target >= 0.7), ingestion {m[3]:.2f}x alone "
      f"(target >= 0.25), a {feed_mb:.0f} MB round in {round_plans / max(m[7], 1):.1f} s (target < 30 s); "
      f"1 search/s: ingestion {m[4]:.2f}x alone (target >= 0.95); ingestion alone {m[6]:,.0f} plans/s "
      f"({m[6] / round_plans * feed_mb:.1f} MB/s)")
PY
    echo "controller: $(curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^planfeed_ingest_(periods_total|starvation_promotions_total|paced_seconds_total)' | tr '\n' ' ')" | tee -a "$RESULTS"
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
