//! The stop of the real binary is bounded: with the store and the spool both refusing, `SIGTERM`
//! exits within `server.shutdown_timeout` and logs what is left and where; a second `SIGTERM`
//! exits at once; a `SIGHUP` that comes before start-up finished does not end the process.

mod common;

use std::time::{Duration, Instant};

use common::binary::{free_port, Planfeed};
use common::scrape::{log_lines, wait_sample};
use common::PATIENCE;
use std::sync::Arc;

use planfeed::feed::{generate, GenSpec};
use tokio::sync::Notify;
use warp::Filter;

/// A provider that answers its first request with a feed of tens of MB (several times the spool) once `release` is notified.
async fn held_provider(release: Arc<Notify>) -> String {
    let spec = GenSpec {
        base_plans: 3000,
        plans_per_base: 4,
        zones_per_plan: 50,
        seed: 3,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let body = bytes::Bytes::from(generate(&spec, 0));
    let route = warp::path!("feed").then(move || {
        let (release, body) = (release.clone(), body.clone());
        async move {
            release.notified().await;
            warp::reply::Response::new(body.into())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}/feed")
}

/// A planfeed (role `both`) on ClickHouse `ch_url` fetching `url`, its spool at its 1 MiB minimum
/// (a batch of the feed is larger).
fn start(dir: &std::path::Path, ch_url: &str, url: &str, shutdown_timeout: &str) -> Planfeed {
    let port = free_port();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"{shutdown_timeout}\"\n\
         [provider]\nurl = \"{url}\"\ninterval = \"1h\"\njitter = \"0s\"\n\
         [store]\nbackend = \"clickhouse\"\n[store.clickhouse]\nurl = \"{ch_url}\"\ndatabase = \"deadline\"\n\
         [spool]\npath = \"{}\"\nmax_bytes = 1048576\nwrite_timeout = \"1s\"\n[log]\nformat = \"json\"\n",
        dir.join("spool").display()
    );
    std::fs::write(dir.join("local.toml"), toml).unwrap();
    Planfeed::serve(dir, port)
}

/// Starts planfeed on a running ClickHouse, lets it load its bookkeeping, stops ClickHouse, then
/// lets the feed come; returns once the writer holds a batch neither the store nor the spool took.
async fn start_refused(
    dir: &std::path::Path,
    shutdown_timeout: &str,
) -> (Planfeed, common::clickhouse::ClickHouseServer) {
    let mut server = common::clickhouse::ClickHouseServer::start().expect("clickhouse-server");
    let release = Arc::new(Notify::new());
    let url = held_provider(release.clone()).await;
    let mut pf = start(dir, &server.url(), &url, shutdown_timeout);
    pf.wait_ready().await;
    server.stop();
    release.notify_one();
    let refused = tokio::time::timeout(PATIENCE, wait_sample(&pf.base, "planfeed_spool_refusals_total", 1.0));
    assert!(refused.await.is_ok(), "the spool never refused a batch:\n{}", pf.log_text());
    (pf, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_store_and_spool_refusing_exits_within_the_deadline_saying_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pf, _server) = start_refused(dir.path(), "3s").await;

    let signalled = Instant::now();
    pf.signal(libc::SIGTERM);
    let status = pf.wait_exit(PATIENCE).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "{}", pf.log_text());
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(3) + PATIENCE / 4, "{took:?}");
    let log = pf.log_text();
    let left = log_lines(&log, "shutdown deadline passed: exiting with work left; the spool keeps its batches for the next start, plans not yet in the store or the spool come again with the next fetch");
    assert_eq!(left.len(), 1, "{log}");
    let fields = &left[0]["fields"];
    assert!(
        fields["spool_path"].as_str().unwrap().starts_with(&dir.path().join("spool").display().to_string()),
        "{fields}"
    );
    assert!(fields["plans_seen"].as_u64().unwrap() > 0, "{fields}");
    assert!(log_lines(&log, "stopped").is_empty(), "{log}");
    eprintln!("exited {took:?} after SIGTERM: {fields}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut pf, _server) = start_refused(dir.path(), "10m").await;

    pf.signal(libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    while !pf.log_text().contains("shutting down: draining the pipeline") {
        assert!(Instant::now() < deadline, "{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Instant::now();
    pf.signal(libc::SIGTERM);
    let status = pf.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", pf.log_text());
    assert_eq!(
        log_lines(&pf.log_text(), "second signal: exiting at once, without finishing the stop").len(),
        1
    );
    eprintln!("exited {:?} after the second SIGTERM", second.elapsed());
}

/// Whether `pid` catches `SIGHUP` (its handler is installed): bit 0 of `SigCgt`.
fn catches_hangup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_up_is_kept_and_reloads_once_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = common::binary::local_toml(dir.path(), port, "http://127.0.0.1:1/feed", "");
    std::fs::write(dir.path().join("local.toml"), toml).unwrap();
    let mut pf = Planfeed::serve(dir.path(), port);
    // As soon as the handler exists (before the configuration is read): before that, the
    // process ignores the signal; the default action would end it.
    let deadline = Instant::now() + PATIENCE;
    while !catches_hangup(pf.child.id()) {
        assert!(pf.child.try_wait().unwrap().is_none(), "{}", pf.log_text());
        assert!(Instant::now() < deadline, "no SIGHUP handler");
        std::thread::yield_now();
    }
    pf.signal(libc::SIGHUP);
    pf.wait_ready().await;
    let deadline = Instant::now() + PATIENCE;
    while log_lines(&pf.log_text(), "SIGHUP received: reloading the configuration").is_empty() {
        assert!(pf.child.try_wait().unwrap().is_none(), "{}", pf.log_text());
        assert!(Instant::now() < deadline, "{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = pf.log_text();
    let listening = log.find("api listening").unwrap();
    let reload = log.find("SIGHUP received").unwrap();
    assert!(listening < reload, "the reload runs once the service does:\n{log}");
    pf.signal(libc::SIGTERM);
    assert_eq!(pf.wait_exit(PATIENCE).await.code(), Some(0), "{}", pf.log_text());
}
