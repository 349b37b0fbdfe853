//! `/metrics` counts what happened, exactly: requests per path and status, fetch outcomes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use planfeed::config::Settings;
use planfeed::service::Service;
use planfeed::simulator::{self, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider").join(name)
}

/// The value of the sample `name{labels}` (labels exactly as rendered), 0 when absent.
async fn sample(base: &str, series: &str) -> u64 {
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    text.lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
        .map_or(0, |l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64)
}

async fn wait_for(base: &str, series: &str, at_least: u64) -> u64 {
    // A safety net, not a measure: a loaded machine is slow, a broken count never gets there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = sample(base, series).await;
        if v >= at_least {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{series} did not reach {at_least} within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_fetch_counters_move_by_exactly_what_happened() {
    let sim = Simulator::from_files(&[fixture("response_1.xml")]).unwrap();
    let url = simulator::spawn_local(sim).await.unwrap();
    let env = [
        ("PLANFEED__PROVIDER__URL", url.as_str()),
        ("PLANFEED__PROVIDER__INTERVAL", "1h"),
        ("PLANFEED__PROVIDER__JITTER", "0s"),
        ("PLANFEED__PIPELINE__FLUSH_AGE", "50ms"),
    ];
    let settings =
        Settings::load_with(Path::new("/nonexistent"), env.map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, store, Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());

    let fetches_ok = r#"planfeed_fetches_total{provider="fever",outcome="ok"}"#;
    assert_eq!(wait_for(&base, fetches_ok, 1).await, 1, "the fetch at start");
    assert_eq!(sample(&base, r#"planfeed_plans_total{outcome="written"}"#).await, 4);

    let ok = r#"planfeed_http_requests_total{path="/search",status="200"}"#;
    let bad = r#"planfeed_http_requests_total{path="/search",status="400"}"#;
    let (ok_before, bad_before) = (sample(&base, ok).await, sample(&base, bad).await);
    const N: u64 = 17;
    for _ in 0..N {
        let r = reqwest::get(format!("{base}/search?starts_at=2021-01-01T00:00:00Z")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        let r = reqwest::get(format!("{base}/search?starts_at=yesterday")).await.unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(sample(&base, ok).await - ok_before, N);
    assert_eq!(sample(&base, bad).await - bad_before, 3);
    let histogram = r#"planfeed_search_duration_seconds_count"#;
    assert!(sample(&base, histogram).await >= N + 3);

    service.fetch_now();
    assert_eq!(wait_for(&base, fetches_ok, 2).await, 2, "one more fetch, one more count");
    // The same feed again: nothing changed, nothing written.
    assert_eq!(sample(&base, r#"planfeed_plans_total{outcome="unchanged"}"#).await, 4);
    assert_eq!(sample(&base, r#"planfeed_plans_total{outcome="written"}"#).await, 4);
    service.shutdown().await;
}
