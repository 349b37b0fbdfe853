//! The whole path: a real HTTP provider serving the fixture snapshots → the actor pipeline → the
//! embedded store → `GET /search`, checked against the contract.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use planfeed::config::Settings;
use planfeed::service::Service;
use planfeed::simulator::{self, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use serde_json::Value;
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider").join(name)
}

fn settings(provider_url: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        ("PLANFEED__PROVIDER__URL".to_string(), provider_url.to_string()),
        ("PLANFEED__PROVIDER__INTERVAL".to_string(), "1h".to_string()),
        ("PLANFEED__PROVIDER__JITTER".to_string(), "0s".to_string()),
        ("PLANFEED__PROVIDER__TIMEOUT".to_string(), "5s".to_string()),
        ("PLANFEED__PIPELINE__FLUSH_AGE".to_string(), "50ms".to_string()),
        ("PLANFEED__PIPELINE__CHUNK_BYTES".to_string(), "1024".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_with(Path::new("/nonexistent"), env).unwrap()
}

async fn start(settings: Settings, store: SharedStore) -> (Service, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, store, Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    (service, base)
}

async fn wait_for_fetches(store: &SharedStore, n: usize) {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while store.recent_fetches(100).await.unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} fetches recorded within {:?}",
            common::PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(base: &str, path_and_query: &str) -> (u16, Value) {
    let res = reqwest::get(format!("{base}{path_and_query}")).await.unwrap();
    let status = res.status().as_u16();
    assert_eq!(res.headers()["content-type"], "application/json", "{path_and_query}");
    (status, serde_json::from_slice(&res.bytes().await.unwrap()).unwrap())
}

/// The events of a 200 answer as (id, title, start_date, start_time, end_date, end_time, min, max).
async fn events(base: &str, query: &str) -> Vec<Value> {
    let (status, body) = get(base, &format!("/search{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    assert_eq!(body["error"], Value::Null);
    body["data"]["events"].as_array().unwrap().clone()
}

fn id(base_plan: u64, plan: u64) -> String {
    planfeed::domain::PlanKey::new("fever", base_plan, plan).id().to_string()
}

const WIDE: &str = "?starts_at=2000-01-01T00:00:00Z&ends_at=2100-01-01T00:00:00Z";

/// Runs the three fixture snapshots through a service on `store` and checks every answer.
pub async fn fixture_scenario(store: SharedStore) {
    let sim = Simulator::from_files(&[
        fixture("response_1.xml"),
        fixture("response_2.xml"),
        fixture("response_3.derived.xml"),
    ])
    .unwrap();
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let (service, base) = start(settings(&url, &[]), store.clone()).await;

    wait_for_fetches(&store, 1).await;
    let ev = events(&base, WIDE).await;
    let ids: Vec<_> = ev.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![id(322, 1642), id(322, 1643), id(291, 291), id(1591, 1642)]);
    assert_eq!(
        common::event_summary(&ev[3]),
        "Los Morancos 2021-07-31 20:00:00 2021-07-31 21:00:00 65.00 75.00"
    );

    service.fetch_now();
    wait_for_fetches(&store, 2).await;
    let ev = events(&base, WIDE).await;
    assert_eq!(ev.len(), 4, "plans absent from a fetch stay searchable: {ev:?}");
    assert_eq!(
        common::event_summary(&ev[3]),
        "Los Morancos 2021-07-31 20:00:00 2021-07-31 21:20:00 65.00 75.00"
    );

    service.fetch_now();
    wait_for_fetches(&store, 3).await;
    let ev = events(&base, WIDE).await;
    let got: Vec<_> =
        ev.iter().map(|e| (e["id"].as_str().unwrap().to_string(), common::event_summary(e))).collect();
    assert_eq!(
        got,
        vec![
            (id(322, 1642), "Pantomima Full 2021-02-10 20:00:00 2021-02-10 21:30:00 55.00 55.00".to_string()),
            (id(322, 1643), "Pantomima Full 2021-02-11 20:00:00 2021-02-11 21:30:00 55.00 55.00".to_string()),
            (
                id(291, 291),
                "Camela en concierto 2021-06-30 21:00:00 2021-06-30 21:30:00 15.00 30.00".to_string()
            ),
            (id(1591, 1642), "Los Morancos 2021-07-31 20:00:00 2021-07-31 21:00:00 65.00 75.00".to_string()),
        ]
    );
    assert!(ev.iter().all(|e| e["id"] != id(444, 1642)), "offline base plan 444 never shows");
    let fetches = store.recent_fetches(10).await.unwrap();
    assert_eq!(fetches.len(), 3);
    assert!(fetches.iter().all(|f| f.error.is_none() && f.http_status == Some(200)), "{fetches:?}");
    // response_3 (newest first): 3 valid plans seen, 2 changed, 444 skipped for its impossible date.
    assert_eq!((fetches[0].plans_seen, fetches[0].plans_written, fetches[0].plans_skipped), (2, 2, 1));
    assert_eq!(sim.requests.load(Ordering::Relaxed), 3);
    // Prices keep the feed's exact decimals on the wire.
    let raw = reqwest::get(format!("{base}/search{WIDE}")).await.unwrap().text().await.unwrap();
    assert!(raw.contains(r#""min_price":65.00,"max_price":75.00"#), "{raw}");

    // Containment, exactly at the boundaries (UTC provider).
    let q = |s: &str, e: &str| format!("?starts_at={s}&ends_at={e}");
    let only = |ev: Vec<Value>| ev.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(
        only(events(&base, &q("2021-06-30T21:00:00Z", "2021-06-30T21:30:00Z")).await),
        vec![id(291, 291)]
    );
    assert!(events(&base, &q("2021-06-30T21:00:01Z", "2021-06-30T21:30:00Z")).await.is_empty());
    assert!(events(&base, &q("2021-06-30T21:00:00Z", "2021-06-30T21:29:59Z")).await.is_empty());
    // The same instants written with another offset, colons percent-encoded.
    assert_eq!(
        only(events(&base, &q("2021-06-30T23%3A00%3A00%2B02%3A00", "2021-06-30T23:30:00.000%2B02:00")).await),
        vec![id(291, 291)]
    );
    // Open ranges.
    assert_eq!(
        only(events(&base, "?ends_at=2021-02-11T21:30:00Z").await),
        vec![id(322, 1642), id(322, 1643)]
    );
    assert_eq!(only(events(&base, "?starts_at=2021-07-01T00:00:00Z").await), vec![id(1591, 1642)]);
    assert_eq!(events(&base, "").await.len(), 4);
    assert_eq!(events(&base, "?unknown=1").await.len(), 4);

    // Bad parameters: 400 in the contract's shape, naming the parameter.
    for bad in [
        "?starts_at=2021-02-30T00:00:00Z",
        "?ends_at=2021-01-01",
        "?starts_at=1612951200",
        "?starts_at=2021-01-01T00:00:00Z&starts_at=2021-01-02T00:00:00Z",
        "?starts_at=2021-01-02T00:00:00Z&ends_at=2021-01-01T00:00:00Z",
    ] {
        let (status, body) = get(&base, &format!("/search{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["data"], Value::Null, "{bad}");
        assert!(body["error"]["code"].is_string(), "{bad}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("starts_at") || message.contains("ends_at"), "{bad}: {message}");
    }
    let (status, body) = get(&base, "/nope").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));

    let res = reqwest::get(format!("{base}/openapi.yaml")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")).unwrap()
    );
    let (status, _) = get(&base, "/health").await;
    assert_eq!(status, 200);

    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_end_to_end_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("db/planfeed.db")).unwrap());
    fixture_scenario(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_file_answers_the_same_before_any_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("planfeed.db");
    let sim = Simulator::from_files(&[fixture("response_1.xml"), fixture("response_2.xml")]).unwrap();
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&path).unwrap());
    let (service, base) = start(settings(&url, &[]), store.clone()).await;
    wait_for_fetches(&store, 1).await;
    service.fetch_now();
    wait_for_fetches(&store, 2).await;
    let before = events(&base, WIDE).await;
    assert_eq!(before.len(), 4);
    service.shutdown().await;
    drop(store);

    // Same file, provider now unreachable: the answers come from the store alone.
    let store: SharedStore = Arc::new(SqliteStore::open(&path).unwrap());
    let (service, base) = start(settings("http://127.0.0.1:9/feed", &[]), store).await;
    assert_eq!(events(&base, WIDE).await, before);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_provider_still_serves_and_logs_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    // Port 9 (discard) is closed on loopback: connection refused.
    let (service, base) = start(settings("http://127.0.0.1:9/feed", &[]), store.clone()).await;
    wait_for_fetches(&store, 1).await;
    assert!(events(&base, WIDE).await.is_empty());
    let fetch = &store.recent_fetches(1).await.unwrap()[0];
    let error = fetch.error.as_deref().unwrap();
    assert!(error.contains("127.0.0.1:9") && error.to_lowercase().contains("connect"), "{error}");
    assert_eq!(fetch.http_status, None);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_feeds_fail_the_fetch_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let good = std::fs::read(fixture("response_1.xml")).unwrap();
    let truncated = good[..good.len() / 2].to_vec();
    let bodies: Vec<bytes::Bytes> = vec![
        good.clone().into(),
        bytes::Bytes::new(),
        bytes::Bytes::from_static(b"{\"plans\": []}"),
        bytes::Bytes::from_static(b"<html><body>maintenance</body></html>"),
        truncated.into(),
    ];
    let sim = Simulator::with_bodies(bodies);
    let url = simulator::spawn_local(sim).await.unwrap();
    let (service, base) = start(settings(&url, &[]), store.clone()).await;
    wait_for_fetches(&store, 1).await;
    let baseline = events(&base, WIDE).await;
    assert_eq!(baseline.len(), 4);
    for n in 2..=5 {
        service.fetch_now();
        wait_for_fetches(&store, n).await;
        assert_eq!(events(&base, WIDE).await, baseline, "after bad fetch {n}");
    }
    let fetches = store.recent_fetches(10).await.unwrap();
    let errors: Vec<_> = fetches.iter().take(4).map(|f| f.error.clone().unwrap_or_default()).collect();
    assert!(errors.iter().all(|e| !e.is_empty()), "{errors:?}");
    assert!(errors[0].contains("truncated"), "{errors:?}");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_end_to_end_on_clickhouse() {
    let Some(server) = common::clickhouse::ClickHouseServer::start() else { return };
    let settings = planfeed::store::clickhouse::ClickHouseSettings {
        url: server.url(),
        database: "e2e".into(),
        ..Default::default()
    };
    let store = planfeed::store::clickhouse::ClickHouseStore::connect(settings).await.unwrap();
    assert!(!store.migrate().await.unwrap().is_empty());
    fixture_scenario(Arc::new(store)).await;
}
