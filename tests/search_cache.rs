//! The search cache against real stores: single flight, the writer's invalidation, TTL refresh
//! across store handles, stale answers while the store is down (embedded and a real ClickHouse
//! server that is stopped or frozen), and the rate limits end to end over HTTP.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::NaiveDate;
use planfeed::config::{SearchSettings, Settings};
use planfeed::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};
use planfeed::http::params::parse_range;
use planfeed::search::Searcher;
use planfeed::service::Service;
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::{DaySize, SharedStore, Store, StoreError, StoreResult};
use serde_json::Value;
use tokio::net::TcpListener;

use common::clickhouse::ClickHouseServer;
use common::{day, plan, stored};

/// A real store with a call counter on `plans_by_day`, an optional delay (so concurrent callers
/// really overlap) and a switch that makes every read fail as an unreachable store would.
struct Counting {
    inner: SharedStore,
    plans_by_day_calls: AtomicUsize,
    delay: Duration,
    down: AtomicBool,
    /// `plans_by_day` calls under way now, and the most at once.
    reading: AtomicUsize,
    most_reading: AtomicUsize,
}

impl Counting {
    fn new(inner: SharedStore, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            plans_by_day_calls: AtomicUsize::new(0),
            delay,
            down: AtomicBool::new(false),
            reading: AtomicUsize::new(0),
            most_reading: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.plans_by_day_calls.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused (test switch)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        self.check_up()?;
        self.inner.write_plans(plans).await
    }
    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
        self.check_up()?;
        self.inner.mark_ever_online(keys).await
    }
    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        self.check_up()?;
        self.inner.load_plan_states().await
    }
    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        self.plans_by_day_calls.fetch_add(1, Ordering::SeqCst);
        let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_reading.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let out = match self.check_up() {
            Ok(()) => self.inner.plans_by_day(from, to).await,
            Err(e) => Err(e),
        };
        self.reading.fetch_sub(1, Ordering::SeqCst);
        out
    }
    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        self.check_up()?;
        self.inner.day_bounds().await
    }
    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        self.check_up()?;
        self.inner.day_directory().await
    }
    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        self.check_up()?;
        self.inner.record_fetch(fetch).await
    }
    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        self.check_up()?;
        self.inner.recent_fetches(limit).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check_up()?;
        self.inner.ping().await
    }
}

fn sqlite(dir: &tempfile::TempDir) -> SharedStore {
    Arc::new(SqliteStore::open(&dir.path().join("plans.db")).unwrap())
}

fn cache(ttl: Duration) -> SearchSettings {
    SearchSettings {
        cache_bytes: 64 << 20,
        cache_ttl: ttl,
        change_poll: Duration::from_secs(1),
        store_deadline: Duration::from_millis(100),
    }
}

/// Plan `id` of base plan 1 on `date` from `from` to `to` (HH:MM:SS), titled `title`.
fn at(id: u64, title: &str, date: &str, from: &str, to: &str, version: u64) -> StoredPlan {
    stored(plan("fever", 1, id, title, &format!("{date}T{from}"), &format!("{date}T{to}")), version)
}

/// The whole day `date` (UTC) as a search range.
fn whole(date: &str) -> planfeed::domain::TimeRange {
    parse_range(&format!("starts_at={date}T00:00:00Z&ends_at={date}T23:59:59Z")).unwrap()
}

fn titles(body: &Bytes) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["error"], Value::Null, "{v}");
    v["data"]["events"].as_array().unwrap().iter().map(|e| e["title"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_of_a_cold_day_read_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[
        at(1, "morning", "2021-07-01", "09:00:00", "10:00:00", 1),
        at(2, "evening", "2021-07-01", "20:00:00", "21:00:00", 1),
    ])
    .await
    .unwrap();
    let store = Counting::new(real, Duration::from_millis(100));
    let searcher = Arc::new(Searcher::new(store.clone(), &cache(Duration::from_secs(3600))));

    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let s = searcher.clone();
            tokio::spawn(async move { s.search(whole("2021-07-01")).await.unwrap() })
        })
        .collect();
    let bodies: Vec<Bytes> = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();

    assert_eq!(store.calls(), 1, "32 concurrent searches of one cold day load it once");
    assert!(bodies.iter().all(|b| b == &bodies[0]), "every caller gets the same answer");
    assert_eq!(titles(&bodies[0]), ["morning", "evening"]);
    // Warm now: more searches read nothing.
    searcher.search(whole("2021-07-01")).await.unwrap();
    assert_eq!(store.calls(), 1);
}

#[tokio::test]
async fn the_writers_invalidation_makes_a_write_visible_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    store.write_plans(&[at(1, "old title", "2021-07-01", "09:00:00", "10:00:00", 1)]).await.unwrap();
    // An hour of TTL: only the invalidation can explain a fresh answer.
    let searcher = Searcher::new(store.clone(), &cache(Duration::from_secs(3600)));
    let july = parse_range("starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-31T00:00:00Z").unwrap();
    assert_eq!(titles(&searcher.search(july).await.unwrap()), ["old title"]);

    // What the batch writer does after a flush: write, then invalidate the days it touched. The
    // second plan lies on a day past the cached day bounds.
    store
        .write_plans(&[
            at(1, "new title", "2021-07-01", "09:00:00", "10:00:00", 2),
            at(2, "added later", "2021-07-20", "09:00:00", "10:00:00", 2),
        ])
        .await
        .unwrap();
    assert_eq!(titles(&searcher.search(july).await.unwrap()), ["old title"], "cached until invalidated");
    searcher.invalidate(&[day("2021-07-01"), day("2021-07-20")]).await;
    assert_eq!(titles(&searcher.search(july).await.unwrap()), ["new title", "added later"]);
    // Open-ended searches see the widened day bounds too.
    let open = parse_range("starts_at=2021-07-15T00:00:00Z").unwrap();
    assert_eq!(titles(&searcher.search(open).await.unwrap()), ["added later"]);
}

#[tokio::test]
async fn ttl_refresh_picks_up_writes_made_through_another_store_handle() {
    let dir = tempfile::tempdir().unwrap();
    let ours = sqlite(&dir);
    ours.write_plans(&[at(1, "before", "2021-07-01", "09:00:00", "10:00:00", 1)]).await.unwrap();
    // Long enough that opening a second handle and writing one plan stays inside the half TTL a
    // body is served for, even on a machine other work keeps busy (200 ms was not, beside two
    // busy loops).
    let ttl = Duration::from_secs(2);
    let searcher = Searcher::new(ours, &cache(ttl));
    assert_eq!(titles(&searcher.search(whole("2021-07-01")).await.unwrap()), ["before"]);

    // Another process: its own handle on the same file, and no invalidation reaches us.
    let other = sqlite(&dir);
    other.write_plans(&[at(1, "after", "2021-07-01", "09:00:00", "10:00:00", 2)]).await.unwrap();
    assert_eq!(titles(&searcher.search(whole("2021-07-01")).await.unwrap()), ["before"], "within the TTL");

    // Past the TTL the next searches see the write (a hot entry may be refreshed in the background,
    // so allow a few searches for the refresh to land).
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let mut seen = Vec::new();
    let patience = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < patience {
        seen = titles(&searcher.search(whole("2021-07-01")).await.unwrap());
        if seen == ["after"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["after"]);
}

#[tokio::test]
async fn store_down_serves_the_last_cached_answer() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[
        at(1, "cached", "2021-07-01", "09:00:00", "10:00:00", 1),
        at(2, "never read", "2021-07-02", "09:00:00", "10:00:00", 1),
    ])
    .await
    .unwrap();
    let store = Counting::new(real, Duration::ZERO);
    let ttl = Duration::from_millis(100);
    let searcher = Searcher::new(store.clone(), &cache(ttl));
    let warm = searcher.search(whole("2021-07-01")).await.unwrap();
    assert_eq!(titles(&warm), ["cached"]);

    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    // Expired and invalidated alike: both must fall back to the last copy.
    searcher.invalidate(&[day("2021-07-01")]).await;
    for _ in 0..3 {
        assert_eq!(searcher.search(whole("2021-07-01")).await.unwrap(), warm, "same bytes as before");
    }
    assert!(searcher.counters.stale_served.load(Ordering::Relaxed) >= 1);
    assert!(searcher.counters.store_errors.load(Ordering::Relaxed) >= 1);
    // A day never loaded has no copy to fall back to.
    let err = searcher.search(whole("2021-07-02")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // Back up: fresh answers again.
    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(titles(&searcher.search(whole("2021-07-02")).await.unwrap()), ["never read"]);
}

/// Plans on every third day of 2021 (122 days, two plans each), written in one batch.
async fn a_sparse_year(store: &SharedStore) {
    let mut plans = Vec::new();
    let mut d = day("2021-01-01");
    let mut id = 0;
    while d.format("%Y").to_string() == "2021" {
        for (from, to) in [("09:00:00", "10:00:00"), ("20:00:00", "21:00:00")] {
            id += 1;
            plans.push(at(id, &format!("plan {id}"), &d.to_string(), from, to, 1));
        }
        d += chrono::Duration::days(3);
    }
    store.write_plans(&plans).await.unwrap();
}

#[tokio::test]
async fn a_cold_year_is_one_store_query_and_every_later_ask_is_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    a_sparse_year(&real).await;
    let store = Counting::new(real, Duration::ZERO);
    let searcher = Searcher::new(store.clone(), &cache(Duration::from_secs(3600)));
    let year = parse_range("starts_at=2021-01-01T00:00:00Z&ends_at=2021-12-31T23:59:59Z").unwrap();

    let body = searcher.search(year).await.unwrap();
    assert_eq!(titles(&body).len(), 244);
    assert_eq!(titles(&body)[..3], ["plan 1", "plan 2", "plan 3"]);
    assert_eq!(store.calls(), 1, "122 non-empty days over 365 calendar days: one query");
    assert_eq!(searcher.directory_len(), 122);

    // The same range again, and any range inside it: no store query.
    assert_eq!(searcher.search(year).await.unwrap(), body);
    let june = parse_range("starts_at=2021-06-01T00:00:00Z&ends_at=2021-06-30T23:59:59Z").unwrap();
    let june_titles = titles(&searcher.search(june).await.unwrap());
    assert_eq!(june_titles.len(), 20);
    assert_eq!(store.calls(), 1);
    assert_eq!(searcher.counters.run_queries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn cached_days_split_runs_and_empty_days_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    a_sparse_year(&real).await;
    let store = Counting::new(real, Duration::ZERO);
    let searcher = Searcher::new(store.clone(), &cache(Duration::from_secs(3600)));

    // An empty day, and a year without plans: no query at all.
    assert_eq!(titles(&searcher.search(whole("2021-01-02")).await.unwrap()), Vec::<String>::new());
    let empty_year = parse_range("starts_at=2023-01-01T00:00:00Z&ends_at=2023-12-31T23:59:59Z").unwrap();
    assert_eq!(titles(&searcher.search(empty_year).await.unwrap()), Vec::<String>::new());
    assert_eq!(store.calls(), 0, "days the directory lists as empty are never queried");

    // A day in the middle first: the year then needs the runs before and after it.
    assert_eq!(titles(&searcher.search(whole("2021-06-30")).await.unwrap()).len(), 2);
    assert_eq!(store.calls(), 1);
    let open = parse_range("starts_at=2021-01-01T00:00:00Z").unwrap();
    assert_eq!(titles(&searcher.search(open).await.unwrap()).len(), 244);
    assert_eq!(store.calls(), 3, "one query per run of consecutive missing days");
}

#[tokio::test]
async fn plans_at_the_first_and_last_valid_days_cost_what_any_day_costs() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[
        at(1, "first day", "0001-01-01", "00:00:00", "01:00:00", 1),
        at(2, "normal", "2021-07-01", "09:00:00", "10:00:00", 1),
        at(3, "last day", "9999-12-31", "20:00:00", "23:59:59", 1),
    ])
    .await
    .unwrap();
    let store = Counting::new(real, Duration::ZERO);
    let searcher = Searcher::new(store.clone(), &cache(Duration::from_secs(3600)));
    let started = std::time::Instant::now();
    let all = searcher.search(Default::default()).await.unwrap();
    assert_eq!(titles(&all), ["first day", "normal", "last day"]);
    let to_the_end = parse_range("starts_at=2021-07-01T00:00:00Z").unwrap();
    assert_eq!(titles(&searcher.search(to_the_end).await.unwrap()), ["normal", "last day"]);
    let from_the_start = parse_range("ends_at=2021-07-01T10:00:00Z").unwrap();
    assert_eq!(titles(&searcher.search(from_the_start).await.unwrap()), ["first day", "normal"]);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(store.calls(), 1, "three non-empty days in one run");
}

fn api_settings(extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        ("PLANFEED__ROLE".to_string(), "api".to_string()),
        ("PLANFEED__SEARCH__CACHE_TTL".to_string(), "100ms".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_with(Path::new("/nonexistent"), env).unwrap()
}

async fn serve(settings: Settings, store: SharedStore) -> (Service, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = Service::start_with(settings, store, Some(listener)).await.unwrap();
    let base = format!("http://{}", service.addr.unwrap());
    (service, base)
}

/// Status, `Retry-After` and body of `GET {base}{path}` with optional `X-Forwarded-For`.
async fn get(base: &str, path: &str, forwarded_for: Option<&str>) -> (u16, Option<String>, Bytes) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{base}{path}"));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), retry, res.bytes().await.unwrap())
}

fn error_of(body: &Bytes) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["data"], Value::Null, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "only data and error: {v}");
    (v["error"]["code"].as_str().unwrap().to_owned(), v["error"]["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn over_http_a_down_store_serves_cached_days_and_500s_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[at(1, "cached", "2021-07-01", "09:00:00", "10:00:00", 1)]).await.unwrap();
    let store = Counting::new(real.clone(), Duration::ZERO);
    let (service, base) = serve(api_settings(&[]), store.clone()).await;
    let q1 = "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-01T23:59:59Z";
    let (status, _, warm) = get(&base, q1, None).await;
    assert_eq!((status, titles(&warm)), (200, vec!["cached".to_string()]));
    // The service warms every day it knows at start; a day the writer adds afterwards is never read.
    real.write_plans(&[at(2, "never read", "2021-07-02", "09:00:00", "10:00:00", 1)]).await.unwrap();
    service.searcher.invalidate(&[day("2021-07-02")]).await;

    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _, body) = get(&base, q1, None).await;
    assert_eq!((status, body), (200, warm));
    assert!(service.searcher.counters.stale_served.load(Ordering::Relaxed) >= 1);

    let (status, _, body) =
        get(&base, "/search?starts_at=2021-07-02T00:00:00Z&ends_at=2021-07-02T23:59:59Z", None).await;
    assert_eq!(status, 500);
    let (code, message) = error_of(&body);
    assert_eq!(code, "internal_error");
    assert!(!message.contains("refused"), "no internals leak: {message}");
    service.shutdown().await;
}

#[tokio::test]
async fn rate_limits_over_http_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        ("PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_PER_SECOND", "1"),
        ("PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_BURST", "2"),
    ];
    let (service, base) = serve(api_settings(&limits), sqlite(&dir)).await;
    let q = "/search?starts_at=2021-07-01T00:00:00Z";
    assert_eq!(get(&base, q, None).await.0, 200);
    // Not trusted: a forged X-Forwarded-For does not buy another quota.
    assert_eq!(get(&base, q, Some("203.0.113.7")).await.0, 200);
    let (status, retry_after, body) = get(&base, q, Some("203.0.113.8")).await;
    assert_eq!(status, 429);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (code, message) = error_of(&body);
    assert_eq!(code, "rate_limited");
    assert_eq!(message, "too many requests, retry in 1 s");
    service.shutdown().await;

    // Trusted (behind a proxy): each forwarded client has its own quota.
    let trusted = [limits[0], limits[1], ("PLANFEED__SERVER__RATE_LIMIT__TRUST_FORWARDED_FOR", "true")];
    let (service, base) = serve(api_settings(&trusted), sqlite(&dir)).await;
    for _ in 0..2 {
        assert_eq!(get(&base, q, Some("203.0.113.7")).await.0, 200);
    }
    assert_eq!(get(&base, q, Some("203.0.113.7")).await.0, 429);
    assert_eq!(get(&base, q, Some("203.0.113.8, 10.0.0.1")).await.0, 200, "another client");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_still_serves_cached_days_with_the_same_bytes() {
    let Some(mut server) = ClickHouseServer::start() else { return };
    let settings = ClickHouseSettings {
        url: server.url(),
        database: "planfeed_search".into(),
        ..ClickHouseSettings::default()
    };
    let store = ClickHouseStore::connect(settings).await.unwrap();
    store.migrate().await.unwrap();
    store
        .write_plans(&[
            at(1, "first", "2021-07-01", "09:00:00", "10:00:00", 1),
            at(2, "second", "2021-07-02", "20:00:00", "21:00:00", 1),
            at(3, "third", "2021-08-15", "20:00:00", "21:00:00", 1),
        ])
        .await
        .unwrap();
    let (service, base) = serve(api_settings(&[]), Arc::new(store)).await;
    let queries = [
        "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-01T23:59:59Z",
        "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-31T00:00:00Z",
        "/search",
    ];
    let mut warm = Vec::new();
    for q in queries {
        let (status, _, body) = get(&base, q, None).await;
        assert_eq!(status, 200, "{q}");
        warm.push(body);
    }
    assert_eq!(titles(&warm[1]), ["first", "second"]);
    assert_eq!(titles(&warm[2]), ["first", "second", "third"]);

    server.stop();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for (q, before) in queries.iter().zip(&warm) {
        let (status, _, body) = get(&base, q, None).await;
        assert_eq!((status, &body), (200, before), "{q}");
    }
    assert!(service.searcher.counters.stale_served.load(Ordering::Relaxed) >= 1);
    assert!(service.searcher.counters.store_errors.load(Ordering::Relaxed) >= 1);
    service.shutdown().await;
}

/// Plans on the first and last valid days, in UTC and in New York (whose evening of 9999-12-31 is
/// UTC day 10000-01-01), beside a normal one: every search right, answered warm in milliseconds.
async fn far_dates_are_searched_right(store: SharedStore) {
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let in_ny = |p, v| StoredPlan::new(p, ny, false, v);
    store
        .write_plans(&[
            at(1, "utc first", "0001-01-01", "00:00:00", "01:00:00", 1),
            in_ny(plan("fever", 1, 2, "ny first", "0001-01-01T10:00:00", "0001-01-01T11:00:00"), 1),
            at(3, "normal", "2021-07-01", "09:00:00", "10:00:00", 1),
            at(4, "utc last", "9999-12-31", "20:00:00", "23:59:59", 1),
            in_ny(plan("fever", 1, 5, "ny last", "9999-12-31T20:00:00", "9999-12-31T23:00:00"), 1),
        ])
        .await
        .unwrap();
    let searcher = Searcher::new(store, &cache(Duration::from_secs(3600)));
    let cases: [(&str, &[&str]); 6] = [
        ("", &["utc first", "ny first", "normal", "utc last", "ny last"]),
        ("starts_at=9999-12-31T00:00:00Z", &["utc last", "ny last"]),
        ("ends_at=9999-12-31T23:59:59Z", &["utc first", "ny first", "normal", "utc last"]),
        ("starts_at=0001-01-01T00:00:00Z&ends_at=0001-01-01T23:59:59Z", &["utc first", "ny first"]),
        ("starts_at=9999-12-31T20:00:00-05:00", &["ny last"]),
        ("starts_at=2021-01-01T00:00:00Z&ends_at=2021-12-31T00:00:00Z", &["normal"]),
    ];
    for (query, expected) in cases {
        let range = parse_range(query).unwrap();
        assert_eq!(titles(&searcher.search(range).await.unwrap()), expected, "cold {query:?}");
        let started = std::time::Instant::now();
        assert_eq!(titles(&searcher.search(range).await.unwrap()), expected, "warm {query:?}");
        assert!(started.elapsed() < Duration::from_millis(10), "warm {query:?} took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn far_dates_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    far_dates_are_searched_right(sqlite(&dir)).await;
}

#[tokio::test]
async fn far_dates_on_clickhouse() {
    let Some(server) = ClickHouseServer::start() else { return };
    let settings = ClickHouseSettings { url: server.url(), database: "far".into(), ..Default::default() };
    let store = ClickHouseStore::connect(settings).await.unwrap();
    store.migrate().await.unwrap();
    far_dates_are_searched_right(Arc::new(store)).await;
}

/// An `api` process with an hour of TTL sees what another process wrote (a changed day and a new
/// day) through the store's change feed, within a few polls.
async fn api_follows_the_writes_of_another_process(ours: SharedStore, theirs: SharedStore) {
    theirs.write_plans(&[at(1, "before", "2021-07-01", "09:00:00", "10:00:00", 1)]).await.unwrap();
    let env = [
        ("PLANFEED__ROLE", "api"),
        ("PLANFEED__SEARCH__CACHE_TTL", "1h"),
        ("PLANFEED__SEARCH__CHANGE_POLL", "100ms"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let settings = Settings::load_with(Path::new("/nonexistent"), env.to_vec()).unwrap();
    let (service, base) = serve(settings, ours).await;
    let day_query = "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-01T23:59:59Z";
    let open_query = "/search?starts_at=2021-06-01T00:00:00Z";
    assert_eq!(titles(&get(&base, day_query, None).await.2), ["before"]);
    assert_eq!(titles(&get(&base, open_query, None).await.2), ["before"]);

    theirs
        .write_plans(&[
            at(1, "after", "2021-07-01", "09:00:00", "10:00:00", 2),
            at(2, "new day", "2021-07-05", "09:00:00", "10:00:00", 2),
        ])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut day, mut open) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline {
        day = titles(&get(&base, day_query, None).await.2);
        open = titles(&get(&base, open_query, None).await.2);
        if day == ["after"] && open == ["after", "new day"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((day, open), (vec!["after".to_string()], vec!["after".to_string(), "new day".to_string()]));
    assert!(service.searcher.counters.changed_days.load(Ordering::Relaxed) >= 2);
    assert!(service.searcher.counters.change_polls.load(Ordering::Relaxed) >= 2);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_process_follows_the_change_feed_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    api_follows_the_writes_of_another_process(sqlite(&dir), sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_process_follows_the_change_feed_on_clickhouse() {
    let Some(server) = ClickHouseServer::start() else { return };
    let open = || async {
        let settings =
            ClickHouseSettings { url: server.url(), database: "feed".into(), ..Default::default() };
        let store = ClickHouseStore::connect(settings).await.unwrap();
        store.migrate().await.unwrap();
        Arc::new(store) as SharedStore
    };
    let (ours, theirs) = (open().await, open().await);
    api_follows_the_writes_of_another_process(ours, theirs).await;
}

/// A wide cold range is read in several bounded runs (in day order, a few at a time) and comes out
/// whole and ordered; an answer larger than the body limit is not kept as a body, but its days are,
/// so asking again reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_answer_is_read_in_bounded_runs_and_not_kept_twice() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&daily_plans(300)).await.unwrap();
    let store = Counting::new(real, Duration::ZERO);
    // 1 MiB of cache: bodies above 16 KiB are not kept.
    let settings = SearchSettings {
        cache_bytes: 1 << 20,
        cache_ttl: Duration::from_secs(3600),
        change_poll: Duration::from_secs(1),
        store_deadline: Duration::from_millis(100),
    };
    let searcher = Searcher::new(store.clone(), &settings);
    searcher.set_run_bytes(16 * 1024);

    let body = searcher.search(Default::default()).await.unwrap();
    let all = titles(&body);
    assert_eq!(all.len(), 600);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "ordered by start across runs");
    assert!(body.len() > 16 * 1024, "{}", body.len());
    let queries = store.calls();
    // About 230 bytes per plan, two plans a day: 35 days per 16 KiB run.
    assert!((6..=12).contains(&queries), "{queries} run queries for 600 plans");

    assert_eq!(searcher.search(Default::default()).await.unwrap(), body);
    assert_eq!(store.calls(), queries, "the second ask is served from the cached days");
    assert_eq!(searcher.counters.body_hits.total(), 0, "too large to keep as a body");
}

/// Two plans a day (09:00 and 18:00, half an hour each) on `days` days from 2021-01-01.
fn daily_plans(days: u64) -> Vec<StoredPlan> {
    let mut plans = Vec::new();
    let mut d = day("2021-01-01");
    for i in 0..days {
        for (j, hour) in ["09", "18"].iter().enumerate() {
            let id = i * 2 + j as u64 + 1;
            let (from, to) = (format!("{hour}:00:00"), format!("{hour}:30:00"));
            plans.push(at(id, &format!("plan {id:04}"), &d.to_string(), &from, &to, 1));
        }
        d += chrono::Duration::days(1);
    }
    plans
}

/// Wide cold searches of different ranges share one bounded lane of store reads (not a few each),
/// and a cold day read meanwhile takes the short lane, also a day the wide searches are reading: it
/// costs one store read, not a place in the wide searches' queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_day_is_not_queued_behind_wide_reads_and_reads_in_flight_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&daily_plans(300)).await.unwrap();
    let delay = Duration::from_millis(300);
    let store = Counting::new(real, delay);
    let searcher = Arc::new(Searcher::new(store.clone(), &cache(Duration::from_secs(3600))));
    searcher.load_directory().await.unwrap();
    // About 10 days per run; anything over one run is a wide read.
    searcher.set_run_bytes(4 * 1024);
    searcher.set_short_read_bytes(4 * 1024);
    let wide = ["2021-01-01", "2021-03-01", "2021-05-01"].map(|from| {
        let searcher = searcher.clone();
        let range = parse_range(&format!("starts_at={from}T00:00:00Z&ends_at=2021-10-01T00:00:00Z")).unwrap();
        tokio::spawn(async move { searcher.search(range).await.map(|b| titles(&b).len()) })
    });
    let started = std::time::Instant::now();
    while store.reading.load(Ordering::SeqCst) < planfeed::search::WIDE_LANE {
        assert!(started.elapsed() < common::PATIENCE, "the wide reads never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = std::time::Instant::now();
    assert_eq!(titles(&searcher.search(whole("2021-10-20")).await.unwrap()).len(), 2);
    let day_took = asked.elapsed();
    // A day the wide searches are reading (or have queued): read again on the short lane rather
    // than waited for behind the wide runs.
    let asked = std::time::Instant::now();
    assert_eq!(titles(&searcher.search(whole("2021-08-20")).await.unwrap()).len(), 2);
    let joined_took = asked.elapsed();
    let mut counts = Vec::new();
    for search in wide {
        counts.push(search.await.unwrap().unwrap());
    }
    let wide_took = started.elapsed();
    assert_eq!(counts, [546, 428, 306]);
    let most = store.most_reading.load(Ordering::SeqCst);
    assert!(most <= planfeed::search::WIDE_LANE + planfeed::search::SHORT_LANE, "{most} store reads at once");
    assert!(day_took < delay * 3, "the cold day took {day_took:?} beside wide reads of {wide_took:?}");
    assert!(joined_took < delay * 3, "a day of the wide reads took {joined_took:?} (wide: {wide_took:?})");
    assert!(wide_took > delay * 5, "the wide reads took {wide_took:?}: not queued on one lane");
    eprintln!(
        "cold day {day_took:?} (one of the wide days: {joined_took:?}) beside three wide cold searches of \
         {wide_took:?}; {most} reads at once"
    );
}

/// How long [`a_hung_clickhouse_never_holds_a_search`] keeps the server frozen:
/// `PLANFEED_FREEZE_SECS` (default 3; the target is measured over 40 s, `make bench`).
fn freeze() -> Duration {
    let secs = std::env::var("PLANFEED_FREEZE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    Duration::from_secs(secs)
}

/// The p-th percentile (nearest rank) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// ClickHouse frozen (`SIGSTOP`) with every cached copy past its TTL: searches of the cached
/// ranges, about 5 a second for the whole freeze, answer the same bytes within the store deadline;
/// an uncached range answers a prompt 500 in the contract's shape; after `SIGCONT` a write made
/// meanwhile shows. Prints p50/p99/max of the searches during the freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_clickhouse_never_holds_a_search() {
    let Some(server) = ClickHouseServer::start() else { return };
    let settings = ClickHouseSettings { url: server.url(), database: "hung".into(), ..Default::default() };
    let store = Arc::new(ClickHouseStore::connect(settings).await.unwrap());
    store.migrate().await.unwrap();
    store
        .write_plans(&[
            at(1, "first", "2021-07-01", "09:00:00", "10:00:00", 1),
            at(2, "second", "2021-07-02", "20:00:00", "21:00:00", 1),
            at(3, "third", "2021-08-15", "20:00:00", "21:00:00", 1),
            at(4, "never cached", "2021-09-10", "20:00:00", "21:00:00", 1),
        ])
        .await
        .unwrap();
    let ttl = Duration::from_secs(1);
    let extra = [("PLANFEED__SEARCH__CACHE_TTL", "1s"), ("PLANFEED__SEARCH__STORE_DEADLINE", "100ms")];
    let (service, base) = serve(api_settings(&extra), store.clone()).await;
    let counters = service.searcher.counters.clone();
    let queries = [
        "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-01T23:59:59Z",
        "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-31T00:00:00Z",
        "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-08-31T00:00:00Z",
    ];
    let uncached = "/search?starts_at=2021-09-10T00:00:00Z&ends_at=2021-09-10T23:59:59Z";
    let mut warm = Vec::new();
    for q in queries {
        let (status, _, body) = get(&base, q, None).await;
        assert_eq!(status, 200, "{q}");
        warm.push(body);
    }
    // Every copy was loaded before this instant, so all of them have expired `ttl` after it.
    let warmed_at = tokio::time::Instant::now();
    assert_eq!(titles(&warm[0]), ["first"]);
    assert_eq!(titles(&warm[2]), ["first", "second", "third"]);

    server.pause();
    let frozen_at = std::time::Instant::now();
    tokio::time::sleep_until(warmed_at + ttl).await;
    // One client for the timed searches, so each figure is the search and not a client's set-up.
    let client = reqwest::Client::new();
    let mut took = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while frozen_at.elapsed() < freeze() {
        tick.tick().await;
        let i = took.len() % queries.len();
        let asked = std::time::Instant::now();
        let res = client.get(format!("{base}{}", queries[i])).send().await.unwrap();
        let (status, body) = (res.status().as_u16(), res.bytes().await.unwrap());
        took.push(asked.elapsed());
        assert_eq!((status, &body), (200, &warm[i]), "{}", queries[i]);
        // A safety net: a search held by the store would take the client's timeout (seconds).
        assert!(asked.elapsed() < Duration::from_secs(2), "{} took {:?}", queries[i], asked.elapsed());
    }
    let asked = std::time::Instant::now();
    let res = client.get(format!("{base}{uncached}")).send().await.unwrap();
    let (status, body) = (res.status().as_u16(), res.bytes().await.unwrap());
    let uncached_took = asked.elapsed();
    assert_eq!(status, 500);
    assert_eq!(error_of(&body).0, "internal_error");
    assert!(uncached_took < Duration::from_secs(2), "the uncached range took {uncached_took:?}");
    assert!(counters.deadlines_passed.load(Ordering::Relaxed) >= 1);
    assert!(counters.stale_served.load(Ordering::Relaxed) >= 1);
    let frozen_for = frozen_at.elapsed();

    took.sort();
    assert!(!took.is_empty(), "PLANFEED_FREEZE_SECS must exceed the 1 s TTL");
    let (p50, p99, max) = (percentile(&took, 50.0), percentile(&took, 99.0), took[took.len() - 1]);
    eprintln!(
        "ClickHouse frozen {:.1} s: {} searches of cached ranges, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         uncached range 500 in {:.1} ms",
        frozen_for.as_secs_f64(),
        took.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        uncached_took.as_secs_f64() * 1e3
    );
    if !cfg!(debug_assertions) {
        assert!(p99 <= Duration::from_millis(250), "target: p99 within 250 ms, got {p99:?}");
    }

    server.resume();
    store.write_plans(&[at(5, "after the thaw", "2021-07-01", "11:00:00", "12:00:00", 1)]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = get(&base, queries[0], None).await;
        if status == 200 && titles(&body) == ["first", "after the thaw"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the write after the thaw never showed: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = get(&base, uncached, None).await;
    assert_eq!((status, titles(&body)), (200, vec!["never cached".to_string()]));
    service.shutdown().await;
}

/// A live store slower than the deadline: a cold read is waited for (the store answers its pings),
/// and an expired copy is answered at the deadline while its reload goes on in the background and
/// shows in a later search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_live_store_is_waited_for_cold_and_reloaded_behind_a_stale_copy() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[at(1, "first", "2021-07-01", "09:00:00", "10:00:00", 1)]).await.unwrap();
    let store = Counting::new(real.clone(), Duration::from_millis(400));
    let ttl = Duration::from_secs(1);
    let searcher = Searcher::new(store.clone(), &cache(ttl));
    let deadline = Duration::from_millis(100);
    searcher.set_store_deadline(deadline);

    let cold = searcher.search(whole("2021-07-01")).await.unwrap();
    let loaded = tokio::time::Instant::now();
    assert_eq!(titles(&cold), ["first"]);
    assert_eq!(searcher.counters.deadlines_passed.load(Ordering::Relaxed), 0, "a live store is waited for");

    real.write_plans(&[at(2, "second", "2021-07-01", "11:00:00", "12:00:00", 1)]).await.unwrap();
    tokio::time::sleep_until(loaded + ttl).await;
    let stale = searcher.search(whole("2021-07-01")).await.unwrap();
    assert_eq!(stale, cold, "the expired copy, not the 400 ms read");
    assert!(searcher.counters.deadlines_passed.load(Ordering::Relaxed) >= 1);

    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = searcher.search(whole("2021-07-01")).await.unwrap();
        if titles(&body) == ["first", "second"] {
            break;
        }
        assert_eq!(body, cold, "either copy, nothing else");
        assert!(std::time::Instant::now() < until, "the background reload never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.calls() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_day_is_reloaded_once_while_searches_get_the_previous_copy() {
    let dir = tempfile::tempdir().unwrap();
    let real = sqlite(&dir);
    real.write_plans(&[
        at(1, "old", "2021-07-01", "09:00:00", "10:00:00", 1),
        at(2, "untouched", "2021-07-02", "09:00:00", "10:00:00", 1),
        at(3, "never searched", "2021-07-03", "09:00:00", "10:00:00", 1),
    ])
    .await
    .unwrap();
    // Each store read takes a second: long enough that every search below ends inside the reload.
    let store = Counting::new(real.clone(), Duration::from_secs(1));
    let mut settings = cache(Duration::from_secs(3600));
    settings.store_deadline = common::PATIENCE;
    let searcher = Arc::new(Searcher::new(store.clone(), &settings));
    assert_eq!(titles(&searcher.search(whole("2021-07-01")).await.unwrap()), ["old"]);
    assert_eq!(titles(&searcher.search(whole("2021-07-02")).await.unwrap()), ["untouched"]);
    let before = store.calls();
    // Day 3 is cached (read with day 1 or 2's run, or not at all) but nobody searched it.

    // The writer: write, then invalidate the days it touched.
    real.write_plans(&[
        at(1, "new", "2021-07-01", "09:00:00", "10:00:00", 2),
        at(3, "changed", "2021-07-03", "09:00:00", "10:00:00", 2),
    ])
    .await
    .unwrap();
    let writer = {
        let searcher = searcher.clone();
        tokio::spawn(async move { searcher.invalidate(&[day("2021-07-01"), day("2021-07-03")]).await })
    };
    // Wait (by event) until the reload is in the store, then search while it is.
    let waited = std::time::Instant::now();
    while store.calls() == before {
        assert!(waited.elapsed() < common::PATIENCE, "the invalidation never reloaded the day");
        tokio::task::yield_now().await;
    }
    let searches = (0..32).map(|_| {
        let searcher = searcher.clone();
        tokio::spawn(async move { searcher.search(whole("2021-07-01")).await.unwrap() })
    });
    for body in futures::future::join_all(searches).await {
        assert_eq!(titles(&body.unwrap()), ["old"], "the previous copy, while the day reloads");
    }
    assert!(!writer.is_finished(), "every search ended while the one reload was still reading");
    assert!(searcher.counters.previous_served.load(Ordering::Relaxed) >= 32);
    writer.await.unwrap();
    assert_eq!(store.calls(), before + 1, "one store read for the changed day, whatever the searches");
    assert_eq!(searcher.counters.reloaded_days.load(Ordering::Relaxed), 1, "only the searched day");

    // Read-your-writes: once the invalidation returned, the write shows, with no store read.
    assert_eq!(titles(&searcher.search(whole("2021-07-01")).await.unwrap()), ["new"]);
    assert_eq!(titles(&searcher.search(whole("2021-07-02")).await.unwrap()), ["untouched"]);
    assert_eq!(store.calls(), before + 1);
    // The day nobody searched is read by the next search that wants it, and shows the write too.
    assert_eq!(titles(&searcher.search(whole("2021-07-03")).await.unwrap()), ["changed"]);
}
