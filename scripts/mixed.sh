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
# plans/s and MB/s, failed fetches, and the CPU seconds of planfeed's ingestion threads (the pool,
# `planfeed-ingest-N`, and the pipeline's runtime, `planfeed-pipe-N`), its other threads and the
# simulator (with planfeed's busiest threads by id).
#
# The machine may be shared: a neighbour's build can halve the req/s of an idle phase against one a
# minute later. So each profile runs MIXED_PAIRS (default 3) pairs of phases, idle then busy, and
# judges by each pair's ratios and their median, printing the load average with each pair.
# The simulator stands for a provider on another machine: it runs under SCHED_IDLE (MIXED_SIM_IDLE=1,
# the default) at nice MIXED_SIM_NICE (default 19), so generating the feed does not count against
# searches (MIXED_SIM_IDLE=0 MIXED_SIM_NICE=0 to charge it). Under nice 19 alone a woken search
# thread may still wait for the simulator's time slice to end (up to a few ms: see
# docs/adr/0012-search-isolation.md, "Fifth pass"); a SCHED_IDLE thread is preempted at once.
#
# Profiles (MIXED_PROFILES, space-separated): `default` (config/default.toml: every core but one for
# parsing and the store's writes, nice +10 under SCHED_IDLE with the starvation guard, resting while
# searches are answered: `ingest_share` 0.1), `unpaced` (the same without the rests), `nice10`
# (neither rests nor SCHED_IDLE), `same-priority` (two ingestion threads at the
# searches' priority: close to what tokio's blocking pool gave before), `bound-only` (one thread, no
# nice), `nice19` (one thread, nice +19); all but `default` without the rests.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${MIXED_SECONDS:-10}
PAIRS=${MIXED_PAIRS:-3}
SIM_NICE=${MIXED_SIM_NICE:-19}
SIM_IDLE=${MIXED_SIM_IDLE:-1}
RATE=${MIXED_RATE:-10000}
CONNS=${MIXED_CONNECTIONS:-32}
BASE_PLANS=${MIXED_BASE_PLANS:-3000}
PROFILES=${MIXED_PROFILES:-default unpaced nice10 same-priority bound-only nice19}
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
    unpaced) echo "PLANFEED__PIPELINE__INGEST_SHARE=1" ;;
    nice10) echo "PLANFEED__PIPELINE__INGEST_IDLE_POLICY=false PLANFEED__PIPELINE__INGEST_SHARE=1" ;;
    same-priority) echo "PLANFEED__PIPELINE__INGEST_THREADS=2 PLANFEED__PIPELINE__INGEST_NICE=0 PLANFEED__PIPELINE__INGEST_IDLE_POLICY=false PLANFEED__PIPELINE__INGEST_SHARE=1" ;;
    bound-only) echo "PLANFEED__PIPELINE__INGEST_THREADS=1 PLANFEED__PIPELINE__INGEST_NICE=0 PLANFEED__PIPELINE__INGEST_IDLE_POLICY=false PLANFEED__PIPELINE__INGEST_SHARE=1" ;;
    nice19) echo "PLANFEED__PIPELINE__INGEST_THREADS=1 PLANFEED__PIPELINE__INGEST_NICE=19 PLANFEED__PIPELINE__INGEST_IDLE_POLICY=false PLANFEED__PIPELINE__INGEST_SHARE=1" ;;
    *) echo "unknown profile $1" >&2; exit 1 ;;
    esac
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); feed $((FEED_BYTES / 1000000)) MB" \
    "($BASE_PLANS x 4 x 50), fetched every 1 s; ${SECS} s per run, fixed rate ${RATE}/s, $CONNS connections;" \
    "$PAIRS idle/busy pairs per profile; simulator at nice $SIM_NICE$([ "$SIM_IDLE" = 1 ] && echo ", SCHED_IDLE")" | tee -a "$RESULTS"
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
    RATIOS=$WORK/ratios-$profile.txt
    : >"$RATIOS"
    BUSY_SECS=0
    OK0=$(metric planfeed_fetches_total 'outcome="ok"')
    ALL0=$(metric planfeed_fetches_total)
    SEEN0=$(metric planfeed_plans_total 'outcome="seen"')
    SPOOLED0=$(metric planfeed_plans_total 'outcome="spooled"')
    SIM0=$(cpu_secs "$SIM" '*')
    thread_secs "$PF" >"$WORK/threads0.txt"
    for pair in $(seq 1 "$PAIRS"); do
        echo "pair $pair, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"
        pause_ingestion
        closed "idle, closed loop"
        IDLE_RPS=$LAST_RPS IDLE_P99=$LAST_P99
        fixed "idle, fixed ${RATE}/s"
        IDLE_FIXED_P99=$LAST_P99
        T0=$(date +%s.%N)
        kill -CONT "$SIM"
        closed "busy, closed loop"
        BUSY_RPS=$LAST_RPS BUSY_P99=$LAST_P99
        fixed "busy, fixed ${RATE}/s"
        BUSY_FIXED_P99=$LAST_P99
        BUSY_SECS=$(python3 -c "print($BUSY_SECS + $(date +%s.%N) - $T0)")
        python3 -c "
i, b, ip, bp, fi, fb = $IDLE_RPS, $BUSY_RPS, $IDLE_P99, $BUSY_P99, $IDLE_FIXED_P99, $BUSY_FIXED_P99
print(f'{b / i:.3f} {bp / ip:.3f} {fb / fi:.3f}')" | tee -a "$RATIOS" |
            awk '{printf "pair busy/idle: closed loop req/s %.2f, p99 %.2fx; fixed-rate p99 %.2fx\n", $1, $2, $3}' |
            tee -a "$RESULTS"
    done
    thread_secs "$PF" >"$WORK/threads1.txt"
    SIM1=$(cpu_secs "$SIM" '*')
    OK1=$(metric planfeed_fetches_total 'outcome="ok"')
    ALL1=$(metric planfeed_fetches_total)
    SEEN1=$(metric planfeed_plans_total 'outcome="seen"')
    SPOOLED1=$(metric planfeed_plans_total 'outcome="spooled"')
    python3 - "$BUSY_SECS" "$OK0" "$OK1" "$ALL0" "$ALL1" "$SEEN0" "$SEEN1" "$FEED_BYTES" "$SPOOLED0" "$SPOOLED1" \
        "$SIM0" "$SIM1" "$WORK/threads0.txt" "$WORK/threads1.txt" "$RATIOS" <<'PY' | tee -a "$RESULTS"
import statistics, sys
secs, ok0, ok1, all0, all1, seen0, seen1, feed, sp0, sp1, s0, s1 = map(float, sys.argv[1:13])
def threads(path):
    out = {}
    for line in open(path):
        tid, name, cpu = line.split()
        out[tid] = (name, float(cpu))
    return out
before, after = threads(sys.argv[13]), threads(sys.argv[14])
used = {tid: (name, cpu - before.get(tid, (name, 0.0))[1]) for tid, (name, cpu) in after.items()}
groups = {}
for name, cpu in used.values():
    group = ("ingestion pool" if name.startswith("planfeed-ingest")
             else "pipeline runtime" if name.startswith("planfeed-pipe") else name)
    groups[group] = groups.get(group, 0.0) + cpu
rounds = ok1 - ok0
print(f"busy ingestion: {rounds:.0f} rounds ok, {all1 - all0 - rounds:.0f} failed, {sp1 - sp0:.0f} plans spooled in "
      f"{secs:.1f} busy s; {(seen1 - seen0) / secs:,.0f} plans/s, {rounds * feed / 1e6 / secs:.1f} MB/s")
print("CPU s over the pairs (idle phases included): "
      + ", ".join(f"{g} {c:.1f}" for g, c in sorted(groups.items(), key=lambda x: -x[1]) if c >= 0.05)
      + f"; simulator {s1 - s0:.1f}")
top = sorted(used.items(), key=lambda x: -x[1][1])[:6]
print("busiest threads: " + ", ".join(f"{name}/{tid} {cpu:.1f}" for tid, (name, cpu) in top))
rows = [list(map(float, line.split())) for line in open(sys.argv[15])]
med = [statistics.median(col) for col in zip(*rows)]
print(f"median of {len(rows)} pairs, busy/idle: closed loop req/s {med[0]:.2f} (target >= 0.7), "
      f"p99 {med[1]:.2f}x (target <= 2x); fixed-rate p99 {med[2]:.2f}x (target <= 2x)")
PY
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
