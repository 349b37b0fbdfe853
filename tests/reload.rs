//! Configuration reload on the real binary: editing `local.toml` changes the rate limits and the
//! fetch interval within 2 s without a restart; an invalid edit is rejected and the previous
//! settings keep working; `SIGHUP` reloads as well.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::binary::{free_port, Planfeed};
use common::PATIENCE;
use planfeed::simulator::{self, Simulator};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider").join(name)
}

fn local_toml(dir: &Path, port: u16, url: &str, per_client: u32, interval: &str, extra: &str) -> String {
    format!(
        "{extra}\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [server.rate_limit]\nper_client_per_second = {per_client}\nper_client_burst = {per_client}\n\
         trust_forwarded_for = true\n\
         [provider]\nurl = \"{url}\"\ninterval = \"{interval}\"\njitter = \"0s\"\ntimeout = \"5s\"\n\
         [store]\npath = \"{}\"\n",
        dir.join("planfeed.db").display()
    )
}

/// Writes the whole file at once (rename), as deployment tools do.
fn write_config(dir: &Path, text: &str) {
    let tmp = dir.join("local.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("local.toml")).unwrap();
}

/// Statuses of `n` searches in a row from client `ip` (identified by `X-Forwarded-For`).
async fn burst(http: &reqwest::Client, base: &str, ip: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = http.get(format!("{base}/search")).header("x-forwarded-for", ip).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_live_and_invalid_edits_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::from_files(&[fixture("response_1.xml")]).unwrap();
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let port = free_port();
    write_config(dir.path(), &local_toml(dir.path(), port, &url, 1000, "1h", ""));
    let mut pf = Planfeed::serve(dir.path(), port);
    pf.wait_ready().await;
    let http = reqwest::Client::new();
    assert_eq!(burst(&http, &pf.base, "10.0.0.1", 5).await, vec![200; 5]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.requests.load(Ordering::Relaxed), 1, "one fetch at start, the next in an hour");

    // Lower the per-client limit to 3 and fetch every 300 ms.
    let edited = Instant::now();
    write_config(dir.path(), &local_toml(dir.path(), port, &url, 3, "300ms", ""));
    let mut client = 0;
    loop {
        client += 1;
        let got = burst(&http, &pf.base, &format!("10.1.0.{client}"), 4).await;
        if got == [200, 200, 200, 429] {
            break;
        }
        assert_eq!(got, vec![200; 4], "before the reload the old limit holds");
        assert!(edited.elapsed() < PATIENCE, "new rate limit not applied within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = format!("10.1.0.{client}");
    let r = http.get(format!("{}/search", pf.base)).header("x-forwarded-for", last).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((body["data"].is_null(), body["error"]["code"].as_str()), (true, Some("rate_limited")));

    while sim.requests.load(Ordering::Relaxed) < 2 {
        assert!(edited.elapsed() < PATIENCE, "new interval not applied within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three more fetches come (the interval is no longer an hour), none sooner than the interval
    // allows: fetch starts are 300 ms apart at least.
    let before = sim.requests.load(Ordering::Relaxed);
    let counting = Instant::now();
    while sim.requests.load(Ordering::Relaxed) < before + 3 {
        assert!(counting.elapsed() < PATIENCE, "fetches every 300 ms");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = counting.elapsed();
    assert!(took >= Duration::from_millis(550), "three fetches in {took:?} at a 300 ms interval");

    // Invalid edits: rejected with a clear log line, the previous settings stay in force.
    for (n, (extra, named)) in
        [("[pipeline]\nparsers = 0", "pipeline.parsers"), ("bogus_key = 1", "bogus_key")]
            .into_iter()
            .enumerate()
    {
        let rejected_before = pf.log_text().matches("configuration reload rejected").count();
        write_config(dir.path(), &local_toml(dir.path(), port, &url, 1000, "1h", extra));
        let deadline = Instant::now() + PATIENCE;
        while pf.log_text().matches("configuration reload rejected").count() == rejected_before {
            assert!(Instant::now() < deadline, "invalid edit not reported:\n{}", pf.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = pf.log_text();
        let line = log.lines().rfind(|l| l.contains("configuration reload rejected")).unwrap();
        assert!(line.contains(named), "{line}");
        let before = sim.requests.load(Ordering::Relaxed);
        assert_eq!(burst(&http, &pf.base, &format!("10.2.0.{n}"), 4).await, vec![200, 200, 200, 429]);
        let deadline = Instant::now() + PATIENCE;
        while sim.requests.load(Ordering::Relaxed) == before {
            assert!(Instant::now() < deadline, "still fetching every 300 ms");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // SIGHUP reloads too: the file is still invalid, so it is rejected once more.
    let rejected_before = pf.log_text().matches("configuration reload rejected").count();
    pf.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while pf.log_text().matches("configuration reload rejected").count() == rejected_before {
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pf.log_text().contains("SIGHUP received"));

    pf.signal(libc::SIGTERM);
    assert!(pf.wait_exit(Duration::from_secs(15)).await.success());
}

/// The parser pool follows `pipeline.parsers` live, and every chunk still gets parsed and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_pool_grows_and_shrinks_live() {
    use planfeed::feed::GenSpec;
    use planfeed::simulator::{Faults, FeedSource};
    use std::sync::Arc;

    let spec = GenSpec {
        base_plans: 60,
        plans_per_base: 4,
        zones_per_plan: 5,
        seed: 3,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let sim = Simulator::new(FeedSource::Generated(spec), Faults::default());
    let url = simulator::spawn_local(sim).await.unwrap();
    let load = |parsers: &str| {
        let env = [
            ("PLANFEED__PROVIDER__URL", url.as_str()),
            ("PLANFEED__PROVIDER__INTERVAL", "1h"),
            ("PLANFEED__PROVIDER__JITTER", "0s"),
            ("PLANFEED__PIPELINE__FLUSH_AGE", "50ms"),
            ("PLANFEED__PIPELINE__CHUNK_BYTES", "1024"),
            ("PLANFEED__PIPELINE__PARSERS", parsers),
        ];
        planfeed::config::Settings::load_with(
            Path::new("/nonexistent"),
            env.map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store: planfeed::store::SharedStore =
        Arc::new(planfeed::store::sqlite::SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let service = planfeed::service::Service::start_with(load("2"), store.clone(), None).await.unwrap();
    let fetches = |n: usize| common::wait_for_fetches(&store, None, n);
    assert_eq!(fetches(1).await[0].plans_seen, 240);
    assert_eq!(service.parsers(), 2);

    for (parsers, n) in [("5", 2), ("1", 3)] {
        let plan = service.reloader().apply(load(parsers));
        assert_eq!(plan.actions, vec![planfeed::reload::Action::Parsers(parsers.parse().unwrap())]);
        let deadline = Instant::now() + PATIENCE;
        while service.parsers().to_string() != parsers {
            assert!(Instant::now() < deadline, "pool not resized to {parsers}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        service.fetch_now();
        let latest = &fetches(n).await[0];
        assert_eq!((latest.error.as_deref(), latest.plans_seen), (None, 240), "with {parsers} parsers");
    }
    service.shutdown().await;
}
