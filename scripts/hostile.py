#!/usr/bin/env python3
"""Full-size hostile cases against the release binary, on 127.0.0.1; prints one line per figure.

    cargo build --release && scripts/hostile.py            # all cases
    scripts/hostile.py amplification doctype idle flood     # some of them

- amplification: the 1 MB `base_plan_id` over 1,000 plans (+ a good plan, + a negative price),
  three fetches: peak RSS, log bytes per fetch, what /search serves.
- doctype: a 60 MB doctype, sent whole then in 4 KB pieces: CPU seconds of the process per fetch.
- idle: two clients (127.0.0.2 and 127.0.0.3) open 12,000 connections each and hold them 40 s
  while 127.0.0.1 searches every 100 ms: the slowest answer.
- flood: 10,000 connections from 127.0.0.1 sending requests for 5 s: RSS idle, at the end, and
  10 s after (limits raised so every connection is served).
- heads: request heads hyper would refuse bodiless (a 100 KB header block, a 70 KB target, 150
  header fields, the start of a TLS handshake): the status and error code each gets.
- cost: a client (127.0.0.2, HOSTILE_COST_CONNECTIONS connections, default 4) asking a different
  1-month range each time with `Accept-Encoding: gzip`, as fast as it can, for HOSTILE_COST_SECS
  (default 30: a p99 of 10 s runs varied by 2x from run to run) s, while another (127.0.0.1) searches a warm day at a fixed 2,000/s
  (examples/loadgen.rs, `cargo build --release --example loadgen`): planfeed's CPU for the first
  client (cores, over what the second costs alone), its answers and 429s, and the second's p99
  alone and beside it; once with the default work budget, once with the budget off.

Only the standard library; each case starts its own planfeed and provider simulator.
"""
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("PLANFEED", os.path.join(ROOT, "target", "release", "planfeed"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """A simulator and a planfeed in a temporary folder."""

    def __init__(self, sim_args, extra="", interval="1h"):
        self.dir = tempfile.mkdtemp(prefix="planfeed-hostile-")
        sim_port = free_port()
        self.sim = subprocess.Popen(
            [BIN, "simulate-provider", "--listen", f"127.0.0.1:{sim_port}", *sim_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = free_port()
        with open(os.path.join(self.dir, "local.toml"), "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.port}"\n{extra}\n'
                    f'[provider]\nurl = "http://127.0.0.1:{sim_port}/api/events"\n'
                    f'interval = "{interval}"\njitter = "0s"\n'
                    f'[store]\npath = "{self.dir}/planfeed.db"\n[log]\nformat = "json"\n')
        self.log_path = os.path.join(self.dir, "planfeed.log")
        self.log = open(self.log_path, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLANFEED")}
        self.proc = subprocess.Popen([BIN, "--config-dir", self.dir, "serve"],
                                     stdout=self.log, stderr=self.log, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.wait(lambda: self.get("/ready")[0] == 200, 60, "ready")

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return None, b""

    def wait(self, cond, secs, what):
        deadline = time.time() + secs
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"planfeed exited with {self.proc.returncode} waiting for {what}")
            if cond():
                return
            time.sleep(0.05)
        raise SystemExit(f"no {what} within {secs} s")

    def fetches(self):
        with open(self.log_path) as f:
            return sum(1 for line in f if '"fetch ingested"' in line or '"fetch failed"' in line)

    def events(self):
        status, body = self.get("/search")
        return json.loads(body)["data"]["events"] if status == 200 else []

    def stop(self):
        self.proc.kill()
        self.sim.kill()
        self.proc.wait()
        self.sim.wait()


def amplification():
    svc = Service(["--hostile", "amplification"], interval="3s")
    sizes = []
    for n in range(1, 4):
        before = os.path.getsize(svc.log_path)
        svc.wait(lambda: svc.fetches() >= n, 120, f"fetch {n}")
        sizes.append(os.path.getsize(svc.log_path) - before)
    alive = svc.proc.poll() is None
    peak = proc_kb(svc.proc.pid, "VmHWM:") / 1024
    served = [(e["title"], e["min_price"]) for e in svc.events()]
    print(f"amplification: alive={alive} peak_rss={peak:.1f} MB log_per_fetch={max(sizes)} bytes "
          f"(3 fetches: {sizes}) served={served}")
    svc.stop()


def doctype():
    for label, args in (("whole", []), ("4 KB pieces", ["--piece-bytes", "4096"])):
        svc = Service(["--hostile", "doctype", *args])
        start = cpu_seconds(svc.proc.pid)
        t0 = time.time()
        svc.wait(lambda: svc.fetches() >= 1, 300, "fetch")
        cpu = cpu_seconds(svc.proc.pid) - start
        served = [e["title"] for e in svc.events()]
        print(f"doctype 60 MB sent {label}: fetch done in {time.time() - t0:.2f} s wall, "
              f"{cpu:.2f} CPU-s in planfeed ({60 / max(cpu, 0.001):.0f} MB per CPU-s), served={served}")
        svc.stop()


def open_connections(svc):
    status, body = svc.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith("planfeed_http_connections_open"):
            return int(float(line.split()[-1]))
    return -1


def hold(ip, port, n, secs, out):
    """Opens n connections from ip and keeps them secs seconds; counts the refused ones."""
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    time.sleep(secs)
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(12) == b"HTTP/1.1 503":
                refused += 1
        except OSError:
            pass
        s.close()
    out.append((ip, len(socks), refused))


def idle():
    # Each holder is its own process: one process's file limit is below 24,000 here.
    svc = Service(["--base-plans", "100"])
    code = ("import sys; sys.path.insert(0, %r); import hostile; out = []; "
            "hostile.hold(sys.argv[1], int(sys.argv[2]), 12000, 40, out); print(out[0])") % os.path.dirname(__file__)
    holders = [subprocess.Popen([sys.executable, "-c", code, ip, str(svc.port)], stdout=subprocess.PIPE, text=True)
               for ip in ("127.0.0.2", "127.0.0.3")]
    time.sleep(2)
    worst, answered, failed = 0.0, 0, 0
    deadline = time.time() + 36
    while time.time() < deadline:
        t0 = time.time()
        status, _ = svc.get("/search?starts_at=2021-01-01T00:00:00Z", timeout=10)
        worst = max(worst, time.time() - t0)
        answered += status == 200
        failed += status != 200
        time.sleep(0.1)
    held = [h.communicate()[0].strip() for h in holders]
    print(f"idle: 2 x 12,000 connections held 40 s (ip, open, refused): {held}; searches from "
          f"127.0.0.1: {answered} answered, {failed} failed, slowest {worst * 1000:.0f} ms")
    svc.stop()


def flood(extra_label=""):
    limits = '[server.connections]\nmax_connections = 15000\nmax_connections_per_client = 15000\n'
    svc = Service(["--base-plans", "100"], extra=limits)
    svc.wait(lambda: svc.events(), 60, "events")
    time.sleep(10)
    idle_rss = proc_kb(svc.proc.pid, "VmRSS:") / 1024
    request = f"GET /search HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    socks = []
    for _ in range(10000):
        s = socket.create_connection(("127.0.0.1", svc.port))
        s.setblocking(False)
        socks.append(s)
    end = time.time() + 5
    sent = 0
    while time.time() < end:
        for s in socks:
            try:
                s.send(request)
                sent += 1
            except OSError:
                pass
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
    peak_rss = proc_kb(svc.proc.pid, "VmRSS:") / 1024
    for s in socks:
        s.close()
    closed = time.time()
    time.sleep(10)
    after = proc_kb(svc.proc.pid, "VmRSS:") / 1024
    still_open = open_connections(svc)
    print(f"flood{extra_label}: 10,000 connections, {sent} requests sent in 5 s: RSS idle {idle_rss:.1f} MB, "
          f"end of flood {peak_rss:.1f} MB, 10 s after {after:.1f} MB ({after / idle_rss:.2f}x idle, "
          f"{still_open} connections open then)")
    svc.wait(lambda: open_connections(svc) <= 1, 60, "connections closed")
    time.sleep(0.5)
    final = proc_kb(svc.proc.pid, "VmRSS:") / 1024
    print(f"flood{extra_label}: all connections closed {time.time() - closed:.1f} s after the flood: "
          f"RSS {final:.1f} MB ({final / idle_rss:.2f}x idle)")
    svc.stop()


def exchange(port, data):
    """Sends data on a fresh connection and returns all the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may stop reading once it refused
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
    return got.decode("latin-1")


def heads():
    svc = Service(["--base-plans", "10"])
    cases = {
        "100 KB header block": b"GET /search HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
        "70 KB request target": b"GET /search?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "150 header fields": b"GET /search HTTP/1.1\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(150)) + b"\r\n",
        "TLS handshake bytes": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    }
    for name, data in cases.items():
        text = exchange(svc.port, data)
        status = text.split("\r\n", 1)[0]
        try:
            code = json.loads(text.split("\r\n\r\n", 1)[1])["error"]["code"]
        except (IndexError, ValueError, KeyError, TypeError):
            code = "(no contract body)"
        print(f"heads: {name}: {status} {code}")
    svc.stop()


def month_hammer(port, secs, offset, out):
    """Unique 1-month gzip searches from 127.0.0.2 on one keep-alive connection, for `secs` s."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    end, i, counts = time.time() + secs, 0, {}
    while time.time() < end:
        i += 1
        # The generated feed spans five years from 2023; a different start second each time.
        start = 1672531200 + (offset * 1_000_003 + i * 7919) % (4 * 365 * 86400)
        fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        path = f"/search?starts_at={fmt(start)}&ends_at={fmt(start + 30 * 86400)}"
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
            r = conn.getresponse()
            body = r.read()
            counts[r.status] = counts.get(r.status, 0) + 1
            counts["bytes"] = counts.get("bytes", 0) + len(body)
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            counts["error"] = counts.get("error", 0) + 1
            conn.close()
    out.append(counts)


def victim(port, secs, day):
    """A fixed 2,000 warm 1-day searches a second from 127.0.0.1: (p99 ms, errors)."""
    loadgen = os.path.join(ROOT, "target", "release", "examples", "loadgen")
    line = subprocess.run([loadgen, f"127.0.0.1:{port}", "2000", str(secs), "8", day],
                          capture_output=True, text=True, check=True).stdout
    fields = [l for l in line.splitlines() if l.startswith("RESULT")][0].split()
    return float(fields[3]), int(fields[5])


def cost_run(label, extra):
    secs = int(os.environ.get("HOSTILE_COST_SECS", "30"))
    conns = int(os.environ.get("HOSTILE_COST_CONNECTIONS", "4"))
    feed = ["--base-plans", "50000", "--zones", "1", "--offline-share", "0", "--invalid-share", "0"]
    svc = Service(feed, extra=extra)
    svc.wait(lambda: svc.fetches() >= 1, 600, "the feed ingested")
    day = "/search?starts_at=2024-03-05T00:00:00Z&ends_at=2024-03-05T23:59:59Z"
    assert svc.get(day)[0] == 200
    status, body = svc.get("/search?starts_at=2024-03-01T00:00:00Z&ends_at=2024-03-31T00:00:00Z")
    month_kb = len(body) / 1024
    cpu0, t0 = cpu_seconds(svc.proc.pid), time.time()
    alone_p99, alone_err = victim(svc.port, secs, day)
    alone_cores = (cpu_seconds(svc.proc.pid) - cpu0) / (time.time() - t0)
    # The hostile client stands for another machine: its own process under SCHED_IDLE, so its
    # Python loop does not count against the searches here (as the provider simulator elsewhere).
    hammers = [subprocess.Popen(["chrt", "--idle", "0", sys.executable, os.path.abspath(__file__), "_hammer",
                                 str(svc.port), str(secs), str(k)], stdout=subprocess.PIPE, text=True)
               for k in range(conns)]
    cpu1, t1 = cpu_seconds(svc.proc.pid), time.time()
    both_p99, both_err = victim(svc.port, secs, day)
    total = {}
    for h in hammers:
        for k, v in json.loads(h.communicate()[0]).items():
            k = int(k) if k.isdigit() else k
            total[k] = total.get(k, 0) + v
    both_cores = (cpu_seconds(svc.proc.pid) - cpu1) / (time.time() - t1)
    print(f"cost ({label}): a month is {month_kb:.0f} KB of JSON; the unique-month gzip client "
          f"({conns} connections, {secs} s): {total.get(200, 0)} answers, {total.get(429, 0)} refused (429), "
          f"{total.get('error', 0)} errors, {total.get('bytes', 0) / 1e6:.1f} MB received; planfeed "
          f"{both_cores:.2f} cores with it against {alone_cores:.2f} without: {both_cores - alone_cores:.2f} "
          f"cores for it (target <= 1); the other client's warm 1-day p99 {alone_p99:.3f} ms alone, "
          f"{both_p99:.3f} ms beside it ({both_p99 / alone_p99:.2f}x, target <= 2x), errors {alone_err}/{both_err}")
    svc.stop()


def cost():
    raised = ("[server.rate_limit]\nper_client_per_second = 1000000\nper_client_burst = 1000000\n"
              "global_per_second = 1000000\nglobal_burst = 1000000\n")
    variants = os.environ.get("HOSTILE_COST_VARIANTS", "default off").split()
    if "small" in variants:
        cost_run("work budget 16 MiB/s, burst 16 MiB", raised + "per_client_work_per_second = 16777216\n"
                 "per_client_work_burst = 16777216\n")
    if "default" in variants:
        cost_run("default work budget", raised)
    if "off" in variants:
        cost_run("work budget off", raised + "per_client_work_per_second = 1099511627776\n"
             "per_client_work_burst = 1099511627776\n")


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if sys.argv[1:2] == ["_hammer"]:
        out = []
        month_hammer(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), out)
        print(json.dumps(out[0]))
        sys.exit(0)
    cases = sys.argv[1:] or ["amplification", "doctype", "idle", "flood", "heads", "cost"]
    for case in cases:
        globals()[case]()
