//! The supervisor keeps the pipeline alive: a dead parser, fetcher or writer is replaced and
//! ingestion goes on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use planfeed::config::Settings;
use planfeed::service::Service;
use planfeed::simulator::{self, FeedSource, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    // A safety net, not a measure: a loaded machine is slow, a broken pipeline never gets there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_actors_are_restarted_and_ingestion_goes_on() {
    let spec = planfeed::feed::GenSpec {
        base_plans: 40,
        plans_per_base: 3,
        zones_per_plan: 4,
        seed: 3,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let sim = Simulator::new(FeedSource::Generated(spec), Default::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let env = [
        ("PLANFEED__PROVIDER__URL", url.as_str()),
        ("PLANFEED__PROVIDER__INTERVAL", "1h"),
        ("PLANFEED__PROVIDER__JITTER", "0s"),
        ("PLANFEED__PIPELINE__PARSERS", "2"),
        ("PLANFEED__PIPELINE__CHUNK_BYTES", "2048"),
        ("PLANFEED__PIPELINE__FLUSH_AGE", "20ms"),
        ("PLANFEED__ROLE", "ingest"),
    ];
    let settings = Settings::load_with(
        Path::new("/nonexistent"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let service = Service::start_with(settings, store.clone(), None).await.unwrap();
    let fetches = |n: u64| {
        let c = service.counters.clone();
        move || c.fetches_recorded.load(std::sync::atomic::Ordering::Relaxed) >= n
    };
    wait_for("the first fetch", fetches(1)).await;

    let h = service.pipeline().unwrap().clone();
    let parser = h.parsers.slot(0).get().unwrap();
    let writer = h.writer.get().unwrap();
    let fetcher = h.fetchers[0].get().unwrap();
    let old = [parser.get_id(), writer.get_id(), fetcher.get_id()];
    parser.kill();
    writer.stop(Some("test".into()));
    fetcher.kill();
    wait_for("replacements", || {
        let now = [
            h.parsers.slot(0).get().map(|a| a.get_id()),
            h.writer.get().map(|a| a.get_id()),
            h.fetchers[0].get().map(|a| a.get_id()),
        ];
        now.iter().zip(old).all(|(n, o)| n.is_some_and(|n| n != o))
    })
    .await;

    // The restarted pipeline fetches, parses and writes the next round.
    service.fetch_now();
    wait_for("a fetch after the restarts", fetches(2)).await;
    let fetch = &store.recent_fetches(1).await.unwrap()[0];
    assert_eq!(fetch.error, None);
    assert_eq!(fetch.plans_seen, 120);
    assert!(fetch.plans_written > 0, "round 1 changes some plans: {fetch:?}");
    service.shutdown().await;
}
