//! Search on ClickHouse (`make bench`): a throwaway server filled with 300,000 plans over 5 years
//! (as `examples/gen_store.rs` generates them) plus plans on the first and last valid days (UTC and
//! New York), then, side by side:
//! - for 1 day, 1 month, 1 year and the open range: the direct `SELECT … FROM plans FINAL` of the
//!   same days, the cold search through `Searcher` (a fresh cache whose day directory is loaded, as a
//!   started process has it), the warm search (same range again) and a warm neighbour (the range
//!   moved by one second: assembled from cached days, not a cached body);
//! - far dates: warm searches at years 1 and 9999, with the process RSS before and after;
//! - a fixed-rate replay of random ranges on a fresh cache: every search's latency from its
//!   scheduled start, p50/p99/max, and the searches over 100 ms, overall and by range width; the
//!   slow searches by cause (their own store reads, another search's read they joined, CPU) and
//!   where the run queries spent their time (waiting for a lane, the store, rendering).
//!
//! Needs `clickhouse-server` (scripts/install-clickhouse.sh); starts its own on free loopback ports.

#[path = "../tests/common/clickhouse.rs"]
mod clickhouse_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use planfeed::config::SearchSettings;
use planfeed::domain::{Plan, PlanKey, StoredPlan, TimeRange};
use planfeed::feed::random_stored_plan;
use planfeed::search::Searcher;
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::SharedStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Plans generated; `PLANFEED_BENCH_PLANS` overrides it (a quick check of the bench itself).
const PLANS: u64 = 300_000;
const YEARS: i64 = 5;
const BATCH: usize = 10_000;
const REPLAY_SEARCHES: usize = 1000;
const REPLAY_RATE: f64 = 100.0;

fn origin() -> DateTime<Utc> {
    planfeed::feed::stored_plan_origin().and_utc()
}

/// Plans on the first and last valid days, in UTC and in New York.
fn far_plans() -> Vec<StoredPlan> {
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let local = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
    [("0001-01-01T10:00:00", "0001-01-01T11:00:00"), ("9999-12-31T20:00:00", "9999-12-31T23:00:00")]
        .iter()
        .enumerate()
        .flat_map(|(i, (s, e))| {
            [(chrono_tz::UTC, 0u64), (ny, 1u64)].map(|(tz, z)| {
                let p = Plan {
                    key: PlanKey::new("far", 1, i as u64 * 2 + z),
                    title: format!("far plan {i}/{z}").into(),
                    online: true,
                    organizer_company_id: None,
                    start: local(s),
                    end: local(e),
                    sell_from: None,
                    sell_to: None,
                    sold_out: false,
                    zones: vec![],
                };
                StoredPlan::new(p, tz, true, 1)
            })
        })
        .collect()
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> TimeRange {
    TimeRange { starts_at: from, ends_at: to }
}

/// The direct read of the days of `r` (bounded by the data's first and last day), all rows
/// transferred as TSV: what a search must not cost much more than.
async fn direct(
    client: &clickhouse::Client,
    r: TimeRange,
    lo: NaiveDate,
    hi: NaiveDate,
) -> (Duration, usize) {
    let first = r.starts_at.map_or(lo, |t| t.date_naive());
    let last = r.ends_at.map_or(hi, |t| t.date_naive());
    let day = |d: NaiveDate| planfeed::store::day_number(d);
    let clamp = |d: NaiveDate| {
        d.clamp(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(), NaiveDate::from_ymd_opt(2105, 12, 31).unwrap())
    };
    let sql = format!(
        "SELECT id, title, start_local_us, end_local_us, start_us, end_us, min_price, max_price \
         FROM plans FINAL WHERE event_day BETWEEN {} AND {} AND event_date BETWEEN '{}' AND '{}' \
         AND ever_online = 1 AND superseded = 0 ORDER BY start_us, id",
        day(first),
        day(last),
        clamp(first),
        clamp(last)
    );
    let started = Instant::now();
    let mut cursor = client.query(&sql).fetch_bytes("TSV").unwrap();
    let bytes = cursor.collect().await.unwrap();
    (started.elapsed(), bytes.iter().filter(|b| **b == b'\n').count())
}

fn settings() -> SearchSettings {
    SearchSettings {
        cache_bytes: 512 << 20,
        cache_ttl: Duration::from_secs(600),
        change_poll: Duration::from_secs(1),
        store_deadline: Duration::from_millis(100),
    }
}

/// A searcher as a started process has it: day directory loaded, no day cached.
async fn fresh(store: &SharedStore) -> Searcher {
    let searcher = Searcher::new(store.clone(), &settings());
    if let Some(bytes) = std::env::var("PLANFEED_BENCH_RUN_BYTES").ok().and_then(|v| v.parse().ok()) {
        searcher.set_run_bytes(bytes);
    }
    if let Some(bytes) = std::env::var("PLANFEED_BENCH_SHORT_BYTES").ok().and_then(|v| v.parse().ok()) {
        searcher.set_short_read_bytes(bytes);
    }
    searcher.load_directory().await.unwrap();
    searcher
}

fn count_events(body: &[u8]) -> usize {
    memchr::memmem::find_iter(body, br#"{"id":"#).count()
}

#[tokio::main]
async fn main() {
    let Some(server) = clickhouse_server::ClickHouseServer::start() else {
        eprintln!("search_clickhouse bench skipped: clickhouse-server is not installed");
        return;
    };
    let ch = ClickHouseSettings { url: server.url(), database: "bench_search".into(), ..Default::default() };
    let store = ClickHouseStore::connect(ch).await.unwrap();
    store.migrate().await.unwrap();
    let store: SharedStore = Arc::new(store);
    let client = clickhouse::Client::default()
        .with_url(server.url())
        .with_database("bench_search")
        .with_validation(false)
        .with_setting("wait_end_of_query", "1");

    let plans: u64 = std::env::var("PLANFEED_BENCH_PLANS").ok().and_then(|v| v.parse().ok()).unwrap_or(PLANS);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(plans);
    let span_minutes = YEARS * 365 * 24 * 60;
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..plans {
        batch.push(random_stored_plan(&mut rng, i, span_minutes));
        if batch.len() == BATCH || i + 1 == plans {
            store.write_plans(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.write_plans(&far_plans()).await.unwrap();
    let _ = client.query("OPTIMIZE TABLE plans FINAL").execute().await;
    let directory_started = Instant::now();
    let directory = store.day_directory().await.unwrap();
    let directory_time = directory_started.elapsed();
    let (lo, hi) = (directory[0].day, directory[directory.len() - 1].day);
    println!(
        "search on clickhouse: {plans} plans over {YEARS} years + 4 far plans written in {:.1} s; \
         day directory of {} days read in {:.1} ms; data under {}",
        started.elapsed().as_secs_f64(),
        directory.len(),
        ms(directory_time),
        clickhouse_server::ClickHouseServer::data_parent_label()
    );
    println!("(figures taken on a shared machine: other builds may have run meanwhile)");

    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let cases = [
        ("1 day", range(Some(t("2023-03-15T00:00:00Z")), Some(t("2023-03-15T23:59:59Z")))),
        ("1 month", range(Some(t("2023-03-01T00:00:00Z")), Some(t("2023-03-31T23:59:59Z")))),
        ("1 year", range(Some(t("2023-01-01T00:00:00Z")), Some(t("2023-12-31T23:59:59Z")))),
        ("open", range(None, None)),
    ];
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "range", "rows", "direct ms", "cold ms", "cold/dir", "warm ms", "neighbour", "body MB"
    );
    for (name, r) in cases {
        let mut directs = Vec::new();
        let mut colds = Vec::new();
        let mut rows = 0;
        let mut body = bytes::Bytes::new();
        let mut warm = Duration::ZERO;
        let mut neighbour = Duration::ZERO;
        for _ in 0..3 {
            let (d, n) = direct(&client, r, lo, hi).await;
            directs.push(d);
            rows = n;
            let searcher = fresh(&store).await;
            let started = Instant::now();
            body = searcher.search(r).await.unwrap();
            colds.push(started.elapsed());
            let started = Instant::now();
            let again = searcher.search(r).await.unwrap();
            warm = started.elapsed();
            assert_eq!(again, body);
            let moved = range(r.starts_at.map(|s| s + chrono::Duration::seconds(1)), r.ends_at);
            let started = Instant::now();
            searcher.search(moved).await.unwrap();
            neighbour = started.elapsed();
        }
        directs.sort();
        colds.sort();
        let (d, c) = (directs[1], colds[1]);
        let first = r.starts_at.map_or(lo, |t| t.date_naive());
        let last = r.ends_at.map_or(hi, |t| t.date_naive());
        let inside = store
            .plans_by_day(first, last)
            .await
            .unwrap()
            .iter()
            .filter(|e| r.contains(e.start_utc, e.end_utc))
            .count();
        assert_eq!(count_events(&body), inside, "{name}: the search returns the plans inside the range");
        println!(
            "{:<8} {:>8} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>10.2} {:>10.1}",
            name,
            rows,
            ms(d),
            ms(c),
            c.as_secs_f64() / d.as_secs_f64(),
            ms(warm),
            ms(neighbour),
            body.len() as f64 / 1e6
        );
    }
    println!(
        "(median of 3; cold = fresh cache with its directory loaded; neighbour = starts_at + 1 s, warm days)"
    );

    // Far dates: warm searches and RSS.
    let searcher = fresh(&store).await;
    let far = [
        ("year 1", range(Some(t("0001-01-01T00:00:00Z")), Some(t("0001-01-02T00:00:00Z")))),
        ("year 9999", range(Some(t("9999-12-31T00:00:00Z")), None)),
        ("to 9999", range(Some(t("9999-12-01T00:00:00Z")), Some(t("9999-12-31T23:59:59Z")))),
    ];
    for (_, r) in far {
        searcher.search(r).await.unwrap();
    }
    let rss_before = rss_mb();
    for (name, r) in far {
        let mut samples = Vec::with_capacity(200);
        for i in 0..200 {
            // Two neighbouring ranges: one a cached body, the other assembled from cached days.
            let r = range(r.starts_at.map(|s| s + chrono::Duration::microseconds(i % 2)), r.ends_at);
            let started = Instant::now();
            let body = searcher.search(r).await.unwrap();
            samples.push(started.elapsed());
            assert!(count_events(&body) >= 1, "{name}");
        }
        samples.sort();
        println!(
            "far dates {name:<9}: warm p50 {:.3} ms, max {:.3} ms ({} plans)",
            ms(percentile(&samples, 0.5)),
            ms(samples[samples.len() - 1]),
            count_events(&searcher.search(r).await.unwrap())
        );
    }
    println!("far dates RSS: {:.1} MB before 600 warm searches, {:.1} MB after", rss_before, rss_mb());

    // A fixed-rate replay of random ranges on a fresh cache.
    let searcher = Arc::new(fresh(&store).await);
    let mut rng = StdRng::seed_from_u64(42);
    let total_days = YEARS * 365;
    let ranges: Vec<(TimeRange, i64)> = (0..REPLAY_SEARCHES)
        .map(|_| {
            let start = origin() + chrono::Duration::minutes(rng.random_range(0..total_days * 1440));
            let days = match rng.random_range(0..100) {
                0..50 => 1,
                50..75 => 7,
                75..90 => 31,
                90..97 => 365,
                _ => -1,
            };
            let r = if days < 0 {
                range(Some(start), None)
            } else {
                range(Some(start), Some(start + chrono::Duration::days(days)))
            };
            (r, days)
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / REPLAY_RATE);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(ranges.len());
    for (i, (r, days)) in ranges.into_iter().enumerate() {
        let due = began + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let searcher = searcher.clone();
        tasks.push(tokio::spawn(async move {
            searcher.search(r).await.unwrap();
            (due.elapsed(), days, r)
        }));
    }
    let timed: Vec<(Duration, i64, TimeRange)> =
        futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let results: Vec<(Duration, i64)> = timed.iter().map(|(d, days, _)| (*d, *days)).collect();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let slow: Vec<&(Duration, i64)> =
        results.iter().filter(|(d, _)| *d > Duration::from_millis(100)).collect();
    let slow_narrow = slow.iter().filter(|(_, days)| (0..=31).contains(days)).count();
    println!(
        "replay: {} random ranges at {:.0}/s (50% 1 day, 25% 1 week, 15% 1 month, 7% 1 year, 3% open): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {} over 100 ms ({} of them a month or less)",
        results.len(),
        REPLAY_RATE,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
        slow.len(),
        slow_narrow
    );
    println!(
        "replay store queries: {} runs for {} day misses",
        searcher.counters.run_queries.load(std::sync::atomic::Ordering::Relaxed),
        searcher.counters.misses.load(std::sync::atomic::Ordering::Relaxed)
    );
    print_by_width(&results);
    print_causes(&searcher.counters);
    print_wide_against_direct(&client, &timed, lo, hi).await;
}

/// The replay's searches over 100 ms wider than a month (first touches of cold days) beside the
/// direct read of the same range, run alone afterwards (median of 3): the target allows them 2×.
async fn print_wide_against_direct(
    client: &clickhouse::Client,
    timed: &[(Duration, i64, TimeRange)],
    lo: NaiveDate,
    hi: NaiveDate,
) {
    let mut ratios = Vec::new();
    for (took, _, r) in
        timed.iter().filter(|(d, days, _)| *d > Duration::from_millis(100) && !(0..=31).contains(days))
    {
        let mut directs = Vec::new();
        for _ in 0..3 {
            directs.push(direct(client, *r, lo, hi).await.0);
        }
        directs.sort();
        ratios.push((took.as_secs_f64() / directs[1].as_secs_f64(), *took, directs[1]));
    }
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    let over = ratios.iter().filter(|(x, _, _)| *x > 2.0).count();
    let listed: Vec<String> =
        ratios.iter().map(|(x, t, d)| format!("{:.0}/{:.0} ms {x:.2}x", ms(*t), ms(*d))).collect();
    println!(
        "replay wide searches over 100 ms against the direct read of their range: {} of them, {over} over 2x \
         (target: none): {}",
        ratios.len(),
        listed.join(", ")
    );
}

/// p50/p99/max and the count over 100 ms of the replay's searches, by range width.
fn print_by_width(results: &[(Duration, i64)]) {
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "width", "count", "p50 ms", "p99 ms", "max ms", ">100 ms"
    );
    for (name, days) in [("1 day", 1), ("1 week", 7), ("1 month", 31), ("1 year", 365), ("open", -1)] {
        let mut of: Vec<Duration> = results.iter().filter(|(_, d)| *d == days).map(|(l, _)| *l).collect();
        if of.is_empty() {
            continue;
        }
        of.sort();
        let over = of.iter().filter(|l| **l > Duration::from_millis(100)).count();
        println!(
            "{:<8} {:>6} {:>9.2} {:>9.2} {:>9.1} {:>9}",
            name,
            of.len(),
            ms(percentile(&of, 0.5)),
            ms(percentile(&of, 0.99)),
            ms(of[of.len() - 1]),
            over
        );
    }
}

/// The searches over 100 ms by what took most of their time, and the run queries' time split.
fn print_causes(c: &planfeed::search::SearchCounters) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "replay slow searches by cause: {} own store reads, {} joined another search's read, {} CPU/render",
        get(&c.slow_by_store),
        get(&c.slow_by_shared),
        get(&c.slow_by_cpu)
    );
    let runs = get(&c.run_queries).max(1) as f64;
    println!(
        "replay run queries: {:.1} ms waiting for a lane, {:.1} ms in the store, {:.1} ms rendering (mean per run)",
        get(&c.run_queued_us) as f64 / runs / 1e3,
        get(&c.run_store_us) as f64 / runs / 1e3,
        get(&c.run_render_us) as f64 / runs / 1e3
    );
}
