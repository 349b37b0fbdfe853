//! The ClickHouse store on a real replicated cluster the test starts itself (ZooKeeper and two
//! clickhouse-server replicas of one shard, `tests/common/cluster.rs`): migrations `ON CLUSTER`,
//! the store conformance suite, the end-to-end path, and one replica killed in the middle of an
//! ingestion and of searches.
//!
//! One cluster serves the whole binary (one test running the scenarios in order, each in its own
//! database): starting a cluster costs seconds, and the fault scenario runs last because it kills
//! and restarts a node. How long the replica stays down comes from `PLANFEED_CLUSTER_FAULT_SECS`
//! (2 s by default). The service runs on the default search and store settings (100 ms store
//! deadline, 30 s `query_timeout`), and each fault phase prints its searches' p50/max and the
//! search cache's store counters.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use planfeed::config::Settings;
use planfeed::feed::{generate_into, GenSpec};
use planfeed::service::Service;
use planfeed::simulator::{self, FeedSource, Simulator};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::{SharedStore, Store};
use serde_json::Value;
use tokio::net::TcpListener;

use common::cluster::Cluster;
use common::conformance;

const WIDE: &str = "?starts_at=0001-01-01T00:00:00Z&ends_at=9999-12-31T00:00:00Z";

fn fault() -> Duration {
    let secs = std::env::var("PLANFEED_CLUSTER_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_on_a_replicated_cluster() {
    let Some(mut cluster) = Cluster::start(2) else { return };
    migrations_run_on_every_replica(&cluster).await;
    conformance_on_the_cluster(&cluster).await;
    fixtures_end_to_end_on_the_cluster(&cluster).await;
    a_replica_killed_during_ingestion_and_searches_loses_nothing(&mut cluster).await;
    a_frozen_replica_is_left_for_the_other(&cluster).await;
}

async fn store_on(cluster: &Cluster, database: &str) -> ClickHouseStore {
    let logs = || cluster.nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n----\n");
    let store = ClickHouseStore::connect(cluster.settings(database))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", logs()));
    store.migrate().await.unwrap_or_else(|e| panic!("migrate: {e}\n{}", logs()));
    store
}

/// Every replica holds every table, with the replicated engine, and the analysts' views; the
/// table copies older migrations left are gone from every replica; a second run applies nothing.
async fn migrations_run_on_every_replica(cluster: &Cluster) {
    let store = store_on(cluster, "schema").await;
    assert!(store.migrate().await.unwrap().is_empty());
    for i in 0..cluster.nodes.len() {
        let engines = cluster
            .query(i, "SELECT name, engine FROM system.tables WHERE database = 'schema' ORDER BY name");
        assert_eq!(
            engines,
            "day_changes\tReplicatedReplacingMergeTree\nfetches\tReplicatedMergeTree\n\
             plans\tReplicatedReplacingMergeTree\nplans_current\tView\nschema_migrations\tReplicatedMergeTree\n\
             zones\tReplicatedReplacingMergeTree\nzones_current\tView\n",
            "node {i}"
        );
    }
    cluster.sync_replicas("schema");
    let applied = cluster.query(1, "SELECT count() FROM schema.schema_migrations");
    assert_eq!(applied.trim(), cluster.query(0, "SELECT count() FROM schema.schema_migrations").trim());
}

async fn conformance_on_the_cluster(cluster: &Cluster) {
    let settings = cluster.settings("conformance");
    let store = store_on(cluster, "conformance").await;
    conformance::run_all(Arc::new(store), move |old: SharedStore| {
        let settings = settings.clone();
        async move {
            drop(old);
            let store = ClickHouseStore::connect(settings).await.expect("reconnect");
            assert!(store.migrate().await.expect("migrate after restart").is_empty());
            Arc::new(store) as SharedStore
        }
        .boxed()
    })
    .await;
    cluster.sync_replicas("conformance");
    assert_same_rows(cluster, "conformance");
}

/// Both replicas hold exactly the same rows in every table (once merged).
fn assert_same_rows(cluster: &Cluster, database: &str) {
    for table in ["plans", "zones", "fetches", "day_changes"] {
        let columns = cluster.query(
            0,
            &format!("SELECT name FROM system.columns WHERE database = '{database}' AND table = '{table}'"),
        );
        let order = columns.lines().collect::<Vec<_>>().join(", ");
        // Replacing tables compare merged (`FINAL`): each replica runs the same merges, not at
        // the same moment.
        let merged = if table == "fetches" { "" } else { "FINAL" };
        let sql = format!("SELECT * FROM {database}.{table} {merged} ORDER BY {order}");
        let first = cluster.query(0, &sql);
        assert!(!first.is_empty() || table == "fetches", "{database}.{table} is empty");
        for i in 1..cluster.nodes.len() {
            assert_eq!(cluster.query(i, &sql), first, "{database}.{table} on node {i}");
        }
    }
}

fn service_settings(cluster: &Cluster, database: &str, provider: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env = cluster.env(database);
    for (k, v) in [
        ("PLANFEED__PROVIDER__URL", provider),
        ("PLANFEED__PROVIDER__INTERVAL", "1h"),
        ("PLANFEED__PROVIDER__JITTER", "0s"),
        ("PLANFEED__PIPELINE__FLUSH_AGE", "20ms"),
    ]
    .iter()
    .chain([("PLANFEED__PROVIDER__TIMEOUT", "60s")].iter())
    .chain(extra)
    {
        env.push((k.to_string(), v.to_string()));
    }
    Settings::load_with(Path::new("/nonexistent"), env).unwrap()
}

async fn start(settings: Settings) -> (Service, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = planfeed::service::open_store(&settings).await.unwrap();
    let service = Service::start_with(settings, store, Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    (service, base)
}

async fn events(base: &str, query: &str) -> Result<Vec<Value>, String> {
    let res = reqwest::get(format!("{base}/search{query}")).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    Ok(body["data"]["events"].as_array().cloned().unwrap_or_default())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> futures::future::BoxFuture<'static, bool>) {
    let deadline = Instant::now() + common::PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {:?}", common::PATIENCE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_fetches(store: &SharedStore, n: usize) {
    let store = store.clone();
    wait_for(&format!("{n} fetches recorded"), move || {
        let store = store.clone();
        async move { store.recent_fetches(100).await.map(|f| f.len() >= n).unwrap_or(false) }.boxed()
    })
    .await;
}

/// The three fixture snapshots through the real pipeline into the cluster, searched over HTTP.
async fn fixtures_end_to_end_on_the_cluster(cluster: &Cluster) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider");
    let files = ["response_1.xml", "response_2.xml", "response_3.derived.xml"].map(|f| dir.join(f));
    let sim = Simulator::from_files(&files).unwrap();
    let url = simulator::spawn_local(sim).await.unwrap();
    let (service, base) = start(service_settings(cluster, "e2e", &url, &[])).await;
    for n in 1..=3 {
        if n > 1 {
            service.fetch_now();
        }
        wait_for_fetches(&service.store, n).await;
    }
    let got: Vec<String> = events(&base, WIDE).await.unwrap().iter().map(common::event_summary).collect();
    assert_eq!(
        got,
        [
            "Pantomima Full 2021-02-10 20:00:00 2021-02-10 21:30:00 55.00 55.00",
            "Pantomima Full 2021-02-11 20:00:00 2021-02-11 21:30:00 55.00 55.00",
            "Camela en concierto 2021-06-30 21:00:00 2021-06-30 21:30:00 15.00 30.00",
            "Los Morancos 2021-07-31 20:00:00 2021-07-31 21:00:00 65.00 75.00",
        ]
    );
    let raw = reqwest::get(format!("{base}/search{WIDE}")).await.unwrap().text().await.unwrap();
    assert!(raw.contains(r#""min_price":65.00,"max_price":75.00"#), "exact price text: {raw}");
    service.shutdown().await;
    cluster.sync_replicas("e2e");
    assert_same_rows(cluster, "e2e");
}

/// What a search load saw: answers, failures and every search's latency.
struct LoadOutcome {
    answered: u64,
    failed: Vec<String>,
    latencies: Vec<Duration>,
}

impl LoadOutcome {
    /// `p50 / max` of the searches' latencies, in milliseconds, for the log.
    fn summary(&mut self) -> String {
        self.latencies.sort();
        let at = |q: f64| self.latencies[((self.latencies.len() - 1) as f64 * q) as usize].as_millis();
        if self.latencies.is_empty() {
            return "no searches".into();
        }
        let over = self.latencies.iter().filter(|l| **l > Duration::from_millis(100)).count();
        format!("p50 {} ms, max {} ms, {over} over 100 ms", at(0.5), at(1.0))
    }
}

/// The search cache's store counters, for the log.
fn search_counters(service: &Service) -> String {
    let c = &service.searcher.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{} run queries, {} store deadlines passed, {} store errors, {} stale days served",
        get(&c.run_queries),
        get(&c.deadlines_passed),
        get(&c.store_errors),
        get(&c.stale_served)
    )
}

/// Searches over HTTP until `stop`, each a different window (so the cache cannot answer them all),
/// counting answers and failures.
fn search_load(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<LoadOutcome> {
    tokio::spawn(async move {
        let mut out = LoadOutcome { answered: 0, failed: Vec::new(), latencies: Vec::new() };
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            // One month of the generated plans' five years, a different one each time.
            let (year, month) = (2021 + (i / 12) % 5, 1 + i % 12);
            let q =
                format!("?starts_at={year}-{month:02}-01T00:00:00Z&ends_at={year}-{month:02}-28T00:00:00Z");
            let began = Instant::now();
            match events(&base, &q).await {
                Ok(_) => out.answered += 1,
                Err(e) => out.failed.push(e),
            };
            out.latencies.push(began.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

/// Node 0 (the replica every process prefers) is killed once the first batches landed and comes
/// back after the fault's duration: every plan of the feed is stored, every search is answered,
/// and the restarted replica catches up to the same rows.
async fn a_replica_killed_during_ingestion_and_searches_loses_nothing(cluster: &mut Cluster) {
    let spec = GenSpec {
        base_plans: 300,
        plans_per_base: 10,
        zones_per_plan: 3,
        seed: 12,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let stats = generate_into(&spec, 0, &mut Vec::new());
    let sim = Simulator::new(FeedSource::Generated(spec), Default::default());
    let url = simulator::spawn_local(sim).await.unwrap();
    // A few large batches: each batch makes one part per table and month on every replica, and
    // the generated plans spread over five years of months.
    let extra = [
        ("PLANFEED__PIPELINE__BATCH_SIZE", "1000"),
        ("PLANFEED__PIPELINE__CHUNK_BYTES", "16384"),
        ("PLANFEED__PROVIDER__TIMEOUT", "300s"),
        // About a replica's failure, not the searches' tail: ingestion does not rest for the
        // search load (`pipeline.min_ingest_share`, tested in `isolation`).
        ("PLANFEED__PIPELINE__MIN_INGEST_SHARE", "1"),
    ];
    let quorum = quorum_store(cluster).await;
    quorum.write_plans(&[quorum_plan(1)]).await.expect("a quorum write with both replicas up");
    let (service, base) = start(service_settings(cluster, "faults", &url, &extra)).await;
    let ready = base.clone();
    wait_for("service ready", move || {
        let url = format!("{ready}/ready");
        async move { reqwest::get(url).await.map(|r| r.status() == 200).unwrap_or(false) }.boxed()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = search_load(base.clone(), stop.clone());

    let counters = service.counters.clone();
    wait_for("first batch written", move || {
        let written = counters.plans_written.load(Ordering::Relaxed);
        async move { written > 0 }.boxed()
    })
    .await;
    let written_before_kill = service.counters.plans_written.load(Ordering::Relaxed);
    cluster.nodes[0].stop();
    let down_at = Instant::now();
    let (node0, node1) = (cluster.nodes[0].url(), cluster.nodes[1].url());
    let (ready, expected) = (base.clone(), [format!(r#""{node0}":"down""#), format!(r#""{node1}":"up""#)]);
    wait_for("/ready shows node 0 down", move || {
        let (url, expected) = (format!("{ready}/ready"), expected.clone());
        async move {
            let Ok(res) = reqwest::get(url).await else { return false };
            res.status() == 200
                && res.text().await.is_ok_and(|body| expected.iter().all(|e| body.contains(e)))
        }
        .boxed()
    })
    .await;
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    for (url, up) in [(&node0, 0), (&node1, 1)] {
        let line = format!("planfeed_clickhouse_endpoint_up{{endpoint=\"{url}\"}} {up}");
        assert!(metrics.contains(&line), "{line} in /metrics");
    }
    wait_for_fetches(&service.store, 1).await;
    // With a quorum of 2, nothing is acknowledged while one replica is down (the writer would
    // spool the batch).
    let refused = quorum.write_plans(&[quorum_plan(2)]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_transient()),
        "a quorum write with node 0 down: {refused:?}"
    );
    tokio::time::sleep(fault().saturating_sub(down_at.elapsed())).await;
    // Straight from the store in one query (a search over every day of five years would be a
    // thousand queries of runs of days, beside the search load's).
    let (first, last) = service.store.day_bounds().await.expect("day bounds with a replica down").unwrap();
    let searchable = service.store.plans_by_day(first, last).await.expect("read with a replica down").len();
    cluster.nodes[0].start_again();
    cluster.wait_for_keeper();
    let retried = quorum.clone();
    wait_for("a quorum write once node 0 is back", move || {
        let store = retried.clone();
        async move { store.write_plans(&[quorum_plan(2)]).await.is_ok() }.boxed()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut outcome = load.await.unwrap();
    let (answered, failed) = (outcome.answered, std::mem::take(&mut outcome.failed));

    let fetch = &service.store.recent_fetches(1).await.unwrap()[0];
    assert_eq!(fetch.error, None, "{fetch:?}");
    assert!(written_before_kill < stats.online as u64, "the kill came before the last batch");
    // Rows node 0 acknowledged but node 1 had not fetched yet are out of sight until node 0 is
    // back (ADR 10): the search answers with what the live replica holds.
    assert!(searchable > 0 && searchable <= stats.online, "{searchable} searchable with node 0 down");
    eprintln!("{searchable} of {} plans searchable while node 0 was down", stats.online);
    assert_eq!(service.counters.plans_written.load(Ordering::Relaxed), stats.online as u64);
    assert!(
        failed.is_empty(),
        "{} of {} searches failed: {:?}",
        failed.len(),
        answered,
        &failed[..failed.len().min(3)]
    );
    assert!(answered > 0);
    eprintln!("replica killed: {answered} searches answered, none failed; {}", outcome.summary());
    eprintln!("replica killed: {}", search_counters(&service));
    service.shutdown().await;

    cluster.sync_replicas("faults");
    assert_same_rows(cluster, "faults");
    cluster.sync_replicas("quorum");
    for i in 0..cluster.nodes.len() {
        let titles = cluster.query(i, "SELECT title FROM quorum.plans FINAL ORDER BY title");
        assert_eq!(titles, "quorum 1\nquorum 2\n", "quorum writes on node {i}");
    }
    let sql = "SELECT count() FROM faults.plans FINAL WHERE superseded = 0";
    for i in 0..cluster.nodes.len() {
        assert_eq!(cluster.query(i, sql).trim(), stats.online.to_string(), "every plan on node {i}");
    }
}

/// A store that acknowledges a write only once both replicas hold it (`insert_quorum = 2`), on a
/// database of its own, migrated while both replicas answer.
async fn quorum_store(cluster: &Cluster) -> ClickHouseStore {
    store_on(cluster, "quorum").await;
    let settings = ClickHouseSettings {
        insert_quorum: 2,
        query_timeout: Duration::from_secs(1),
        ..cluster.settings("quorum")
    };
    ClickHouseStore::connect(settings).await.expect("quorum store")
}

fn quorum_plan(n: u64) -> planfeed::domain::StoredPlan {
    let title = format!("quorum {n}");
    common::stored(common::plan("q", n, n, &title, "2022-03-01T20:00:00", "2022-03-01T21:00:00"), n)
}

/// Node 0 frozen (SIGSTOP: connections accepted, nothing answered) while searches run, with the
/// default settings (a 30 s `query_timeout`): once the probe marks node 0 down (its ping gets no
/// answer within 1 s), the statements in flight on it move to node 1 at once and the next ones go
/// there first, so every search is answered within about two probe periods.
async fn a_frozen_replica_is_left_for_the_other(cluster: &Cluster) {
    let extra = [("PLANFEED__ROLE", "api")];
    let (service, base) = start(service_settings(cluster, "faults", "http://127.0.0.1:9/", &extra)).await;
    let ready = base.clone();
    wait_for("service ready", move || {
        let url = format!("{ready}/ready");
        async move { reqwest::get(url).await.map(|r| r.status() == 200).unwrap_or(false) }.boxed()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = search_load(base.clone(), stop.clone());
    cluster.nodes[0].pause();
    let frozen_at = Instant::now();
    let (ready, down) = (base.clone(), format!(r#""{}":"down""#, cluster.nodes[0].url()));
    wait_for("/ready shows the frozen node down", move || {
        let (url, down) = (format!("{ready}/ready"), down.clone());
        async move {
            let Ok(res) = reqwest::get(url).await else { return false };
            res.status() == 200 && res.text().await.is_ok_and(|body| body.contains(&down))
        }
        .boxed()
    })
    .await;
    tokio::time::sleep(fault().saturating_sub(frozen_at.elapsed())).await;
    let (first, last) = service.store.day_bounds().await.expect("day bounds with a replica frozen").unwrap();
    let wide = service.store.plans_by_day(first, last).await.expect("read with a replica frozen").len();
    cluster.nodes[0].resume();
    stop.store(true, Ordering::Relaxed);
    let mut outcome = load.await.unwrap();
    let (answered, failed) = (outcome.answered, std::mem::take(&mut outcome.failed));
    assert_eq!(wide, 3000);
    let slowest = outcome.latencies.iter().max().copied().unwrap_or_default();
    assert!(slowest < Duration::from_secs(5), "a search took {slowest:?} with node 0 frozen");
    assert!(
        failed.is_empty(),
        "{} of {} searches failed: {:?}",
        failed.len(),
        answered,
        &failed[..failed.len().min(3)]
    );
    assert!(answered > 0);
    eprintln!("replica frozen: {answered} searches answered, none failed; {}", outcome.summary());
    eprintln!("replica frozen: {}", search_counters(&service));
    service.shutdown().await;
}
