//! Answers searches from the store through a cache of per-day results.
//!
//! A plan lives on the day bucket of its start instant (UTC date). Since a matching plan starts
//! inside the searched range, a search reads only the buckets from `date(starts_at)` to
//! `date(ends_at)`. Which of those days hold plans at all comes from the *day directory*, an ordered
//! map of the non-empty event days (with their plan counts and sizes) loaded from the store once and
//! kept current by invalidations: a search costs the days that hold plans plus the plans it returns,
//! never the calendar days of its range (a plan in year 9999 costs what any other plan costs).
//!
//! Each bucket keeps every plan's `EventSummary` JSON rendered once, joined in answer order, so an
//! answer is a concatenation of ready-made bytes (a day wholly inside the range is one copy). The
//! days of a range missing from the cache are read with one store query per run of consecutive
//! missing days (bounded in bytes, a few in flight at once), and the search keeps every bucket it
//! uses until its answer is built, so a range never expires while it is being assembled. The
//! finished body of a range is cached too (keyed by the exact instants) unless it is large, so a hot
//! query costs one cache lookup however many days it spans.
//!
//! Freshness: the delivery layer announces the days it wrote ([`crate::delivery::Events`]) and the
//! service hands them to [`Searcher::invalidate`] (the next search reloads them, and every cached
//! body is dropped); processes that do not write poll the store's change feed
//! ([`Searcher::spawn_change_feed`]) and announce exactly the days changed since their last poll as
//! the same event, which the cache follows the same way. Entries older than the TTL are reloaded
//! too, as a safety net. A day used in the second half of its TTL is reloaded in the background
//! while the current copy is served. When the store fails, the last loaded copy of a day is served
//! instead, and for a short while ([`STORE_DOWN_BACKOFF`]) cached days stop asking it at all: a
//! down store costs one failing call per second, not one per request.
//!
//! No search waits on a hung store: every store read runs in a task of its own, and a search waits
//! for it only until its store deadline (`search.store_deadline`). Past it, the last copy of what it
//! needs (day directory, days) is served, the read goes on in the background, and the store is taken
//! as down for [`STORE_DOWN_BACKOFF`] as if it had failed. A search with nothing cached goes on
//! waiting only while the store answers a ping within the deadline (a long read of a healthy store),
//! and fails as unavailable as soon as a ping goes unanswered.
//!
//! The cache is made of parts, each owning its state (private fields) and the code that changes
//! it, one per file:
//! - `day` — one day's rendered plans (`DayEntry`) and the flags that say how searches may
//!   use the copy (fresh, changed, being reloaded);
//! - `days` — the day cache: how the days of a search are answered, the reads that fill it, the
//!   reloads an invalidation asks for;
//! - `runs` — reads of runs of missing days from the store, single flight;
//! - `lane` — the read lanes those reads wait on (short and wide, earliest deadline first);
//! - `directory` — the day directory;
//! - `health` — store deadlines, the liveness ping and the backoff after a failure;
//! - `freshness` — the TTL and the invalidation epoch;
//! - `body` — the answer type, a cached body's representations, the assembly of a body;
//! - `bodies` — the cache of finished bodies;
//! - `changes` — the store's change feed;
//! - `render` — `EventSummary` JSON; `encoding` — the answer's HTTP representations (ETags, gzip);
//! - `counters` — the outcome counters.
//!
//! This file holds the public [`Searcher`], which owns the parts, and a search's flow through them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::NaiveDate;
use futures::future::FutureExt;
use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod bodies;
mod body;
mod changes;
mod counters;
mod day;
mod days;
mod directory;
pub mod encoding;
mod freshness;
mod health;
mod lane;
mod render;
mod runs;

pub use body::{Answer, Content};
pub use counters::SearchCounters;
pub use health::STORE_DOWN_BACKOFF;
pub use lane::{RUNS_IN_FLIGHT, SHORT_LANE, SHORT_READ_BYTES, WIDE_LANE};
pub use render::render_event;
pub use runs::RUN_BYTES;

use bodies::Bodies;
use body::{BodyBuilder, Built, EMPTY};
use changes::ChangeFeed;
use days::{DayCache, Part};
use directory::Directory;
use freshness::Freshness;
use health::StoreHealth;

use crate::config::SearchSettings;
use crate::cpu::answers;
use crate::domain::TimeRange;
use crate::store::{SharedStore, StoreError};

/// A search slower than this is counted by its main cause ([`SearchCounters::slow_by_store`] …).
pub const SLOW_SEARCH: Duration = Duration::from_millis(100);

/// The search cache. Cheap to share behind an `Arc`; background reads hold the parts they fill.
pub struct Searcher {
    days: Arc<DayCache>,
    directory: Arc<Directory>,
    bodies: Bodies,
    health: Arc<StoreHealth>,
    fresh: Arc<Freshness>,
    changes: ChangeFeed,
    pub counters: Arc<SearchCounters>,
}

impl Searcher {
    pub fn new(store: SharedStore, settings: &SearchSettings) -> Self {
        let counters = Arc::new(SearchCounters::default());
        let health = Arc::new(StoreHealth::new(store.clone(), settings.store_deadline, counters.clone()));
        let fresh = Arc::new(Freshness::new(settings.cache_ttl));
        let directory =
            Arc::new(Directory::new(store.clone(), health.clone(), fresh.clone(), counters.clone()));
        let days = Arc::new(DayCache::new(
            settings.cache_bytes,
            store.clone(),
            directory.clone(),
            health.clone(),
            fresh.clone(),
            counters.clone(),
        ));
        Self {
            days,
            changes: ChangeFeed::new(store, directory.clone(), counters.clone()),
            directory,
            bodies: Bodies::new(settings.cache_bytes, counters.clone()),
            health,
            fresh,
            counters,
        }
    }

    /// Bounds the estimated bytes of one run query (default [`RUN_BYTES`]); small values let tests
    /// and benches exercise the splitting of wide ranges.
    pub fn set_run_bytes(&self, bytes: u64) {
        self.days.set_run_bytes(bytes);
    }

    /// Bounds the estimated bytes of a read on the short lane (default [`SHORT_READ_BYTES`]), for
    /// tests and benches with small data.
    pub fn set_short_read_bytes(&self, bytes: u64) {
        self.days.set_short_read_bytes(bytes);
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.fresh.set_ttl(ttl);
    }

    pub fn set_store_deadline(&self, deadline: Duration) {
        self.health.set_deadline(deadline);
    }

    /// Called by the batch writer after a successful flush with the days it touched (and by the
    /// change feed with the days another process changed): the next search reads them again, and
    /// the directory lists them until a read shows them empty. Days searches use are reloaded at
    /// once (searches serve their previous copies meanwhile); returns once they are, or at the
    /// store deadline.
    pub async fn invalidate(&self, days: &[NaiveDate]) {
        self.fresh.invalidate();
        let used = self.days.invalidate(days).await;
        self.directory.note_changed(days);
        if !used.is_empty() {
            self.days.reload(used).await;
        }
    }

    /// The full response body of `GET /search` for `range`.
    pub async fn search(&self, range: TimeRange) -> Result<Bytes, StoreError> {
        self.answer(range, Instant::now()).await.map(Answer::into_bytes)
    }

    /// The answer of `GET /search` for `range` asked at `asked` (the caller's clock reading, so a
    /// warm answer costs no other), with its content hash.
    pub async fn answer(&self, range: TimeRange, asked: Instant) -> Result<Answer, StoreError> {
        let mut waits = Waits::default();
        let answer = self.search_timed(range, asked, &mut waits).await;
        if !waits.warm {
            waits.count_if_slow(asked.elapsed(), &self.counters);
        }
        answer
    }

    /// The compressed form of a cached `answer`, made by `compress` on first use and kept beside its
    /// body (same byte budget), with the bytes this call compressed (0 when it was made already:
    /// what the caller is charged); `None` for an answer that is not cached (too large, or stale),
    /// which would cost a compression per request.
    pub async fn compressed(&self, answer: &Answer, compress: fn(&[u8]) -> Bytes) -> Option<(Bytes, usize)> {
        self.bodies.compressed(answer, compress).await
    }

    /// Reads the day directory from the store unless a fresh one is loaded (start-up warming).
    pub async fn load_directory(&self) -> Result<(), StoreError> {
        self.directory.load(None).await.map(|_| ())
    }

    /// Follows the store's change feed: every `interval`, reads the days written since the last
    /// poll and invalidates exactly those (for processes whose own writer does not: role `api`).
    /// A poll costs one small query however much is cached; a write becomes visible here within
    /// about one interval plus one day reload. Ends when `shutdown` turns true, or at once when the
    /// store keeps no change feed (the TTL alone then bounds staleness).
    pub fn spawn_change_feed(
        &self,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
        written: crate::delivery::Events,
    ) -> JoinHandle<()> {
        tokio::spawn(self.changes.clone().follow(interval, shutdown, written))
    }

    /// For `/ready`: true once the day directory was read from the store at least once.
    pub fn warmed(&self) -> bool {
        self.directory.warmed()
    }

    /// The number of non-empty days the directory lists (for tests and metrics).
    pub fn directory_len(&self) -> usize {
        self.directory.len()
    }
}

/// Where one search waited: on store reads it started (directory included), on reads another
/// search started; the rest of its time is CPU (copying, the runtime).
#[derive(Default)]
struct Waits {
    own: Duration,
    shared: Duration,
    /// Answered with a cached body: nothing waited for, and not timed (the request's latency
    /// histogram has it), which spares the warm path a clock read.
    warm: bool,
}

impl Waits {
    /// `own`: `Some(true)` for a part this search reads, `Some(false)` for one it joined.
    fn add(&mut self, own: Option<bool>, waited: Duration) {
        match own {
            Some(true) => self.own += waited,
            Some(false) => self.shared += waited,
            None => {}
        }
    }

    /// Counts a search slower than [`SLOW_SEARCH`] under the cause that took most of its time.
    fn count_if_slow(&self, took: Duration, counters: &SearchCounters) {
        if took < SLOW_SEARCH {
            return;
        }
        let cpu = took.saturating_sub(self.own + self.shared);
        let counter = if self.own >= self.shared && self.own >= cpu {
            &counters.slow_by_store
        } else if self.shared >= cpu {
            &counters.slow_by_shared
        } else {
            &counters.slow_by_cpu
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            took_ms = took.as_millis() as u64,
            own_reads_ms = self.own.as_millis() as u64,
            shared_reads_ms = self.shared.as_millis() as u64,
            cpu_ms = cpu.as_millis() as u64,
            "slow search"
        );
    }
}

/// A search's flow: the finished body if cached, else the directory's days of the range, their
/// parts (cached, or read), the body assembled from them, kept when small and fresh.
impl Searcher {
    async fn search_timed(
        &self,
        range: TimeRange,
        began: Instant,
        waits: &mut Waits,
    ) -> Result<Answer, StoreError> {
        let starts = range.starts_at.map_or(i64::MIN, |t| t.timestamp_micros());
        let ends = range.ends_at.map_or(i64::MAX, |t| t.timestamp_micros());
        let key = (starts, ends);
        // One clock read for the whole warm path: the deadline and the body's freshness use `began`.
        let deadline = began + self.health.deadline();
        let epoch = self.fresh.epoch();
        if let Some(answer) = self.bodies.get(key, epoch, began, &self.health).await {
            waits.warm = true;
            return Ok(answer);
        }
        let first = range.starts_at.map(|t| t.date_naive());
        let last = range.ends_at.map(|t| t.date_naive());
        if first.zip(last).is_some_and(|(f, l)| f > l) {
            return Ok(Answer::uncached(Bytes::from_static(EMPTY)));
        }
        let asked = Instant::now();
        let (days, directory_at, mut stale) = self.directory.days_in(first, last, deadline).await?;
        waits.own += asked.elapsed();
        if days.is_empty() {
            return Ok(Answer::uncached(Bytes::from_static(EMPTY)));
        }
        // Sized from the directory (exact for every day read before): one allocation for the body.
        let estimate = days.iter().map(|(_, i)| i.bytes() as usize + 1).sum::<usize>();
        let out = BodyBuilder::new(estimate, self.bodies.limit());
        let in_range = move |d: &NaiveDate| first.is_none_or(|f| *d >= f) && last.is_none_or(|l| *d <= l);
        let parts = self.days.parts(&days).await;
        let range = (starts, ends, in_range);
        let (out, parts_stale, parts_oldest) = self.write_parts(parts, range, deadline, out, waits).await?;
        stale |= parts_stale;
        let oldest = directory_at.min(parts_oldest);
        let body = match answers::run_sized(estimate, move || out.finish()).await {
            Built::Whole(body) => body,
            // Too large to cache: streamed from the days' own bytes.
            Built::Streamed(answer) => return Ok(answer),
        };
        let fresh_until = oldest + self.fresh.ttl() / 2;
        if stale || body.len() > self.bodies.limit() || Instant::now() >= fresh_until {
            return Ok(Answer::uncached(body));
        }
        Ok(self.bodies.keep(key, body, epoch, fresh_until).await)
    }

    /// Writes the plans of `parts` inside `[starts, ends]` to `out`; gives it back with whether a
    /// stale copy stood in, and when the oldest day used was loaded. Parts resolve in day order, a
    /// few runs ahead; each is written out and dropped at once, so a wide answer holds the cache,
    /// the runs in flight and the body, never a second copy. A part of many bytes is written on an
    /// answer thread ([`answers`]), not on the worker.
    async fn write_parts(
        &self,
        parts: Vec<Part>,
        (starts, ends, in_range): (i64, i64, impl Fn(&NaiveDate) -> bool + Copy),
        deadline: Instant,
        mut out: BodyBuilder,
        waits: &mut Waits,
    ) -> Result<(BodyBuilder, bool, Instant), StoreError> {
        let (mut stale, mut oldest) = (false, Instant::now());
        let mut resolved = stream::iter(parts)
            .map(|part| {
                let own = part.started_by_this_search();
                self.days.resolve(part, in_range, deadline).map(move |r| (own, r))
            })
            .buffered(RUNS_IN_FLIGHT);
        loop {
            let waited = Instant::now();
            let Some((own, result)) = resolved.next().await else { break };
            waits.add(own, waited.elapsed());
            let (entries, part_stale) = result?;
            stale |= part_stale;
            oldest = entries.iter().map(|e| e.loaded_at()).fold(oldest, Instant::min);
            let bytes: usize = entries.iter().map(|e| e.joined().len()).sum();
            let copy = move || {
                entries.iter().for_each(|entry| out.push(entry, starts, ends));
                out
            };
            out = answers::run_sized(bytes, copy).await;
        }
        Ok((out, stale, oldest))
    }
}

/// The cache's outcome counters, copied into `/metrics` when it is scraped.
impl crate::metrics::Collect for Searcher {
    fn collect(&self) {
        let c = &self.counters;
        let abs = |name: &'static str, v: u64| metrics::counter!(name).absolute(v);
        abs("planfeed_search_cache_hits_total", c.hits.load(Ordering::Relaxed));
        abs("planfeed_search_body_hits_total", c.body_hits.total());
        abs("planfeed_search_cache_misses_total", c.misses.load(Ordering::Relaxed));
        abs("planfeed_search_stale_served_total", c.stale_served.load(Ordering::Relaxed));
        abs("planfeed_search_store_errors_total", c.store_errors.load(Ordering::Relaxed));
        abs("planfeed_search_store_deadlines_total", c.deadlines_passed.load(Ordering::Relaxed));
        abs("planfeed_search_previous_served_total", c.previous_served.load(Ordering::Relaxed));
        abs("planfeed_search_reloaded_days_total", c.reloaded_days.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::day::by_day;
    use super::render::{push_date, push_time};
    use super::*;
    use crate::domain::EventRow;
    use bytes::BytesMut;
    use chrono::{DateTime, NaiveDateTime, Utc};
    use day::DayEntry;

    fn row(id: u128, title: &str, start: &str, end: &str, price: Option<&str>) -> EventRow {
        let local = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
        EventRow {
            id: uuid::Uuid::from_u128(id),
            title: title.into(),
            start_local: local(start),
            end_local: local(end),
            start_utc: local(start).and_utc(),
            end_utc: local(end).and_utc(),
            min_price: price.map(|p| p.parse().unwrap()),
            max_price: price.map(|p| p.parse().unwrap()),
        }
    }

    fn micros(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc).timestamp_micros()
    }

    #[test]
    fn fast_dates_and_times_match_chrono() {
        let cases =
            ["0001-01-01T00:00:00", "0999-02-03T04:05:06", "2021-12-31T23:59:59", "9999-12-31T12:00:00"];
        for c in cases {
            let t = NaiveDateTime::parse_from_str(c, "%Y-%m-%dT%H:%M:%S").unwrap();
            let mut out = String::new();
            push_date(&mut out, t.date());
            out.push(' ');
            push_time(&mut out, t.time() + chrono::Duration::milliseconds(250));
            assert_eq!(out, t.format("%Y-%m-%d %H:%M:%S").to_string());
        }
        let far = NaiveDate::from_ymd_opt(10000, 1, 1).unwrap();
        let mut out = String::new();
        push_date(&mut out, far);
        assert_eq!(out, far.format("%Y-%m-%d").to_string());
    }

    #[test]
    fn events_render_as_the_contract_says() {
        let json = render_event(&row(
            1,
            "a \"quoted\"\n title ñ",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59",
            Some("20.00"),
        ));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["title"], "a \"quoted\"\n title ñ");
        assert_eq!(
            (v["start_date"].as_str(), v["start_time"].as_str()),
            (Some("0001-01-01"), Some("00:00:00"))
        );
        assert_eq!((v["end_date"].as_str(), v["end_time"].as_str()), (Some("9999-12-31"), Some("23:59:59")));
        assert!(json.contains(r#""min_price":20.00,"max_price":20.00}"#), "{json}");
        let none = render_event(&row(2, "", "2021-01-01T00:00:00", "2021-01-01T01:00:00", None));
        assert!(none.ends_with(r#""min_price":null,"max_price":null}"#), "{none}");
    }

    #[test]
    fn a_day_inside_the_range_is_copied_whole_and_a_cut_day_plan_by_plan() {
        let rows = [
            row(1, "a", "2021-07-01T09:00:00", "2021-07-01T10:00:00", Some("1")),
            row(2, "b", "2021-07-01T12:00:00", "2021-07-02T01:00:00", Some("2")),
            row(3, "c", "2021-07-01T20:00:00", "2021-07-01T21:00:00", Some("3")),
        ];
        let entry = DayEntry::new(&rows);
        let render = |starts: i64, ends: i64| {
            let mut out = BytesMut::new();
            let mut first = true;
            entry.write_matching(starts, ends, &mut out, &mut first);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let all: Vec<String> = rows.iter().map(render_event).collect();
        assert_eq!(render(i64::MIN, i64::MAX), all.join(","));
        assert_eq!(render(micros("2021-07-01T09:00:01Z"), i64::MAX), all[1..].join(","));
        assert_eq!(
            render(i64::MIN, micros("2021-07-01T23:00:00Z")),
            [all[0].clone(), all[2].clone()].join(",")
        );
        assert_eq!(render(micros("2021-07-02T00:00:00Z"), i64::MAX), "");
    }

    #[test]
    fn rows_of_a_run_are_grouped_by_utc_day() {
        let rows = [
            row(1, "a", "2021-07-01T09:00:00", "2021-07-01T10:00:00", None),
            row(2, "b", "2021-07-01T23:59:59", "2021-07-02T01:00:00", None),
            row(3, "c", "2021-07-09T00:00:00", "2021-07-09T01:00:00", None),
        ];
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = by_day(&rows, d("2021-07-01"), d("2021-07-31"));
        let counts: Vec<(NaiveDate, usize)> = days.iter().map(|(k, v)| (*k, v.plans())).collect();
        assert_eq!(counts, vec![(d("2021-07-01"), 2), (d("2021-07-09"), 1)]);
    }
}
