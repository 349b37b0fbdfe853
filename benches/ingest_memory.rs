//! Memory of an ingestion, whatever the feed's shape: `cargo bench --bench ingest_memory` (in
//! `make bench`).
//!
//! The real binary, `planfeed ingest --once --url …`, ingests a generated feed served by the
//! provider simulator on 127.0.0.1 (in this process, so the feed's bytes are not the child's) into
//! a fresh embedded store. Per feed it prints the child's peak RSS (its `VmHWM`, read every 10 ms
//! until it exits: its `ru_maxrss` would include this process's RSS at the spawn, which Linux
//! keeps across `exec`),
//! the elapsed time, plans/s, MB/s, the plans spooled (from the binary's `fetch ingested` line; 0
//! expected) and the plans in the store afterwards (a `count(*)`), against the plans the feed
//! holds:
//! (a) big base plans: 3 base plans × 350,000 plans without zones under 1 KiB titles (~190 MB),
//!     each base plan a chunk of ~63 MB, below `pipeline.max_base_plan_bytes`;
//! (b) ordinary base plans: 13,000 base plans × 4 plans × 200 zones (~1 GB).
//!
//! `PLANFEED_BENCH_FEEDS=a` (or `b`) runs one of them only.
//!
//! The target is a peak RSS of at most 300 MB for both. `PLANFEED_BENCH_BIN` runs another build of
//! the binary instead (an earlier commit's, to compare).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use planfeed::feed::{generate_titled_into, GenSpec};
use planfeed::simulator::{self, Simulator};

const TARGET_RSS_MB: f64 = 300.0;

struct Feed {
    label: &'static str,
    spec: GenSpec,
    title_bytes: usize,
}

fn main() {
    let feeds = [
        Feed {
            label: "(a) 3 base plans x 350,000 plans, 1 KiB titles",
            spec: GenSpec {
                base_plans: 3,
                plans_per_base: 350_000,
                zones_per_plan: 0,
                seed: 26,
                offline_share: 0.0,
                invalid_share: 0.0,
            },
            title_bytes: 1024,
        },
        Feed {
            label: "(b) 13,000 base plans x 4 plans x 200 zones",
            spec: GenSpec {
                base_plans: 13_000,
                plans_per_base: 4,
                zones_per_plan: 200,
                seed: 1,
                offline_share: 0.1,
                invalid_share: 0.01,
            },
            title_bytes: 0,
        },
    ];
    let only = std::env::var("PLANFEED_BENCH_FEEDS").unwrap_or_else(|_| "ab".into());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (feed, name) in feeds.iter().zip(["a", "b"]) {
        if !only.contains(name) {
            continue;
        }
        let mut body = Vec::new();
        let stats = generate_titled_into(&feed.spec, 0, feed.title_bytes, &mut body);
        let expected = (stats.plans - stats.invalid) as u64;
        let mb = body.len() as f64 / 1e6;
        let url = runtime
            .block_on(simulator::spawn_local(Simulator::with_bodies(vec![body.into()])))
            .expect("simulator");
        let run = ingest(&url);
        let secs = run.secs;
        let verdict = if run.peak_rss_mb <= TARGET_RSS_MB { "met" } else { "NOT met" };
        println!(
            "{}, {mb:.1} MB: {secs:.2} s, {:.0} plans/s, {:.1} MB/s, peak RSS {:.0} MB (target <= {TARGET_RSS_MB:.0} MB: \
             {verdict}), spooled {}, stored {} of {expected}",
            feed.label,
            expected as f64 / secs,
            mb / secs,
            run.peak_rss_mb,
            run.spooled,
            run.stored,
        );
        assert_eq!(run.spooled, 0, "plans were spooled");
        assert_eq!(run.stored, expected, "plans missing from the store");
    }
}

/// What one run of the binary gave.
struct Run {
    secs: f64,
    peak_rss_mb: f64,
    spooled: u64,
    stored: u64,
}

/// `planfeed ingest --once --url url` into a fresh embedded store.
fn ingest(url: &str) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    let log_path = dir.path().join("ingest.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let bin = std::env::var_os("PLANFEED_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_planfeed").into());
    let started = Instant::now();
    #[expect(clippy::zombie_processes, reason = "waited by `waitpid` while its memory is sampled")]
    let child = Command::new(bin)
        .args(["ingest", "--once", "--url", url])
        .env("PLANFEED__STORE__PATH", &db)
        .env("PLANFEED__SPOOL__PATH", dir.path().join("spool"))
        .env("PLANFEED__PROVIDER__TIMEOUT", "1h")
        .env("PLANFEED__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("planfeed runs");
    let (status, peak_rss_kb) = wait_with_peak_rss(child.id());

    let secs = started.elapsed().as_secs_f64();
    let mut text = String::new();
    std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text)).expect("log");
    assert!(status == 0, "planfeed ingest --once exited with {status}:\n{text}");
    let spooled = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "fetch ingested")
        .and_then(|v| v["fields"]["spooled"].as_u64())
        .unwrap_or_else(|| panic!("no `fetch ingested` line:\n{text}"));
    let stored = rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("SELECT count(*) FROM plans", [], |r| r.get::<_, i64>(0)))
        .expect("count the stored plans") as u64;
    if std::env::var_os("PLANFEED_BENCH_KEEP").is_some() {
        println!("store, spool and log kept in {}", dir.keep().display());
    }
    Run { secs, peak_rss_mb: peak_rss_kb as f64 / 1024.0, spooled, stored }
}

/// Waits for child `pid`; its exit status and peak RSS in KiB (its last `VmHWM` read).
fn wait_with_peak_rss(pid: u32) -> (i32, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = vm_hwm_kb(pid).unwrap_or(0).max(peak);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let mut status = 0;
    // SAFETY: `pid` is our own child, not waited yet; `status` outlives the call.
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    assert_eq!(rc, pid as libc::pid_t, "waitpid: {}", std::io::Error::last_os_error());
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, peak)
}

/// `VmHWM` of process `pid`, in kB, while it runs.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
