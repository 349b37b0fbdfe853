//! Ingestion throughput and memory: `make bench` (or `cargo bench --bench pipeline`).
//!
//! Measures, over one generated feed (5,000 base plans × 4 plans × 200 zones by default; set
//! `PLANFEED_BENCH_BASE_PLANS` for another size; `PLANFEED_BENCH_ONLY_1X=1` skips the 4× run):
//! (a) quick-xml alone: a loop over reader events doing nothing, the ceiling for any parser (the
//!     target's reference); (a2) the same loop reading every attribute, for context;
//! (b) `parse_chunk` single-threaded over the chunks the fetcher would cut;
//! (c) the whole pipeline: the simulator on 127.0.0.1 serving the feed → a service with role
//!     `ingest` on an embedded store in a temp dir → until the fetch is recorded, for a 1× and a 4×
//!     feed. Each size runs in a child process of this binary (re-executed with
//!     `--pipeline-child URL`), so each peak RSS (`VmHWM`) is the pipeline's alone: the simulator and
//!     the feed's bytes live in the parent.
//!
//! Plain `main`, no criterion: one long run per figure says more here than many short samples.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use planfeed::config::Settings;
use planfeed::feed::{generate, parse_chunk, Chunker, GenSpec};
use planfeed::simulator::{self, Simulator};

mod support;

const CHILD_ARG: &str = "--pipeline-child";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == CHILD_ARG) {
        child(&args[i + 1]);
        return;
    }
    let base_plans: usize =
        std::env::var("PLANFEED_BENCH_BASE_PLANS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let spec = |mult: usize| GenSpec {
        base_plans: base_plans * mult,
        plans_per_base: 4,
        zones_per_plan: 200,
        seed: 1,
        offline_share: 0.1,
        invalid_share: 0.01,
    };
    let settings = Settings::load_with(Path::new("/nonexistent"), Vec::new()).expect("default settings");
    let chunk_bytes = settings.pipeline.chunk_bytes;

    let body = generate(&spec(1), 0);
    let mb = body.len() as f64 / 1e6;
    println!(
        "feed 1x: {} base plans x 4 plans x 200 zones, {:.1} MB, chunk_bytes {}",
        base_plans, mb, chunk_bytes
    );

    // (a) quick-xml alone.
    let started = Instant::now();
    let events = support::raw_events(&body);
    let raw_secs = started.elapsed().as_secs_f64();
    let raw_mbs = mb / raw_secs;
    println!("(a) raw quick-xml events:      {raw_mbs:8.1} MB/s ({events} events in {raw_secs:.2} s)");

    // (a2) quick-xml with every attribute read (no conversion): what any parser of this feed pays.
    let started = Instant::now();
    let attributes = support::events_with_attributes(&body);
    let attr_secs = started.elapsed().as_secs_f64();
    println!(
        "(a2) quick-xml + attributes:    {:8.1} MB/s ({attributes} attributes in {attr_secs:.2} s)",
        mb / attr_secs
    );

    // (b) parse_chunk, one thread, over the fetcher's chunks.
    let mut chunker = Chunker::new(chunk_bytes, settings.pipeline.max_base_plan_bytes);
    let mut chunks = chunker.push(&body).expect("chunks");
    chunks.extend(chunker.flush());
    chunks.extend(chunker.finish().expect("complete feed"));
    let provider: Arc<str> = Arc::from("bench");
    let started = Instant::now();
    let mut plans = 0usize;
    for c in &chunks {
        plans += std::hint::black_box(parse_chunk(&provider, c)).plans.len();
    }
    let parse_secs = started.elapsed().as_secs_f64();
    let parse_mbs = mb / parse_secs;
    println!(
        "(b) parse_chunk, 1 thread:      {:8.1} MB/s, {:9.0} plans/s ({plans} plans, {} chunks, {parse_secs:.2} s)",
        parse_mbs,
        plans as f64 / parse_secs,
        chunks.len()
    );
    drop(chunks);

    // (c) the whole pipeline, each size in its own process.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut body = Some(body);
    let only_1x = std::env::var("PLANFEED_BENCH_ONLY_1X").is_ok_and(|v| !v.is_empty() && v != "0");
    let sizes: &[usize] = if only_1x { &[1] } else { &[1, 4] };
    for &mult in sizes {
        let feed = body.take().unwrap_or_else(|| generate(&spec(mult), 0));
        let bytes = feed.len() as f64;
        let sim = Simulator::with_bodies(vec![feed.into()]);
        let url = runtime.block_on(simulator::spawn_local(sim)).expect("simulator");
        let exe = std::env::current_exe().expect("own executable");
        let out = Command::new(exe).arg(CHILD_ARG).arg(&url).output().expect("child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let field = |name: &str| -> f64 {
            stdout
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("child did not report {name}: {stdout}"))
        };
        let (secs, seen, hwm_kb) = (field("secs"), field("plans_seen"), field("hwm_kb"));
        let mbs = bytes / 1e6 / secs;
        println!(
            "(c) pipeline {mult}x ({:6.1} MB):  {mbs:8.1} MB/s, {:9.0} plans/s ({seen} plans in {secs:.2} s), \
             pipeline/raw {:.0} %, pipeline/parse_chunk {:.0} %, peak RSS {:.0} MB",
            bytes / 1e6,
            seen / secs,
            100.0 * mbs / raw_mbs,
            100.0 * mbs / parse_mbs,
            hwm_kb / 1024.0
        );
    }
}

/// One ingestion of `url` into a fresh embedded store; prints its figures on one line.
fn child(url: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = vec![
        ("PLANFEED__ROLE".to_string(), "ingest".to_string()),
        ("PLANFEED__PROVIDER__URL".to_string(), url.to_string()),
        ("PLANFEED__PROVIDER__TIMEOUT".to_string(), "1h".to_string()),
        // The 4x feed (~1.6 GB) is above the default 1 GiB limit on purpose of that limit.
        ("PLANFEED__PROVIDER__MAX_BODY_BYTES".to_string(), (1u64 << 40).to_string()),
        ("PLANFEED__STORE__PATH".to_string(), dir.path().join("bench.db").display().to_string()),
    ];
    let settings = Settings::load_with(Path::new("/nonexistent"), env).expect("settings");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let record =
        runtime.block_on(planfeed::service::ingest_once(settings, None, None, false)).expect("ingestion");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(record.error, None, "{record:?}");
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!(
        "secs={secs:.3} plans_seen={} plans_written={} bytes={} hwm_kb={}",
        record.plans_seen,
        record.plans_written,
        record.bytes,
        peak_rss_kb()
    );
}

/// `VmHWM` of this process, in kB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
