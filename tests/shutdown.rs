//! Graceful shutdown of the real binary: `SIGTERM` in the middle of ingesting a large feed exits 0,
//! every plan the writer accepted before the signal is in the store afterwards, and a fetch cut
//! short by the signal is in the fetch log with its own outcome, its complete base plans stored.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{Fresh, Planfeed};
use common::PATIENCE;
use planfeed::feed::{generate, GenSpec};
use planfeed::simulator::{self, Faults, FeedSource, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::Store;

/// `planfeed_plans_total{outcome="written"}` from `/metrics`.
async fn plans_written(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("planfeed_plans_total{outcome=\"written\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_ingestion_exits_zero_and_keeps_every_accepted_plan() {
    let spec = GenSpec {
        base_plans: 3000,
        plans_per_base: 4,
        zones_per_plan: 50,
        seed: 7,
        offline_share: 0.1,
        invalid_share: 0.0,
    };
    let total = (spec.base_plans * spec.plans_per_base) as u64;
    let sim = Simulator::new(FeedSource::Generated(spec), Faults::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();

    let pipeline = "[pipeline]\nbatch_size = 500\nflush_age = \"50ms\"";
    let Fresh { mut pf, dir, .. } = Planfeed::start(&url, pipeline, |toml| toml).await;
    let db = dir.path().join("planfeed.db");

    let deadline = Instant::now() + Duration::from_secs(120);
    let before_signal = loop {
        let written = plans_written(&pf.base).await;
        if written > 0 {
            break written;
        }
        assert!(Instant::now() < deadline, "no plan written within 120 s:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pf.signal(libc::SIGTERM);
    let status = pf.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", pf.log_text());
    assert_eq!(sim.requests.load(Ordering::Relaxed), 1);

    // The last log line says how many plans the writer accepted in all.
    let log = pf.log_text();
    let stopped: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "stopped")
        .unwrap_or_else(|| panic!("no `stopped` line:\n{log}"));
    let accepted = stopped["fields"]["plans_written"].as_u64().unwrap();
    assert!(accepted >= before_signal, "{accepted} < {before_signal}");
    assert!(accepted < total, "the signal came after the whole feed ({total} plans) was ingested");

    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let stored = store.load_plan_states().await.unwrap().len() as u64;
    assert_eq!(stored, accepted, "every accepted plan is in the store, and nothing else");
    eprintln!("accepted {accepted} of {total} plans before shutdown ({before_signal} when signalled)");
}

/// The `fetch failed` line of the log, as JSON.
fn fetch_failed_line(log: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "fetch failed")
        .unwrap_or_else(|| panic!("no `fetch failed` line:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cut_short_by_sigterm_is_recorded_as_shutdown_with_its_plans_stored() {
    let spec = GenSpec {
        base_plans: 400,
        plans_per_base: 3,
        zones_per_plan: 5,
        seed: 11,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let body = bytes::Bytes::from(generate(&spec, 0));
    // The provider sends the first half of the body in 16 KB pieces, then holds the rest for
    // longer than the test waits: the fetch is mid-body when the signal comes.
    let faults = Faults { stall: Some(2 * PATIENCE), piece_bytes: Some(16 * 1024), ..Faults::default() };
    let sim = Simulator::new(FeedSource::Rotation(vec![body.clone()]), faults);
    let url = simulator::spawn_local(sim).await.unwrap();

    let pipeline = "[pipeline]\nchunk_bytes = 65536\nflush_age = \"50ms\"";
    let Fresh { mut pf, dir, .. } = Planfeed::start(&url, pipeline, |toml| toml).await;
    let db = dir.path().join("planfeed.db");

    // The first chunks are written: the body is being read.
    let deadline = Instant::now() + PATIENCE;
    while plans_written(&pf.base).await == 0 {
        assert!(Instant::now() < deadline, "no plan written within {PATIENCE:?}:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pf.signal(libc::SIGTERM);
    let status = pf.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", pf.log_text());

    let store = SqliteStore::open(&db).unwrap();
    let fetches = store.recent_fetches(10).await.unwrap();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    let record = &fetches[0];
    let read = record.bytes as usize;
    assert!(
        read > 0 && read <= body.len() / 2,
        "{read} bytes read of {} sent before the stall",
        body.len() / 2
    );
    let error = record.error.as_deref().unwrap_or_default();
    assert!(error.starts_with(&format!("fetch interrupted by shutdown after {read} bytes")), "{record:?}");
    assert_eq!(record.http_status, Some(200));
    assert_eq!(fetch_failed_line(&pf.log_text())["fields"]["outcome"], "shutdown");

    // Every base plan read whole before the signal is stored, written by this fetch.
    let complete = body[..read].windows(12).filter(|w| w == b"</base_plan>").count() as u64;
    let expected = complete * spec.plans_per_base as u64;
    assert!(complete > 0);
    assert_eq!(record.plans_seen, expected, "{record:?}");
    assert_eq!(record.plans_written, expected, "{record:?}");
    assert_eq!(store.load_plan_states().await.unwrap().len() as u64, expected);
    eprintln!(
        "interrupted after {read} of {} bytes: {complete} base plans, {expected} plans stored",
        body.len()
    );
}
