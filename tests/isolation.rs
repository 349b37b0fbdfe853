//! Searches keep their speed while a feed is ingested (ADR 12): in the real binary, ingestion's
//! CPU work (parsing, hashing, the embedded store's writes and its WAL checkpoint) runs on threads
//! of lower priority, as many as `pipeline.ingest_threads`, and so do its actors (on a runtime of
//! their own), while the threads answering searches keep the process's priority; and ingestion
//! still completes a feed. Read from `/proc` (Linux).
#![cfg(target_os = "linux")]

mod common;

use std::time::Instant;

use common::binary::{free_port, local_toml, Planfeed};
use common::PATIENCE;
use planfeed::feed::GenSpec;
use planfeed::simulator::{self, Faults, FeedSource, Simulator};

/// One thread of a process, from `/proc/PID/task/TID/{comm,stat}`.
#[derive(Debug)]
struct Thread {
    tid: u32,
    /// The first 15 bytes of the thread's name (all `comm` keeps).
    name: String,
    nice: i32,
    /// User + system CPU, in clock ticks.
    ticks: u64,
}

impl Thread {
    /// Whether this is the thread named `full` (or one whose name starts like it, past 15 bytes).
    fn is(&self, full: &str) -> bool {
        self.name.starts_with(full) || (self.name.len() == 15 && full.starts_with(&self.name))
    }
}

fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // After "TID (comm) ": field 3 (state) is index 0, so utime (14) is 11, stime 12, nice 16.
        let fields: Vec<&str> = stat[stat.rfind(") ").unwrap() + 2..].split(' ').collect();
        out.push(Thread {
            tid: task.file_name().to_string_lossy().parse().unwrap(),
            name: comm.trim().to_string(),
            nice: fields[16].parse().unwrap(),
            ticks: fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap(),
        });
    }
    out
}

/// A counter of `/metrics`, summed over the series whose labels contain `filter`.
async fn metric(base: &str, name: &str, filter: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_runs_on_its_low_priority_threads_and_still_completes_the_feed() {
    let spec = GenSpec {
        base_plans: 500,
        plans_per_base: 4,
        zones_per_plan: 50,
        seed: 17,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let total = (spec.base_plans * spec.plans_per_base) as u64;
    let url =
        simulator::spawn_local(Simulator::new(FeedSource::Generated(spec), Faults::default())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pipeline = "[pipeline]\ningest_threads = 1\ningest_nice = 5";
    std::fs::write(dir.path().join("local.toml"), local_toml(dir.path(), port, &url, pipeline)).unwrap();
    let mut pf = Planfeed::serve(dir.path(), port);
    pf.wait_ready().await;
    let pid = pf.child.id();

    // The feed is ingested whole: one fetch recorded ok, every plan written.
    let deadline = Instant::now() + PATIENCE;
    while metric(&pf.base, "planfeed_fetches_total", "outcome=\"ok\"").await < 1 {
        assert!(Instant::now() < deadline, "no fetch recorded within {PATIENCE:?}:\n{}", pf.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&pf.base, "planfeed_plans_total", "outcome=\"written\"").await, total);
    assert_eq!(metric(&pf.base, "planfeed_plans_total", "outcome=\"spooled\"").await, 0);

    // The process's own priority (its main thread's) is what searches run at.
    let base = threads(pid).into_iter().find(|t| t.tid == pid).unwrap().nice;
    let low = (base + 5).min(19);
    // The checkpoint thread lowers itself when it is first woken, after the first write: wait for it.
    let deadline = Instant::now() + PATIENCE;
    let all = loop {
        let all = threads(pid);
        if all.iter().any(|t| t.is("sqlite-checkpoint") && t.nice == low) {
            break all;
        }
        assert!(Instant::now() < deadline, "checkpoint thread not lowered to {low}: {all:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ingest: Vec<&Thread> = all.iter().filter(|t| t.is("planfeed-ingest-")).collect();
    assert_eq!(ingest.len(), 1, "pipeline.ingest_threads = 1: {all:?}");
    assert_eq!(ingest[0].nice, low, "{all:?}");
    // It did the parsing and the writes: a feed of 2,000 plans × 50 zones is far more than a tick.
    assert!(ingest[0].ticks > 0, "{all:?}");
    // The pipeline's actors (fetcher, chunker, parsers' and writer's message handling) run on the
    // ingestion runtime's workers, lowered too, not on the runtime answering searches: those
    // threads did work (reading and cutting the body alone is many ticks).
    let pipeline: Vec<&Thread> = all.iter().filter(|t| t.is(planfeed::cpu::RUNTIME_THREAD)).collect();
    assert!(!pipeline.is_empty(), "{all:?}");
    assert!(pipeline.iter().all(|t| t.nice == low), "{all:?}");
    assert!(pipeline.iter().map(|t| t.ticks).sum::<u64>() > 0, "{all:?}");
    let searching: Vec<&Thread> = all.iter().filter(|t| t.is("tokio-r")).collect();
    assert!(!searching.is_empty(), "{all:?}");
    assert!(searching.iter().all(|t| t.nice == base), "searches keep the process's priority: {all:?}");
}

/// While searches are answered, ingestion rests between its jobs (`pipeline.ingest_share`), and
/// still finishes the feed: every plan written, the fetch recorded ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_rests_while_searches_are_answered_and_still_finishes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use planfeed::config::Settings;
    use planfeed::service::Service;
    use planfeed::store::sqlite::SqliteStore;
    use planfeed::store::SharedStore;

    let spec = GenSpec {
        base_plans: 200,
        plans_per_base: 4,
        zones_per_plan: 20,
        seed: 23,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let total = spec.base_plans * spec.plans_per_base;
    // The first fetch fails: the feed only comes once searches are being answered.
    let sim = Simulator::new(FeedSource::Generated(spec), Faults { error_rate: 1.0, ..Faults::default() });
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let env: Vec<(String, String)> = [
        ("PLANFEED__PROVIDER__URL", url.as_str()),
        ("PLANFEED__PROVIDER__INTERVAL", "1h"),
        ("PLANFEED__PROVIDER__JITTER", "0s"),
        ("PLANFEED__PROVIDER__RETRIES", "0"),
        ("PLANFEED__PROVIDER__BREAKER_FAILURES", "0"),
        ("PLANFEED__PIPELINE__CHUNK_BYTES", "16384"),
        ("PLANFEED__PIPELINE__INGEST_SHARE", "0.5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = Settings::load_with(std::path::Path::new("/nonexistent"), env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, store.clone(), Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    assert!(common::wait_for_fetches(&store, None, 1).await[0].error.is_some());

    // Searches, one after another (2 ms apart), until the feed is in.
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let searching = tokio::spawn({
        let (stop, answered, base) = (stop.clone(), answered.clone(), base.clone());
        async move {
            let client = reqwest::Client::new();
            let day = "/search?starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z";
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(client.get(format!("{base}{day}")).send().await.unwrap().status(), 200);
                answered.fetch_add(1, Ordering::Relaxed);
                // Steady, not flat out: searches that fill every core beside a busy neighbour would
                // leave ingestion (under SCHED_IDLE) a sliver, and this test is about the rests.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    while answered.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no search answered within {PATIENCE:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let paced_before = planfeed::cpu::paced_seconds();
    sim.set_faults(Faults::default());
    // A job's rest needs a search answered since the thread's previous job: fetch again until one
    // rested (the first fetch practically always does).
    let mut fetches = 1;
    while planfeed::cpu::paced_seconds() == paced_before {
        service.fetch_now();
        fetches += 1;
        let latest = common::wait_for_fetches(&store, None, fetches).await.remove(0);
        assert_eq!(latest.error, None, "{latest:?}");
        assert_eq!(latest.plans_seen as usize, total, "the whole feed, while paced: {latest:?}");
    }
    stop.store(true, Ordering::Relaxed);
    searching.await.unwrap();
    assert!(answered.load(Ordering::Relaxed) > 0);
    assert!(planfeed::cpu::paced_seconds() > paced_before);
    service.shutdown().await;
}
