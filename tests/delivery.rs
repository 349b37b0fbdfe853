//! Delivery under the faults an operator meets beyond outages: a real ClickHouse whose password is
//! rotated, or whose table goes missing, while the feed holds plans that exist only then; a damaged
//! spool file at start; the clock stepped back between two runs. Each asserts the plans present
//! afterwards: nothing is lost, nothing is dropped as bad data.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::{free_port, local_toml, Planfeed};
use common::clickhouse::ClickHouseServer;
use common::PATIENCE;
use planfeed::delivery::{Entry, Spool};
use planfeed::feed::{generate, GenSpec};
use planfeed::simulator::{self, FeedSource, Simulator};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::Store;

const PROVIDER: &str = "fever";

/// Round `round` of a generated feed of `base_plans` base plans (base plan `b` is the same in a
/// larger feed of the same round, so a larger feed adds plans to a smaller one).
fn feed(base_plans: usize, round: u32) -> Bytes {
    let spec = GenSpec {
        base_plans,
        plans_per_base: 4,
        zones_per_plan: 3,
        seed: 26,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    Bytes::from(generate(&spec, round))
}

/// The ids of the plans of `body` (every one is online).
fn ids(body: &[u8]) -> BTreeSet<String> {
    let parsed = planfeed::feed::parse_chunk(&Arc::from(PROVIDER), body);
    assert!(parsed.error.is_none() && parsed.skipped.is_empty());
    parsed.plans.iter().map(|p| p.key.id().to_string()).collect()
}

/// The ids of every ever-online plan `store` holds.
async fn stored_ids(store: &dyn Store) -> BTreeSet<String> {
    let Ok(Some((lo, hi))) = store.day_bounds().await else { return BTreeSet::new() };
    store
        .plans_by_day(lo, hi)
        .await
        .map(|rows| rows.iter().map(|r| r.id.to_string()).collect())
        .unwrap_or_default()
}

async fn wait_for_ids(store: &dyn Store, want: &BTreeSet<String>, pf: &Planfeed) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let held = stored_ids(store).await;
        if &held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store holds {} plans, {} expected:\n{}",
            held.len(),
            want.len(),
            pf.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A counter or gauge of `/metrics` (0 when absent or not answering).
async fn metric(base: &str, series: &str) -> f64 {
    let Ok(res) = reqwest::get(format!("{base}/metrics")).await else { return 0.0 };
    common::scrape::sample(&res.text().await.unwrap_or_default(), series).unwrap_or(0.0)
}

async fn wait_for_metric(pf: &Planfeed, name_and_labels: &str, at_least: f64) {
    let deadline = Instant::now() + PATIENCE;
    while metric(&pf.base, name_and_labels).await < at_least {
        assert!(Instant::now() < deadline, "{name_and_labels} never reached {at_least}:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `local.toml` for the binary against ClickHouse at `url`, fetching `feed` every second.
fn clickhouse_config(dir: &Path, port: u16, feed: &str, url: &str) {
    std::fs::write(
        dir.join("local.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [provider]\nname = \"{PROVIDER}\"\nurl = \"{feed}\"\ninterval = \"1s\"\njitter = \"0s\"\n\
             [pipeline]\nbatch_size = 100\nflush_age = \"50ms\"\n\
             [store]\nbackend = \"clickhouse\"\n[store.clickhouse]\nurl = \"{url}\"\ndatabase = \"delivery\"\n\
             [spool]\npath = \"{}\"\nwrite_timeout = \"5s\"\n[log]\nformat = \"json\"\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
}

/// Waits until the server answers `SELECT 1` without a password (`true`) or refuses it (`false`).
async fn wait_for_password_check(server: &ClickHouseServer, open: bool) {
    let deadline = Instant::now() + PATIENCE;
    while server.query_blocking("SELECT 1").is_ok() != open {
        assert!(Instant::now() < deadline, "clickhouse never reloaded its users file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One refusal of the store's own, while a feed holds plans that exist only then: `refuse` starts
/// it, `restore` ends it. The plans of that feed are spooled (none dropped), `/ready` and the
/// metric name the refusal, and once it ends every plan and every fetch record is in the store.
async fn refusal_loses_nothing(
    server: ClickHouseServer,
    reason: &str,
    remedy: &str,
    refuse: impl AsyncFnOnce(&ClickHouseServer),
    restore: impl AsyncFnOnce(&ClickHouseServer),
) {
    let (a, b) = (feed(20, 0), feed(30, 0));
    let sim = Simulator::new(FeedSource::Rotation(vec![a.clone()]), Default::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    clickhouse_config(dir.path(), port, &url, &server.url());
    let mut pf = Planfeed::serve(dir.path(), port);
    pf.wait_ready().await;
    let settings =
        ClickHouseSettings { url: server.url(), database: "delivery".into(), ..Default::default() };
    let store = ClickHouseStore::connect(settings).await.unwrap();
    wait_for_ids(&store, &ids(&a), &pf).await;

    refuse(&server).await;
    let spooled = metric(&pf.base, "planfeed_plans_total{outcome=\"spooled\"}").await;
    sim.set_source(FeedSource::Rotation(vec![b.clone()]));
    let only_in_b = ids(&b).difference(&ids(&a)).count() as f64;
    assert_eq!(only_in_b, 40.0);
    wait_for_metric(&pf, "planfeed_plans_total{outcome=\"spooled\"}", spooled + only_in_b).await;
    wait_for_metric(&pf, &format!("planfeed_store_refusals_total{{reason=\"{reason}\"}}"), 1.0).await;
    assert_eq!(metric(&pf.base, "planfeed_store_refusing").await, 1.0);
    let ready = reqwest::get(format!("{}/ready", pf.base)).await.unwrap().text().await.unwrap();
    assert!(ready.contains(remedy), "/ready names the refusal: {ready}");
    assert_eq!(metric(&pf.base, "planfeed_plans_total{outcome=\"dropped\"}").await, 0.0);
    let log = pf.log_text();
    assert!(log.contains(remedy), "the log says what to fix:\n{log}");
    assert!(!log.contains("plan rejected by the store"), "nothing is dropped:\n{log}");

    restore(&server).await;
    wait_for_ids(&store, &ids(&b), &pf).await;
    wait_for_metric(&pf, "planfeed_spool_replayed_total", 1.0).await;
    let deadline = Instant::now() + PATIENCE;
    while metric(&pf.base, "planfeed_spool_entries").await > 0.0 {
        assert!(Instant::now() < deadline, "the spool never emptied:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&pf.base, "planfeed_store_refusing").await, 0.0);
    // B's fetch, recorded while refused, is in the store's log too.
    let seen = server.query_blocking("SELECT max(plans_seen) FROM delivery.fetches").unwrap();
    assert_eq!(seen.trim(), "120", "B's fetch record was replayed");
    assert_eq!(metric(&pf.base, "planfeed_plans_total{outcome=\"dropped\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_password_rotated_during_ingestion_loses_nothing() {
    let Some(server) = ClickHouseServer::start() else { return };
    refusal_loses_nothing(
        server,
        "credentials",
        "ClickHouse refuses planfeed's credentials",
        async |server| {
            server.set_password("rotated");
            wait_for_password_check(server, false).await;
        },
        async |server| {
            server.set_password("");
            wait_for_password_check(server, true).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_missing_table_during_ingestion_loses_nothing() {
    let Some(server) = ClickHouseServer::start() else { return };
    refusal_loses_nothing(
        server,
        "missing_table",
        "ClickHouse lacks a table or database planfeed writes to",
        async |server| {
            server.query_blocking("RENAME TABLE delivery.plans TO delivery.plans_away").unwrap();
        },
        async |server| {
            server.query_blocking("RENAME TABLE delivery.plans_away TO delivery.plans").unwrap();
        },
    )
    .await;
}

/// ClickHouse's disk full: its data on a filesystem of 256 MiB that the test fills, then frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_disk_full_during_ingestion_loses_nothing() {
    let Some(server) = ClickHouseServer::start_on_small_disk(256 << 20) else { return };
    refusal_loses_nothing(
        server,
        "space",
        "ClickHouse has no space left on its disk",
        async |server| server.fill_disk(),
        async |server| server.free_disk(),
    )
    .await;
}

/// A spool file damaged while planfeed was down (`damage` writes it): `serve` is up and ready in
/// under 5 s, the damaged file is kept beside the new spool, counted, and ingestion goes on.
async fn damaged_spool_is_set_aside(damage: impl FnOnce(&Path)) {
    let a = feed(5, 0);
    let sim = Simulator::new(FeedSource::Rotation(vec![a.clone()]), Default::default());
    let url = simulator::spawn_local(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spool_dir = dir.path().join("spool");
    let extra = format!("[spool]\npath = \"{}\"\n", spool_dir.display());
    std::fs::write(dir.path().join("local.toml"), local_toml(dir.path(), port, &url, &extra)).unwrap();
    let db = dir.path().join("planfeed.db");
    let location = SqliteStore::open(&db).unwrap().location();
    let file = Spool::file_for(&spool_dir, "embedded", &location);
    std::fs::create_dir_all(&spool_dir).unwrap();
    damage(&file);
    let damaged = std::fs::read(&file).unwrap();

    let started = Instant::now();
    let mut pf = Planfeed::serve(dir.path(), port);
    pf.wait_ready().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "ready {took:?} after start:\n{}", pf.log_text());
    let kept: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.display().to_string().contains(".damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept: {kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), damaged, "kept as it was");
    assert_eq!(metric(&pf.base, "planfeed_spool_set_aside_total{what=\"file\"}").await, 1.0);
    let log = pf.log_text();
    assert!(log.contains("spool file unreadable: moved aside"), "{log}");
    let store = SqliteStore::open(&db).unwrap();
    wait_for_ids(&store, &ids(&a), &pf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_spool_file_is_set_aside_and_serve_starts() {
    damaged_spool_is_set_aside(|file| std::fs::write(file, vec![0x5a; 10_000]).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_spool_file_is_set_aside_and_serve_starts() {
    damaged_spool_is_set_aside(|file| {
        // A real spool holding entries, cut in the middle as a crash on a filesystem without
        // barriers would leave it.
        let path = file.to_path_buf();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let spool = Arc::new(Spool::open(path, 1 << 30).unwrap());
                let record =
                    planfeed::domain::FetchRecord { provider: PROVIDER.into(), ..Default::default() };
                for _ in 0..200 {
                    spool.append(Arc::new(Entry::Fetch(record.clone()))).await.unwrap();
                }
            })
        })
        .join()
        .unwrap();
        let len = std::fs::metadata(file).unwrap().len();
        assert!(len > 8192, "{len}");
        std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(len / 2).unwrap();
    })
    .await;
}

/// `planfeed ingest --once --file <feed>` in `dir`, under `faketime` when `clock` is given (an
/// offset such as `-1h`: the wall clock only; timers keep the real monotonic clock).
fn ingest_once(dir: &Path, feed: &Path, clock: Option<&str>) {
    let binary = env!("CARGO_BIN_EXE_planfeed");
    let mut cmd = match clock {
        Some(offset) => {
            let mut c = std::process::Command::new("faketime");
            c.args(["-f", offset]).arg(binary).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            c
        }
        None => std::process::Command::new(binary),
    };
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PLANFEED")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .arg("--config-dir")
        .arg(dir)
        .args(["ingest", "--once", "--file"])
        .arg(feed)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run planfeed{}: {e} (apt-get install faketime)",
                clock.map_or("", |_| " under faketime")
            )
        });
    assert!(out.status.success(), "ingest failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_seen_after_the_clock_stepped_back_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("planfeed.db");
    std::fs::write(
        dir.path().join("local.toml"),
        format!(
            "[provider]\nname = \"{PROVIDER}\"\n[store]\npath = \"{}\"\n[spool]\npath = \"{}\"\n",
            db.display(),
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let before = feed(10, 0);
    // The same feed with every base plan's title changed.
    let after =
        Bytes::from(String::from_utf8(before.to_vec()).unwrap().replace(" title=\"", " title=\"Changed: "));
    let parsed = |body: &[u8]| planfeed::feed::parse_chunk(&Arc::from(PROVIDER), body).plans;
    let titles = |body: &[u8]| -> std::collections::BTreeMap<String, String> {
        parsed(body).iter().map(|p| (p.key.id().to_string(), p.title.to_string())).collect()
    };
    let (old, new) = (titles(&before), titles(&after));
    let changed = new.iter().filter(|(id, t)| old.get(*id).is_some_and(|o| o != *t)).count();
    assert_eq!(changed, old.len(), "every title changed");
    // Every plan ever seen stays, with its latest observation's values.
    let mut want = old.clone();
    want.extend(new.clone());
    let (first, second) = (dir.path().join("before.xml"), dir.path().join("after.xml"));
    std::fs::write(&first, &before).unwrap();
    std::fs::write(&second, &after).unwrap();

    ingest_once(dir.path(), &first, None);
    // An hour back: an NTP step, a restored VM. Every change seen now must still be written.
    ingest_once(dir.path(), &second, Some("-1h"));

    let store = SqliteStore::open(&db).unwrap();
    let (lo, hi) = store.day_bounds().await.unwrap().unwrap();
    let held: std::collections::BTreeMap<String, String> = store
        .plans_by_day(lo, hi)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.to_string(), r.title.to_string()))
        .collect();
    assert_eq!(held, want, "the latest observation wins whatever the wall clock did");
}
