//! `/ready` storms: 1,000 concurrent callers while the store is frozen (a real ClickHouse stopped
//! with `SIGSTOP`) cause at most one store ping per second, and every caller gets an answer.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use planfeed::config::Settings;
use planfeed::service::Service;
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use tokio::net::TcpListener;

const CALLERS: usize = 1000;
const ROUNDS: usize = 3;

fn pings() -> f64 {
    common::scrape::sample(&planfeed::metrics::handle().render(), "planfeed_readiness_pings_total").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ready_callers_on_a_frozen_store_cost_at_most_one_ping_a_second() {
    let Some(server) = common::clickhouse::ClickHouseServer::start() else { return };
    let ch = ClickHouseSettings { url: server.url(), database: "storm".into(), ..Default::default() };
    let store = ClickHouseStore::connect(ch).await.unwrap();
    store.migrate().await.unwrap();
    // Budgets wide enough for the storm to reach the ping: what is measured is the single flight.
    let env = [
        ("PLANFEED__ROLE", "api"),
        ("PLANFEED__SERVER__PROBE_LIMIT__PER_CLIENT_BURST", "100000"),
        ("PLANFEED__SERVER__PROBE_LIMIT__GLOBAL_BURST", "100000"),
        ("PLANFEED__SERVER__CONNECTIONS__MAX_CONNECTIONS_PER_CLIENT", "4096"),
    ];
    let settings =
        Settings::load_with(Path::new("/nonexistent"), env.map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, Arc::new(store), Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    // A connection per request: the server closes idle connections early while 1,024 are open (its
    // flood defence), and a pooled one closed as it is reused would fail the request.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let deadline = Instant::now() + common::PATIENCE;
    while client.get(format!("{base}/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.pause();
    let before = pings();
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/ready"));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..ROUNDS {
                    statuses.push(client.get(&url).send().await.unwrap().status().as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut answers = Vec::new();
    for caller in callers {
        answers.extend(caller.await.unwrap());
    }
    let elapsed = started.elapsed();
    let sent = pings() - before;
    server.resume();

    assert_eq!(answers.len(), CALLERS * ROUNDS);
    assert!(answers.iter().all(|s| *s == 200 || *s == 503), "{answers:?}");
    // One ping in flight at a time, then its outcome reused for a second: at most one ping started
    // per second of the storm, and the one in flight when it began.
    let allowed = elapsed.as_secs_f64().ceil() + 1.0;
    eprintln!(
        "{} answers in {elapsed:?}: {sent} pings ({} answered 503)",
        answers.len(),
        answers.iter().filter(|s| **s == 503).count()
    );
    assert!(sent >= 1.0 && sent <= allowed, "{sent} pings in {elapsed:?}");

    // Thawed, the store is found again.
    let deadline = Instant::now() + common::PATIENCE;
    while client.get(format!("{base}/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "not ready again after the store thawed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.shutdown().await;
}
