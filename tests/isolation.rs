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

/// The tests of this file one at a time: each judges how a service shares the cores, and the
/// saturating searches of one would count as the others' (a trickle's threads waiting for a core
/// behind another test's flood is a delay the controller rightly yields to).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one = ONE_AT_A_TIME.lock().await;
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
    // The workers keep the process's priority; blocking threads that read the store for searches
    // lower themselves to the answer threads' (`cpu::answers`), as those do.
    let answers = (base + planfeed::cpu::answers::NICE).min(19);
    let searching: Vec<&Thread> = all.iter().filter(|t| t.is("tokio-r")).collect();
    assert!(searching.iter().any(|t| t.nice == base), "the workers keep the process's priority: {all:?}");
    assert!(searching.iter().all(|t| t.nice == base || t.nice == answers), "{all:?}");
    assert!(all.iter().filter(|t| t.is("planfeed-answer")).all(|t| t.nice == answers), "{all:?}");
}

/// Searches from `clients` tasks, one after another on each, `pause` apart (none: flat out), until
/// `stop`; counts those answered `200`.
fn search_load(
    base: &str,
    clients: usize,
    pause: Option<std::time::Duration>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    use std::sync::atomic::Ordering;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = format!("{base}/search?starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z");
    let tasks = (0..clients)
        .map(|_| {
            let (stop, answered, url) = (stop.clone(), answered.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
                    answered.fetch_add(1, Ordering::Relaxed);
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
            })
        })
        .collect();
    (answered, tasks)
}

/// A sample of `/metrics` (0 when absent).
async fn gauge(base: &str, series: &str) -> f64 {
    common::scrape::sample(&common::scrape::metrics_text(base).await, series).unwrap_or(0.0)
}

/// The feed of the two tests below, its simulator (failing until told otherwise) and a binary
/// fetching it every second with `pipeline` settings.
async fn service_fetching_every_second(
    spec: GenSpec,
    pipeline: &str,
) -> (std::sync::Arc<Simulator>, Planfeed, tempfile::TempDir) {
    let sim = Simulator::new(FeedSource::Generated(spec), Faults { error_rate: 1.0, ..Faults::default() });
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let s = Planfeed::start(&url, pipeline, |toml| {
        toml.replace("interval = \"1h\"", "interval = \"1s\"\nretries = 0\nbreaker_failures = 0")
    })
    .await;
    (sim, s.pf, s.dir)
}

/// A trickle of searches (ten a second) is no demand for CPU: ingestion never rests for it, whole
/// rounds of the feed are written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_searches_never_slows_ingestion() {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::sync::atomic::{AtomicBool, Ordering};
    let spec = GenSpec {
        base_plans: 200,
        plans_per_base: 4,
        zones_per_plan: 20,
        seed: 29,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let (sim, pf, _dir) = service_fetching_every_second(spec, "[pipeline]\nmin_ingest_share = 0.25").await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (answered, tasks) =
        search_load(&pf.base, 1, Some(std::time::Duration::from_millis(100)), stop.clone());
    sim.set_faults(Faults::default());
    // Three whole rounds while the trickle goes on.
    let deadline = Instant::now() + common::PATIENCE;
    while metric(&pf.base, "planfeed_fetches_total", "outcome=\"ok\"").await < 3 {
        assert!(
            Instant::now() < deadline,
            "3 fetches not completed within {:?}:\n{}",
            common::PATIENCE,
            pf.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    let text = common::scrape::metrics_text(&pf.base).await;
    let sample = |s: &str| common::scrape::sample(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert!(sample("planfeed_plans_total{outcome=\"written\"}") >= 800.0, "{text}");
    // The searches' threads also reload the days each write changed (search work that ingestion
    // causes, heavy in a debug build): a period now and then may count them as delayed, never most.
    let delayed = sample("planfeed_ingest_periods_total{reason=\"searches_delayed\"}");
    let spare = sample("planfeed_ingest_periods_total{reason=\"spare\"}");
    assert!(spare >= 10.0 && delayed * 5.0 <= spare, "{delayed} delayed, {spare} spare: {text}");
    // Rests, if any, are a sliver of the time: the old rule rested nine times each job.
    let elapsed = (spare + delayed) / 10.0;
    assert!(sample("planfeed_ingest_paced_seconds_total") <= elapsed / 10.0, "{text}");
    // What the machine lost is exported by cause, so a slow tail can be told from the service's.
    for cause in ["quota", "steal"] {
        assert!(sample(&format!("planfeed_cpu_lost_seconds_total{{cause=\"{cause}\"}}")) >= 0.0, "{text}");
    }
}

/// Searches flat out from the test (more clients than cores) delay each other: the controller
/// lowers ingestion's cap, never below `min_ingest_share`, and a fetch that starts meanwhile still
/// completes with the whole feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_saturating_searches_a_fetch_still_completes() {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::sync::atomic::{AtomicBool, Ordering};
    let spec = GenSpec {
        base_plans: 300,
        plans_per_base: 4,
        zones_per_plan: 20,
        seed: 31,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let total = (spec.base_plans * spec.plans_per_base) as f64;
    let (sim, pf, _dir) = service_fetching_every_second(spec, "[pipeline]\nmin_ingest_share = 0.25").await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (answered, tasks) = search_load(&pf.base, 8, None, stop.clone());
    // The searches are delayed before the feed comes.
    common::scrape::wait_sample(&pf.base, "planfeed_ingest_periods_total{reason=\"searches_delayed\"}", 1.0)
        .await;
    sim.set_faults(Faults::default());
    let deadline = Instant::now() + common::PATIENCE;
    let mut lowest_cap = 1.0f64;
    while metric(&pf.base, "planfeed_fetches_total", "outcome=\"ok\"").await < 1 {
        assert!(
            Instant::now() < deadline,
            "no fetch completed within {:?}:\n{}",
            common::PATIENCE,
            pf.log_text()
        );
        lowest_cap = lowest_cap.min(gauge(&pf.base, "planfeed_ingest_cap").await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let answered_meanwhile = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(answered_meanwhile > 0);
    assert!(lowest_cap >= 0.25, "the cap went below the floor: {lowest_cap}");
    assert!(gauge(&pf.base, "planfeed_plans_total{outcome=\"written\"}").await >= total);
}
