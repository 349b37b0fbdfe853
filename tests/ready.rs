//! `/ready` turns false while the store is unreachable (ClickHouse stopped under the service), while
//! `/health` stays true and searches keep being served from the cache.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use planfeed::config::Settings;
use planfeed::service::Service;
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use tokio::net::TcpListener;

async fn status(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_store() {
    let Some(mut server) = common::clickhouse::ClickHouseServer::start() else { return };
    let ch = ClickHouseSettings { url: server.url(), database: "ready".into(), ..Default::default() };
    let store = ClickHouseStore::connect(ch).await.unwrap();
    store.migrate().await.unwrap();
    let env = [("PLANFEED__ROLE", "api"), ("PLANFEED__SEARCH__CACHE_TTL", "1h")];
    let settings =
        Settings::load_with(Path::new("/nonexistent"), env.map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, Arc::new(store), Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());

    let deadline = Instant::now() + common::PATIENCE;
    while status(&base, "/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&base, "/ready").await, (200, r#"{"status":"ready"}"#.to_string()));
    let answer = status(&base, "/search").await;
    assert_eq!(answer.0, 200);

    server.stop();
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let (code, body) = status(&base, "/ready").await;
        if code == 503 {
            assert_eq!(body, r#"{"status":"store_unreachable"}"#);
            break;
        }
        assert!(Instant::now() < deadline, "still ready long after the store went away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&base, "/health").await.0, 200);
    assert_eq!(status(&base, "/search").await, answer, "served from the cache meanwhile");
    service.shutdown().await;
}
