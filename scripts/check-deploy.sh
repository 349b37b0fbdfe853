#!/usr/bin/env bash
# Checks the deployment files (part of `make test`; tools from scripts/install-test-tools.sh):
#   1. Prometheus: the sample config and the rules are valid (promtool check), and the rules' unit
#      tests pass (promtool test rules: every alert fires on the situation it is for).
#   2. For real: a running `planfeed serve` (embedded store, the sample feed as a file:// provider)
#      scraped by a real Prometheus (the sample config pointed at it, 1 s intervals) that loads the
#      rules: the target is up, every rule group is loaded and every rule evaluated without error.
#      The image's HEALTHCHECK command probes the same process.
#   3. The Dockerfile passes hadolint; the compose files give every service a restart policy and a
#      health check, and planfeed its /data volume.
#   4. The systemd unit passes `systemd-analyze verify` and `security` (exposure at most 2.0 of 10).
#      Where systemd-analyze cannot verify any unit at all (some containers), this part says so
#      and is skipped; everywhere else a finding fails the check.
# Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROM=$ROOT/deploy/prometheus
VENV=$ROOT/target/deploy/venv
# Longest wait for any one event (a busy machine may be slow; nothing here takes this long).
PATIENCE_SECS=${PATIENCE_SECS:-90}

for tool in promtool prometheus systemd-analyze curl "$VENV/bin/hadolint"; do
    command -v "$tool" >/dev/null 2>&1 \
        || { echo "check-deploy: $tool is missing: run scripts/install-test-tools.sh" >&2; exit 1; }
done

echo "== prometheus: config and rules"
promtool check config "$PROM/prometheus.yml"
promtool check rules "$PROM"/rules/*.yml
promtool test rules "$PROM"/tests/*.yml

echo "== dockerfile and compose files"
"$VENV/bin/hadolint" Dockerfile
"$VENV/bin/python" - docker-compose.yml docker-compose.cluster.yml <<'EOF'
import sys, yaml
bad = []
for path in sys.argv[1:]:
    services = yaml.safe_load(open(path))["services"]
    for name, svc in services.items():
        for key in ("restart", "healthcheck"):
            if key not in svc:
                bad.append(f"{path}: service {name} has no {key}")
    if not any(str(v).endswith(":/data") for v in services["planfeed"].get("volumes", [])):
        bad.append(f"{path}: planfeed does not mount a volume on /data")
if bad:
    sys.exit("\n".join(bad))
print("compose files: every service restarts and has a health check; planfeed keeps /data")
EOF

echo "== systemd unit"
${CARGO:-cargo} build --quiet --bin planfeed
BIN=$ROOT/target/debug/planfeed
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# verify checks that ExecStart exists: point it at the binary just built.
mkdir -p "$WORK/unit" "$WORK/probe"
sed "s|/usr/local/bin/planfeed|$BIN|" deploy/systemd/planfeed.service >"$WORK/unit/planfeed.service"
printf '[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n' >"$WORK/probe/probe.service"
if ! probe=$(systemd-analyze verify "$WORK/probe/probe.service" 2>&1); then
    echo "systemd-analyze cannot verify units on this machine (a trivial unit fails: $probe)."
    echo "SKIPPED: deploy/systemd/planfeed.service was not verified here."
else
    systemd-analyze verify "$WORK/unit/planfeed.service"
    systemd-analyze security --offline=true --threshold=20 --no-pager "$WORK/unit/planfeed.service" \
        | tail -n 1
    echo "deploy/systemd/planfeed.service: verified"
fi

echo "== a real Prometheus scraping a running planfeed"
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PF_PORT=$(free_port)
PROM_PORT=$(free_port)
export PLANFEED__SERVER__LISTEN=127.0.0.1:$PF_PORT
export PLANFEED__STORE__BACKEND=embedded
export PLANFEED__STORE__PATH=$WORK/planfeed.db
export PLANFEED__SPOOL__PATH=$WORK/spool
export PLANFEED__PROVIDER__URL=file://$ROOT/tests/fixtures/provider/response_1.xml
export PLANFEED__PROVIDER__INTERVAL=1h
export PLANFEED__LOG__LEVEL=warn
"$BIN" --config-dir "$WORK" serve >"$WORK/planfeed.log" 2>&1 &
PIDS+=($!)

# The sample config, pointed at this planfeed, scraping and evaluating every second.
mkdir -p "$WORK/prometheus"
cp -r "$PROM/rules" "$WORK/prometheus/rules"
sed -e "s|127.0.0.1:8000|127.0.0.1:$PF_PORT|" \
    -e "s|scrape_interval: 15s|scrape_interval: 1s|" \
    -e "s|evaluation_interval: 15s|evaluation_interval: 1s|" \
    "$PROM/prometheus.yml" >"$WORK/prometheus/prometheus.yml"
grep -q "127.0.0.1:$PF_PORT" "$WORK/prometheus/prometheus.yml"
prometheus --config.file="$WORK/prometheus/prometheus.yml" \
    --storage.tsdb.path="$WORK/prometheus/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

# Waits for each event in turn by polling (the events themselves, never a fixed delay).
if ! "$VENV/bin/python" - "$PF_PORT" "$PROM_PORT" "$PATIENCE_SECS" "$PROM"/rules/*.yml <<'EOF'
import json, sys, time, urllib.request, yaml

pf_port, prom_port, patience = sys.argv[1], sys.argv[2], float(sys.argv[3])
groups = [g["name"] for f in sys.argv[4:] for g in yaml.safe_load(open(f))["groups"]]
prom = f"http://127.0.0.1:{prom_port}/api/v1"

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except Exception as e:
        return None, str(e)

def wait(what, check):
    deadline, last = time.monotonic() + patience, None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            print(f"ok: {what}")
            return
        time.sleep(0.2)
    sys.exit(f"not within {patience:.0f} s: {what} (last seen: {last})")

def ready():
    status, body = get(f"http://127.0.0.1:{pf_port}/ready")
    return status == 200, body
wait("planfeed is ready", ready)

def target_up():
    status, body = get(f"{prom}/targets?state=active")
    if status != 200:
        return False, body
    targets = json.loads(body)["data"]["activeTargets"]
    mine = [t for t in targets if t["scrapeUrl"] == f"http://127.0.0.1:{pf_port}/metrics"]
    return bool(mine) and mine[0]["health"] == "up", [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
wait("Prometheus scrapes planfeed (target up)", target_up)

def rules_loaded():
    status, body = get(f"{prom}/rules")
    if status != 200:
        return False, body
    loaded = json.loads(body)["data"]["groups"]
    names = sorted(g["name"] for g in loaded)
    states = {r["name"]: (r["health"], r.get("lastError", "")) for g in loaded for r in g["rules"]}
    errors = {n: s for n, s in states.items() if s[0] == "err"}
    if errors:
        sys.exit(f"rules fail to evaluate: {errors}")
    done = names == sorted(groups) and all(h == "ok" for h, _ in states.values())
    return done, (names, states)
wait(f"rule groups {groups} loaded, every rule evaluated without error", rules_loaded)

def scraped():
    q = urllib.parse.quote('up{job="planfeed"} == 1')
    status, body = get(f"{prom}/query?query={q}")
    return status == 200 and len(json.loads(body)["data"]["result"]) == 1, body
import urllib.parse
wait("up{job=\"planfeed\"} is 1 in Prometheus", scraped)
EOF
then
    echo "--- planfeed log"; tail -n 30 "$WORK/planfeed.log"
    echo "--- prometheus log"; tail -n 30 "$WORK/prometheus.log"
    exit 1
fi

# The image's HEALTHCHECK, as the container runs it (sh -c, the listen address from the environment).
health=$(sed -n 's/.*CMD \["sh", "-c", "\(.*\)"\]$/\1/p' Dockerfile | sed 's/\\"/"/g')
[ -n "$health" ] || { echo "no HEALTHCHECK command found in the Dockerfile" >&2; exit 1; }
sh -c "$health" && echo "ok: the Dockerfile's HEALTHCHECK passes against a running planfeed"

# Metrics the rules use that this planfeed does not expose (yet): named, not failed (some appear
# only after an event, such as the spool's).
exposed=$(curl -fsS "http://127.0.0.1:$PF_PORT/metrics")
for name in $(grep -o 'planfeed_[a-z_]*' "$PROM"/rules/*.yml | sed 's/.*://' | sort -u); do
    base=${name%_bucket}
    grep -q "^$base" <<<"$exposed" || echo "note: $name is used by the rules but not exposed now"
done
echo "check-deploy: ok"
