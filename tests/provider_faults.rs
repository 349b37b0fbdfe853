//! Provider resilience against the simulator: real HTTP on 127.0.0.1, real generated XML, the real
//! pipeline and embedded store. Every fault mode must leave `/search` answering what is stored, fast,
//! lose nothing, and the first good fetch after the fault must bring the new data.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PATIENCE;
use planfeed::config::Settings;
use planfeed::domain::{FetchRecord, Plan, PlanKey};
use planfeed::feed::{generate, parse_document, GenSpec};
use planfeed::service::Service;
use planfeed::simulator::{self, ContentType, Faults, FeedSource, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value;
use tokio::net::TcpListener;

const WIDE: &str = "?starts_at=2000-01-01T00:00:00Z&ends_at=2100-01-01T00:00:00Z";

fn spec(seed: u64) -> GenSpec {
    GenSpec {
        base_plans: 12,
        plans_per_base: 4,
        zones_per_plan: 3,
        seed,
        offline_share: 0.0,
        invalid_share: 0.0,
    }
}

fn env(provider_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PLANFEED__PROVIDER__URL", provider_url),
        ("PLANFEED__PROVIDER__INTERVAL", "1h"),
        ("PLANFEED__PROVIDER__JITTER", "0s"),
        // Generous: a good fetch must never time out on a loaded machine. The latency and stall
        // scenarios set their own short timeout (see `fault_scenario`).
        ("PLANFEED__PROVIDER__TIMEOUT", "30s"),
        ("PLANFEED__PROVIDER__RETRIES", "1"),
        ("PLANFEED__PROVIDER__RETRY_BACKOFF", "20ms"),
        ("PLANFEED__PROVIDER__BREAKER_FAILURES", "0"),
        ("PLANFEED__PIPELINE__FLUSH_AGE", "50ms"),
        ("PLANFEED__PIPELINE__CHUNK_BYTES", "1024"),
        // These tests search while they ingest; ingestion yielding to those searches (the controller has
        // its own test in `isolation`) made a 1.5 s fetch miss its time limit beside busy loops.
        ("PLANFEED__PIPELINE__MIN_INGEST_SHARE", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

async fn start(settings: Settings) -> (Service, String, SharedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, store.clone(), Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    (service, base, store, dir)
}

/// The fetches of `provider` in the log, newest first.
/// `planfeed_fetches_total{provider,outcome}` of this process (the service runs in the test).
fn fetches_counted(provider: &str, outcome: &str) -> u64 {
    let label = format!("planfeed_fetches_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} ");
    let text = planfeed::metrics::handle().render();
    text.lines().find_map(|l| l.strip_prefix(label.as_str())).map_or(0, |v| v.trim().parse().unwrap())
}

async fn fetches_of(store: &SharedStore, provider: &str) -> Vec<FetchRecord> {
    store.recent_fetches(1000).await.unwrap().into_iter().filter(|f| f.provider == provider).collect()
}

/// Waits until `provider` has `n` fetches in the log; returns them, newest first.
async fn wait_for_fetches(store: &SharedStore, provider: &str, n: usize) -> Vec<FetchRecord> {
    common::wait_for_fetches(store, Some(provider), n).await
}

/// Waits until `provider` has `n` fetches skipped by its open circuit in the log.
async fn wait_for_skips(store: &SharedStore, provider: &str, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let skips = fetches_of(store, provider)
            .await
            .iter()
            .filter(|f| f.error.as_deref().is_some_and(|e| e.starts_with("circuit open")))
            .count();
        if skips >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} skipped fetches of {provider} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `sim` has received `n` requests.
async fn wait_for_requests(sim: &Simulator, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while sim.requests.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "fewer than {n} provider requests within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The tests of this binary run one at a time: each asserts latencies, and the machine is small.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One client for the whole test binary: building one (TLS roots) costs more than a search.
static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(reqwest::Client::new);

/// `/search` over everything, untimed (the first one of a service warms its cache).
async fn search(base: &str) -> Vec<Value> {
    let res = CLIENT.get(format!("{base}/search{WIDE}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    body["data"]["events"].as_array().unwrap().clone()
}

/// `/search` over everything, with its latency.
async fn timed_search(base: &str) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let events = search(base).await;
    (events, started.elapsed())
}

/// Searches never wait for the provider: judged on the median, so that a descheduling of this
/// test on a loaded machine (debug build, CI neighbours) does not count as the service's slowness,
/// and no single answer may take as long as the faulty provider does (`fault`). Latency figures
/// belong to the benchmarks (docs/performance.md), not here.
fn assert_fast(latencies: &mut [Duration], fault: Duration) {
    assert!(!latencies.is_empty());
    latencies.sort_unstable();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    assert!(median < Duration::from_millis(250), "median /search {median:?} over {latencies:?}");
    assert!(max < fault.max(Duration::from_secs(3)), "slowest /search {max:?}");
}

fn by_id(events: &[Value]) -> BTreeMap<String, Value> {
    events.iter().map(|e| (e["id"].as_str().unwrap().to_string(), e.clone())).collect()
}

fn plan_summary(p: &Plan) -> String {
    let price = |d: Option<rust_decimal::Decimal>| {
        d.map_or("null".to_string(), |d| format!("{:.2}", d.to_f64().unwrap()))
    };
    format!(
        "{} {} {} {} {} {} {}",
        p.title,
        p.start.format("%Y-%m-%d"),
        p.start.format("%H:%M:%S"),
        p.end.format("%Y-%m-%d"),
        p.end.format("%H:%M:%S"),
        price(p.min_price()),
        price(p.max_price())
    )
}

/// Every valid plan of round `round`, by public id, with whether it was observed online.
fn round_plans(provider: &str, spec: &GenSpec, round: u32) -> BTreeMap<String, (bool, String)> {
    round_plans_of(provider, &generate(spec, round))
}

/// The searchable state after applying round `round` fully onto `state`.
fn apply(
    state: &BTreeMap<String, String>,
    round: &BTreeMap<String, (bool, String)>,
) -> BTreeMap<String, String> {
    let mut next = state.clone();
    for (id, (online, s)) in round {
        if *online || next.contains_key(id) {
            next.insert(id.clone(), s.clone());
        }
    }
    next
}

fn summaries(events: &[Value]) -> BTreeMap<String, String> {
    by_id(events).into_iter().map(|(id, e)| (id, common::event_summary(&e))).collect()
}

/// One fault mode, start to end: a good fetch (round 0), a fetch under `faults`, then a good fetch.
/// `fails` says whether the faulty fetch must be recorded as failed.
async fn fault_scenario(faults: Faults, fails: bool, expect_error: &str) {
    let spec = spec(7);
    let sim = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    // A fault made of time (latency, stall) needs a fetch deadline below it; the deadline stays
    // well above what a good fetch of this small feed takes on a loaded machine.
    let slow = faults.latency.max(faults.stall.unwrap_or_default());
    let timeout = if slow.is_zero() { "30s" } else { "1500ms" };
    let settings = Settings::load_with(
        Path::new("/nonexistent"),
        env(&url, &[("PLANFEED__PROVIDER__TIMEOUT", timeout)]),
    )
    .unwrap();
    let (service, base, store, _dir) = start(settings).await;

    wait_for_fetches(&store, "fever", 1).await;
    let before = search(&base).await;
    let before_s = summaries(&before);
    assert_eq!(before_s, apply(&BTreeMap::new(), &round_plans("fever", &spec, 0)));
    assert!(before.len() > 30, "{}", before.len());

    sim.set_faults(faults.clone());
    let served_before = sim.served.load(Ordering::Relaxed);
    service.fetch_now();
    // While the faulty fetch runs and after it: stored plans keep being answered, fast.
    let mut latencies = Vec::new();
    let faulty = loop {
        let (now, took) = timed_search(&base).await;
        latencies.push(took);
        let now_s = summaries(&now);
        let fetches = store.recent_fetches(10).await.unwrap();
        if !fails {
            assert!(before_s.keys().all(|id| now_s.contains_key(id)), "a stored plan disappeared");
        } else {
            // Only whole base plans served before the failure may have been taken in, with the
            // values of the faulty round; anything else is exactly as before.
            let faulty_round = round_plans("fever", &spec, served_before as u32);
            for (id, s) in &before_s {
                let now = now_s.get(id).unwrap_or_else(|| panic!("stored plan {id} disappeared"));
                assert!(
                    now == s || faulty_round.get(id).is_some_and(|(_, f)| f == now),
                    "plan {id} altered: {s} -> {now}"
                );
            }
        }
        if fetches.len() >= 2 {
            break fetches[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 0..5 {
        latencies.push(timed_search(&base).await.1);
    }
    assert_fast(&mut latencies, slow);
    if fails {
        let error = faulty.error.clone().unwrap_or_default();
        assert!(error.contains(expect_error), "expected {expect_error:?} in {error:?}");
    } else {
        assert_eq!(faulty.error, None, "{faulty:?}");
    }
    let after_fault = summaries(&search(&base).await);

    sim.set_faults(Faults::default());
    service.fetch_now();
    wait_for_fetches(&store, "fever", 3).await;
    let good = store.recent_fetches(1).await.unwrap().remove(0);
    assert_eq!(good.error, None, "{good:?}");
    let after = summaries(&search(&base).await);
    // A response abandoned by a timeout may still count as served once its latency is over, so
    // the good fetch got one of the rounds served since the fault.
    let rounds = served_before..sim.served.load(Ordering::Relaxed);
    let round = rounds
        .clone()
        .find(|&r| after == apply(&after_fault, &round_plans("fever", &spec, r as u32)))
        .unwrap_or_else(|| panic!("the good fetch after the fault brings one of rounds {rounds:?}"));
    assert!(before_s.keys().all(|id| after.contains_key(id)), "nothing stored before is lost");
    assert_ne!(after, before_s, "round {round} has visibly new values");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_500_is_retried_then_recorded_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let faults = Faults { error_rate: 1.0, error_statuses: vec![500], ..Faults::default() };
    fault_scenario(faults, true, "provider answered HTTP 500 Internal Server Error (after 1 retry)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_503_is_retried_then_recorded_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let faults = Faults { error_rate: 1.0, error_statuses: vec![503], ..Faults::default() };
    fault_scenario(faults, true, "provider answered HTTP 503 Service Unavailable (after 1 retry)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_beyond_the_timeout_fails_the_fetch() {
    let _serial = SERIAL.lock().await;
    let faults = Faults { latency: Duration::from_secs(5), ..Faults::default() };
    fault_scenario(faults, true, "timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_beyond_the_timeout_keeps_the_whole_base_plans_before_it() {
    let _serial = SERIAL.lock().await;
    let faults = Faults { stall: Some(Duration::from_secs(5)), ..Faults::default() };
    // Either the fetch deadline or the client's read timeout (both 1.5 s here) ends the stall.
    fault_scenario(faults, true, "timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_fails_the_fetch() {
    let _serial = SERIAL.lock().await;
    fault_scenario(Faults { truncate: true, ..Faults::default() }, true, "truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_fails_the_fetch() {
    let _serial = SERIAL.lock().await;
    fault_scenario(Faults { malformed: true, ..Faults::default() }, true, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_missing_or_text_content_type_and_gzip_still_ingest() {
    let _serial = SERIAL.lock().await;
    for faults in [
        Faults { content_type: ContentType::Wrong, ..Faults::default() },
        Faults { content_type: ContentType::Missing, ..Faults::default() },
        Faults { content_type: ContentType::TextXml, ..Faults::default() },
        Faults { gzip: true, ..Faults::default() },
    ] {
        fault_scenario(faults, false, "").await;
    }
}

/// The base plan cut by a truncation is not half-stored: its plans that were complete before the
/// cut keep their previous values; every base plan completed before the cut is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_keeps_whole_base_plans_and_never_half_a_base_plan() {
    let _serial = SERIAL.lock().await;
    let spec = GenSpec { plans_per_base: 8, ..spec(11) };
    let sim = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let settings = Settings::load_with(Path::new("/nonexistent"), env(&url, &[])).unwrap();
    let (service, base, store, _dir) = start(settings).await;
    wait_for_fetches(&store, "fever", 1).await;
    let before = summaries(&search(&base).await);

    sim.set_faults(Faults { truncate: true, ..Faults::default() });
    service.fetch_now();
    let fetch = wait_for_fetches(&store, "fever", 2).await.remove(0);
    assert!(fetch.error.as_deref().unwrap_or_default().contains("truncated"), "{fetch:?}");
    let after = summaries(&search(&base).await);

    // What the simulator sent: the first half of round 1.
    let full = generate(&spec, 1);
    let sent = &full[..full.len() / 2];
    let cut_at = memchr::memmem::rfind(sent, b"<base_plan ").unwrap();
    let complete_end =
        memchr::memmem::rfind(&sent[..cut_at], b"</base_plan>").unwrap() + b"</base_plan>".len();
    let mut complete = sent[..complete_end].to_vec();
    complete.extend_from_slice(b"</output></planList>");
    let provider: Arc<str> = Arc::from("fever");
    let stored = parse_document(&provider, &complete).unwrap();
    assert!(stored.plans.len() > 20);
    for p in &stored.plans {
        let id = p.key.id().to_string();
        if !p.online && !before.contains_key(&id) {
            continue;
        }
        assert_eq!(after.get(&id), Some(&plan_summary(p)), "complete base plan before the cut: {}", p.key);
    }
    // The cut base plan: its plans as round 1 has them, first of all those complete before the cut.
    let round1 = parse_document(&provider, &full).unwrap();
    let cut_base: u64 = {
        let tag = &sent[cut_at..];
        let s = std::str::from_utf8(&tag[..tag.len().min(200)]).unwrap_or_default();
        let v = s.split("base_plan_id=\"").nth(1).unwrap();
        v[..v.find('"').unwrap()].parse().unwrap()
    };
    let cut_plans: Vec<_> = round1.plans.iter().filter(|p| p.key.base_plan_id == cut_base).collect();
    assert!(!cut_plans.is_empty());
    let mut changed_in_round1 = 0;
    for p in cut_plans {
        let id = p.key.id().to_string();
        assert_eq!(after.get(&id), before.get(&id), "plan {} of the cut base plan was stored", p.key);
        if before.get(&id) != Some(&plan_summary(p)) {
            changed_in_round1 += 1;
        }
    }
    assert!(changed_in_round1 > 0, "round 1 changes the cut base plan, so storing it would show");
    service.shutdown().await;
}

/// A simulator answering every request with 503, and settings that fetch it every 50 ms without
/// retries, the breaker opening after `failures` failed fetches for `cooldown`.
async fn failing_provider_with_breaker(failures: u32, cooldown: &str) -> (Arc<Simulator>, Settings) {
    let sim = Simulator::new(
        FeedSource::Generated(spec(3)),
        Faults { error_rate: 1.0, error_statuses: vec![503], ..Faults::default() },
    );
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let failures = failures.to_string();
    let settings = Settings::load_with(
        Path::new("/nonexistent"),
        env(
            &url,
            &[
                ("PLANFEED__PROVIDER__INTERVAL", "50ms"),
                ("PLANFEED__PROVIDER__RETRIES", "0"),
                ("PLANFEED__PROVIDER__BREAKER_FAILURES", &failures),
                ("PLANFEED__PROVIDER__BREAKER_COOLDOWN", cooldown),
            ],
        ),
    )
    .unwrap();
    (sim, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_stops_requests_while_open_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let cooldown = Duration::from_secs(2);
    let (sim, settings) = failing_provider_with_breaker(3, "2s").await;
    let (service, base, store, _dir) = start(settings).await;
    let requests = || sim.requests.load(Ordering::Relaxed);

    // Three failed fetches open the breaker: while it is open, each scheduled fetch (every 50 ms)
    // is recorded as skipped and sends nothing.
    wait_for_requests(&sim, 3).await;
    let opened = Instant::now();
    wait_for_skips(&store, "fever", 3).await;
    if opened.elapsed() < cooldown {
        assert_eq!(requests(), 3, "no request while the circuit is open");
    }
    let fetches = fetches_of(&store, "fever").await;
    let skipped: Vec<_> = fetches
        .iter()
        .filter(|f| f.error.as_deref().is_some_and(|e| e.starts_with("circuit open")))
        .collect();
    assert!(skipped[0].error.as_deref().unwrap().contains("3 consecutive failed fetches"), "{skipped:?}");
    assert_eq!(skipped[0].http_status, None);
    assert!(fetches_counted("fever", "skipped") >= skipped.len() as u64, "{skipped:?}");

    // After the cooldown exactly one probe; it fails, so the breaker opens again and the next
    // scheduled fetches are skipped without a request.
    wait_for_requests(&sim, 4).await;
    assert!(
        opened.elapsed() >= cooldown - Duration::from_millis(100),
        "probe came after {:?}",
        opened.elapsed()
    );
    let reopened = Instant::now();
    let skips = skipped.len();
    wait_for_skips(&store, "fever", skips + 3).await;
    if reopened.elapsed() < cooldown {
        assert_eq!(requests(), 4, "a failed probe reopens the circuit");
    }

    // The provider recovers: the next probe succeeds, the breaker closes, fetches flow again.
    sim.set_faults(Faults::default());
    let before = requests();
    wait_for_requests(&sim, before + 4).await;
    let latest = store.recent_fetches(1).await.unwrap().remove(0);
    assert!(latest.error.is_none() || !latest.error.as_deref().unwrap().starts_with("circuit"), "{latest:?}");
    assert!(!search(&base).await.is_empty());
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stays_open_when_the_fetcher_is_restarted() {
    let _serial = SERIAL.lock().await;
    let (sim, settings) = failing_provider_with_breaker(2, "1h").await;
    let (service, _base, store, _dir) = start(settings).await;
    wait_for_requests(&sim, 2).await;
    wait_for_skips(&store, "fever", 2).await;
    assert_eq!(sim.requests.load(Ordering::Relaxed), 2, "the circuit is open");

    let handles = service.pipeline().unwrap().clone();
    let old = handles.fetchers[0].get().unwrap();
    let old_id = old.get_id();
    old.kill();
    let deadline = Instant::now() + PATIENCE;
    while handles.fetchers[0].get().is_none_or(|f| f.get_id() == old_id) {
        assert!(Instant::now() < deadline, "the fetcher is replaced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A dozen scheduled fetches of the replacement later, still no request.
    let skips = fetches_of(&store, "fever").await.iter().filter(|f| f.http_status.is_none()).count();
    wait_for_skips(&store, "fever", skips + 12).await;
    assert_eq!(
        sim.requests.load(Ordering::Relaxed),
        2,
        "a restarted fetcher keeps its provider's open circuit"
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_one_failing_the_healthy_one_keeps_flowing() {
    let _serial = SERIAL.lock().await;
    let spec = spec(5);
    let sim_a = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let sim_b = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let url_a = simulator::spawn_local(sim_a.clone()).await.unwrap();
    let url_b = simulator::spawn_local(sim_b.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("local.toml"),
        format!(
            "[[providers]]\nname = \"alpha\"\nurl = \"{url_a}\"\n\
             [[providers]]\nname = \"beta\"\nurl = \"{url_b}\"\nretries = 0\n"
        ),
    )
    .unwrap();
    let settings = Settings::load_with(dir.path(), env("http://127.0.0.1:1/unused", &[])).unwrap();
    assert_eq!(settings.effective_providers().len(), 2);
    let (service, base, store, _db) = start(settings).await;
    wait_for_fetches(&store, "alpha", 1).await;
    wait_for_fetches(&store, "beta", 1).await;

    let round0_a = apply(&BTreeMap::new(), &round_plans("alpha", &spec, 0));
    let round0_b = apply(&BTreeMap::new(), &round_plans("beta", &spec, 0));
    let mut expected = round0_a.clone();
    expected.extend(round0_b.clone());
    assert_eq!(summaries(&search(&base).await), expected);
    // Same base_plan_id/plan_id from both providers: two distinct events, same values.
    let a = PlanKey::new("alpha", 100, 1).id().to_string();
    let b = PlanKey::new("beta", 100, 1).id().to_string();
    assert_ne!(a, b);
    assert_eq!(round0_a.get(&a), round0_b.get(&b));
    assert!(round0_a.contains_key(&a));
    assert_eq!(expected.len(), round0_a.len() * 2);

    sim_b.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    service.fetch_now();
    let alpha = wait_for_fetches(&store, "alpha", 2).await;
    let beta = wait_for_fetches(&store, "beta", 2).await;
    assert_eq!(alpha[0].error, None);
    assert!(beta[0].error.as_deref().unwrap_or_default().contains("provider answered HTTP 5"), "{beta:?}");
    let mut expected = apply(&round0_a, &round_plans("alpha", &spec, 1));
    expected.extend(round0_b);
    let now = summaries(&search(&base).await);
    assert_eq!(now, expected, "alpha's round 1 flows, beta's plans stay as they were");
    assert_ne!(now.get(&a).map(String::as_str), None);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_within_one_fetch() {
    let _serial = SERIAL.lock().await;
    let retried = || {
        let text = planfeed::metrics::handle().render();
        let line = "planfeed_retries_total{operation=\"fetch\"} ";
        text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let retried_before = retried();
    let spec = spec(13);
    let sim = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    sim.fail_next(2);
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let settings =
        Settings::load_with(Path::new("/nonexistent"), env(&url, &[("PLANFEED__PROVIDER__RETRIES", "2")]))
            .unwrap();
    let (service, base, store, _dir) = start(settings).await;
    let fetches = wait_for_fetches(&store, "fever", 1).await;
    assert_eq!(fetches[0].error, None, "two 503s then the feed: one successful fetch");
    assert_eq!(fetches[0].http_status, Some(200));
    assert_eq!(sim.requests.load(Ordering::Relaxed), 3);
    assert_eq!(summaries(&search(&base).await), apply(&BTreeMap::new(), &round_plans("fever", &spec, 0)));

    // One failure more than the retries allow: the fetch fails, naming the retries.
    sim.fail_next(3);
    service.fetch_now();
    let fetches = wait_for_fetches(&store, "fever", 2).await;
    let error = fetches[0].error.as_deref().unwrap_or_default();
    assert_eq!(error, "provider answered HTTP 503 Service Unavailable (after 2 retries)");
    assert_eq!(sim.requests.load(Ordering::Relaxed), 6);
    assert_eq!(retried() - retried_before, 4, "every retry is counted in planfeed_retries_total");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_fails_and_keeps_the_base_plans_before_the_limit() {
    let _serial = SERIAL.lock().await;
    let spec = spec(17);
    let sim = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let settings = Settings::load_with(
        Path::new("/nonexistent"),
        env(&url, &[("PLANFEED__PROVIDER__MAX_BODY_BYTES", "6000")]),
    )
    .unwrap();
    let (service, base, store, _dir) = start(settings).await;
    let fetch = wait_for_fetches(&store, "fever", 1).await.remove(0);
    let error = fetch.error.as_deref().unwrap_or_default();
    assert!(error.contains("body exceeds provider.max_body_bytes (6000 bytes)"), "{error}");
    assert_eq!(fetch.bytes, 6000);
    assert_eq!(fetches_counted("fever", "too_large"), 1);

    let full = generate(&spec, 0);
    let sent = &full[..6000];
    let end = memchr::memmem::rfind(sent, b"</base_plan>").unwrap() + b"</base_plan>".len();
    let mut complete = sent[..end].to_vec();
    complete.extend_from_slice(b"</output></planList>");
    let expected = apply(&BTreeMap::new(), &round_plans_of("fever", &complete));
    assert!(!expected.is_empty());
    assert_eq!(summaries(&search(&base).await), expected);
    service.shutdown().await;
}

fn round_plans_of(provider: &str, body: &[u8]) -> BTreeMap<String, (bool, String)> {
    let parsed = parse_document(&Arc::from(provider), body).unwrap();
    parsed.plans.iter().map(|p| (p.key.id().to_string(), (p.online, plan_summary(p)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_once_sends_one_request_and_returns_the_record_its_writer_recorded() {
    let _serial = SERIAL.lock().await;
    let spec = spec(21);
    let sim = Simulator::new(FeedSource::Generated(spec.clone()), Faults::default());
    let url = simulator::spawn_local(sim.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("once.db");
    let spool = dir.path().join("spool");
    let extra = [
        ("PLANFEED__STORE__PATH", db.to_str().unwrap()),
        ("PLANFEED__SPOOL__PATH", spool.to_str().unwrap()),
        // A short interval: a second request would show that the run did not end with its fetch.
        ("PLANFEED__PROVIDER__INTERVAL", "10ms"),
    ];
    let settings = Settings::load_with(Path::new("/nonexistent"), env(&url, &extra)).unwrap();
    let record = planfeed::service::ingest_once(settings, None, None, false).await.unwrap();
    let plans = round_plans("fever", &spec, 0).len() as u64;
    assert_eq!((record.error.as_deref(), record.plans_seen, record.plans_written), (None, plans, plans));
    assert_eq!(sim.requests.load(Ordering::Relaxed), 1);
    let store: SharedStore = Arc::new(SqliteStore::open(&db).unwrap());
    let logged = store.recent_fetches(10).await.unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(
        (logged[0].plans_seen, logged[0].plans_written, logged[0].bytes),
        (plans, plans, record.bytes)
    );
}
