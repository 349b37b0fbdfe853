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
//! Freshness: the batch writer calls [`Searcher::invalidate`] for the days it changed (the next
//! search reloads them, and every cached body is dropped); processes that do not write poll the
//! store's change feed ([`Searcher::spawn_change_feed`]) and invalidate exactly the days changed
//! since their last poll. Entries older than the TTL are reloaded too, as a safety net. A day used in
//! the second half of its TTL is reloaded in the background while the current copy is served. When
//! the store fails, the last loaded copy of a day is served instead, and for a short while
//! ([`STORE_DOWN_BACKOFF`]) cached days stop asking it at all: a down store costs one failing call
//! per second, not one per request.
//!
//! No search waits on a hung store: every store read runs in a task of its own, and a search waits
//! for it only until its store deadline (`search.store_deadline`). Past it, the last copy of what it
//! needs (day directory, days) is served, the read goes on in the background, and the store is taken
//! as down for [`STORE_DOWN_BACKOFF`] as if it had failed. A search with nothing cached goes on
//! waiting only while the store answers a ping within the deadline (a long read of a healthy store),
//! and fails as unavailable as soon as a ping goes unanswered.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDate;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use futures::Future;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::SearchSettings;
use crate::domain::{EventRow, TimeRange};
use crate::store::{DaySize, SharedStore, StoreError};

/// After a store failure, how long cached days are served without asking the store again.
pub const STORE_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Upper bound of the estimated JSON bytes one store query of a run of days may bring: a wide cold
/// range is read in several queries of about this size, [`RUNS_IN_FLIGHT`] at once, so no single
/// query holds the whole range in flight and the first parts are rendered while the rest arrive.
pub const RUN_BYTES: u64 = 8 << 20;
/// Store queries of one search (or background refresh) in flight at once.
pub const RUNS_IN_FLIGHT: usize = 4;
/// A finished body larger than the cache budget divided by this is not kept (it would evict many
/// days to save one concatenation).
const BODY_FRACTION: u64 = 64;
/// A part of an answer at least this large is copied with the runtime told it blocks.
const BLOCKING_COPY_BYTES: usize = 1 << 20;
/// Estimated JSON bytes of one `EventSummary` besides its title, for the directory's sizes.
const EVENT_OVERHEAD: u64 = 200;

/// The contract's `EventSummary`. Prices are written as exact decimal literals (`20.00`), which
/// are valid JSON numbers.
pub fn render_event(row: &EventRow) -> String {
    let mut out = String::with_capacity(EVENT_OVERHEAD as usize + row.title.len());
    write_event(&mut out, row);
    out
}

/// Renders without the formatting machinery: a cold year renders tens of thousands of plans, and
/// this runs while the search waits.
fn write_event(out: &mut String, row: &EventRow) {
    out.push_str(r#"{"id":""#);
    out.push_str(row.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    out.push_str(r#"","title":"#);
    let _ = serde_json::to_writer(StringWriter(out), &row.title);
    out.push_str(r#","start_date":""#);
    push_date(out, row.start_local.date());
    out.push_str(r#"","start_time":""#);
    push_time(out, row.start_local.time());
    out.push_str(r#"","end_date":""#);
    push_date(out, row.end_local.date());
    out.push_str(r#"","end_time":""#);
    push_time(out, row.end_local.time());
    out.push_str(r#"","min_price":"#);
    write_price(out, row.min_price);
    out.push_str(r#","max_price":"#);
    write_price(out, row.max_price);
    out.push('}');
}

/// `YYYY-MM-DD`, as `%Y-%m-%d` writes it (feed dates are years 1 to 9999).
fn push_date(out: &mut String, d: NaiveDate) {
    use chrono::Datelike;
    if !(0..=9999).contains(&d.year()) {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        return;
    }
    push_digits(out, d.year() as u32, 4);
    out.push('-');
    push_digits(out, d.month(), 2);
    out.push('-');
    push_digits(out, d.day(), 2);
}

/// `HH:MM:SS`, as `%H:%M:%S` writes it (a fraction is not shown).
fn push_time(out: &mut String, t: chrono::NaiveTime) {
    use chrono::Timelike;
    push_digits(out, t.hour(), 2);
    out.push(':');
    push_digits(out, t.minute(), 2);
    out.push(':');
    // A leap second reads as second 60, as chrono's %S writes it.
    push_digits(out, t.second() + t.nanosecond() / 1_000_000_000, 2);
}

fn push_digits(out: &mut String, v: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(char::from(b'0' + (v / 10u32.pow(i) % 10) as u8));
    }
}

fn write_price(out: &mut String, p: Option<rust_decimal::Decimal>) {
    match p {
        Some(d) => out.push_str(crate::domain::DecimalText::new(&d).as_str()),
        None => out.push_str("null"),
    }
}

/// `serde_json` writes to an `io::Write`; this one appends to a `String` (serde_json writes whole
/// characters, so every piece is valid UTF-8).
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s =
            std::str::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.push_str(s);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where one plan's JSON sits in its day's joined bytes, with its instants (unix microseconds).
#[derive(Debug, Clone, Copy)]
struct Span {
    start_utc: i64,
    end_utc: i64,
    at: u32,
    len: u32,
}

/// One day's plans, ready to be served.
#[derive(Debug)]
struct DayEntry {
    /// Every plan's JSON in answer order, separated by commas.
    joined: Bytes,
    spans: Vec<Span>,
    /// Earliest start and latest end of the day's plans: a range covering both takes `joined` whole.
    min_start: i64,
    max_end: i64,
    loaded_at: Instant,
    /// Set by an invalidation: reload before serving, fall back to this copy on error.
    dirty: AtomicBool,
    /// A background reload of this copy is under way (at most one).
    refreshing: AtomicBool,
    /// A search used this copy: an invalidation reloads it at once instead of leaving it to the
    /// next search (days nobody searches cost nothing until someone does).
    used: AtomicBool,
    /// An invalidation is reloading this (dirty) copy and waits for it: searches serve this copy
    /// meanwhile instead of waiting for the store.
    reloading: AtomicBool,
    bytes: u32,
}

impl DayEntry {
    /// `rows` must be one day's plans in answer order.
    fn new(rows: &[EventRow]) -> Self {
        let mut text =
            String::with_capacity(rows.iter().map(|r| EVENT_OVERHEAD as usize + r.title.len()).sum());
        let mut spans = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let at = text.len();
            write_event(&mut text, row);
            spans.push(Span {
                start_utc: row.start_utc.timestamp_micros(),
                end_utc: row.end_utc.timestamp_micros(),
                at: at as u32,
                len: (text.len() - at) as u32,
            });
        }
        let joined = Bytes::from(text);
        let bytes = joined.len() + spans.len() * std::mem::size_of::<Span>() + 128;
        Self {
            min_start: spans.iter().map(|s| s.start_utc).min().unwrap_or(i64::MAX),
            max_end: spans.iter().map(|s| s.end_utc).max().unwrap_or(i64::MIN),
            joined,
            spans,
            loaded_at: Instant::now(),
            dirty: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            used: AtomicBool::new(false),
            reloading: AtomicBool::new(false),
            bytes: bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// Notes that a search uses this copy (a load first, so hot days do not share a written line).
    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Appends the plans inside `[starts, ends]` to `out`; `first` tracks whether a comma is due.
    fn write_matching(&self, starts: i64, ends: i64, out: &mut BytesMut, first: &mut bool) {
        if self.spans.is_empty() {
            return;
        }
        let mut put = |slice: &[u8], out: &mut BytesMut| {
            if !*first {
                out.put_u8(b',');
            }
            *first = false;
            out.put_slice(slice);
        };
        if starts <= self.min_start && self.max_end <= ends {
            put(&self.joined, out);
            return;
        }
        for s in &self.spans {
            if s.start_utc >= starts && s.end_utc <= ends {
                put(&self.joined[s.at as usize..(s.at + s.len) as usize], out);
            }
        }
    }
}

/// A finished `/search` body for one exact range.
#[derive(Debug)]
struct CachedBody {
    body: Bytes,
    /// The body's content hash (its ETag), computed once.
    hash: u128,
    /// The compressed form, made on the first request that accepts it; counted by the weigher
    /// (the entry is inserted again once it is made, so the cache weighs it).
    compressed: tokio::sync::OnceCell<Bytes>,
    /// The invalidation epoch the body was built under; any invalidation retires it.
    epoch: u64,
    /// Half a TTL after its oldest day was loaded: from then on its days are in their refresh
    /// window, so the body is rebuilt from them (and picks up what the refreshes bring).
    fresh_until: Instant,
}

impl CachedBody {
    fn weight(&self) -> u32 {
        let compressed = self.compressed.get().map_or(0, |c| c.len());
        (self.body.len() + compressed + 64).min(u32::MAX as usize) as u32
    }
}

/// A `/search` answer, with what HTTP needs to validate and compress it (see `http::encoding`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Bytes,
    /// Content hash of `body` (xxh3-128): equal bodies, equal hashes, in any process.
    pub hash: u128,
    /// The cached body it was served from or stored as, which keeps its compressed form.
    cached: Option<((i64, i64), Arc<CachedBody>)>,
}

impl Answer {
    fn uncached(body: Bytes) -> Self {
        Self { hash: crate::http::encoding::content_hash(&body), body, cached: None }
    }

    fn cached(key: (i64, i64), cached: Arc<CachedBody>) -> Self {
        Self { body: cached.body.clone(), hash: cached.hash, cached: Some((key, cached)) }
    }

    /// True when [`Searcher::compressed`] gives a compressed form (the answer is cached).
    pub fn compressible(&self) -> bool {
        self.cached.is_some()
    }
}

#[derive(Debug, Default)]
pub struct SearchCounters {
    /// Day lookups answered from the cache.
    pub hits: AtomicU64,
    /// Days read from the store because the cache had no fresh copy.
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub store_errors: AtomicU64,
    /// Searches answered with a finished body from the cache.
    pub body_hits: AtomicU64,
    /// Store queries of runs of days (each reads one or more days).
    pub run_queries: AtomicU64,
    /// Polls of the store's change feed, and the days they invalidated.
    pub change_polls: AtomicU64,
    pub changed_days: AtomicU64,
    /// Store reads a search stopped waiting for at its store deadline.
    pub deadlines_passed: AtomicU64,
    /// Day lookups answered with the previous copy while an invalidation reloaded the day.
    pub previous_served: AtomicU64,
    /// Days an invalidation reloaded at once because searches use them.
    pub reloaded_days: AtomicU64,
}

/// What the directory knows of one non-empty day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DayInfo {
    plans: u64,
    /// Estimated JSON bytes of the day's plans.
    bytes: u64,
}

impl DayInfo {
    /// A day an invalidation reported: it may hold plans now, its size is unknown until read.
    const UNKNOWN: DayInfo = DayInfo { plans: 0, bytes: EVENT_OVERHEAD };

    fn of(size: &DaySize) -> Self {
        Self { plans: size.plans, bytes: size.plans * EVENT_OVERHEAD + size.text_bytes }
    }
}

/// The non-empty event days, in order.
#[derive(Debug)]
struct Directory {
    days: BTreeMap<NaiveDate, DayInfo>,
    loaded_at: Instant,
}

/// The result of one store query over a run of days: the entries of every day it read.
type RunResult = Result<Arc<BTreeMap<NaiveDate, Arc<DayEntry>>>, StoreError>;
type RunLoad = Shared<BoxFuture<'static, RunResult>>;
/// A directory load run in a task of its own; `true` when it kept a stale copy.
type DirectoryLoad = Shared<BoxFuture<'static, Result<bool, StoreError>>>;

/// Reads of the same days an invalidation makes before it returns (a read that raced with a later
/// write is repeated; a store written faster than it is read is not chased forever).
const RELOAD_ROUNDS: usize = 3;

/// The copies an invalidation is reloading: searches serve them meanwhile. Cleared on drop, so an
/// invalidation that is cancelled or gives up never leaves a copy served as if it were reloading.
struct Reloading(Vec<Arc<DayEntry>>);

impl Reloading {
    fn mark(entries: Vec<Arc<DayEntry>>) -> Self {
        for e in &entries {
            e.reloading.store(true, Ordering::Release);
        }
        Self(entries)
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        for e in &self.0 {
            e.reloading.store(false, Ordering::Release);
        }
    }
}

/// A day of a search as classified before anything is awaited.
enum Slot {
    /// Cached; `true` when it is a stale copy served because the store is down.
    Ready(Arc<DayEntry>, bool),
    /// To read, with the expired or invalidated copy to fall back on.
    Missing(NaiveDate, Option<Arc<DayEntry>>),
}

/// A piece of a search's answer, resolved in day order.
enum Part {
    Ready(Arc<DayEntry>, bool),
    /// Consecutive days `from..=to` read by one load (`id`), with their last copies.
    Load {
        id: u64,
        load: RunLoad,
        from: NaiveDate,
        to: NaiveDate,
        olds: Vec<(NaiveDate, Option<Arc<DayEntry>>)>,
    },
}

struct Inner {
    store: SharedStore,
    days: moka::future::Cache<NaiveDate, Arc<DayEntry>>,
    bodies: moka::future::Cache<(i64, i64), Arc<CachedBody>>,
    /// Bodies up to this size are cached.
    body_limit: usize,
    directory: RwLock<Option<Directory>>,
    /// One directory load at a time (the others wait for it and use its result).
    directory_load: tokio::sync::Mutex<()>,
    directory_refreshing: AtomicBool,
    /// The directory load searches wait for (up to their deadline), with its task: a finished
    /// task is never waited for again (its shared result is only stored when someone polled it).
    directory_task: Mutex<Option<(tokio::task::AbortHandle, DirectoryLoad)>>,
    /// How long a search waits for the store (`search.store_deadline`).
    deadline_nanos: AtomicU64,
    /// Days being read from the store, with the shared load that reads them (single flight).
    in_flight: Mutex<HashMap<NaiveDate, (u64, RunLoad)>>,
    next_run: AtomicU64,
    /// Estimated bytes one run query may bring ([`RUN_BYTES`] unless set).
    run_bytes: AtomicU64,
    ttl_nanos: AtomicU64,
    /// Bumped by every invalidation; a load that saw it move may hold pre-write data.
    epoch: AtomicU64,
    /// Origin of `store_down_until`.
    origin: Instant,
    /// Nanoseconds since `origin` until which the store is taken as down (0: not down).
    store_down_until: AtomicU64,
    counters: Arc<SearchCounters>,
}

/// The search cache. Cheap to share behind an `Arc`; background refreshes hold its inner state.
pub struct Searcher {
    inner: Arc<Inner>,
    pub counters: Arc<SearchCounters>,
}

const PREFIX: &[u8] = br#"{"data":{"events":["#;
const SUFFIX: &[u8] = br#"]},"error":null}"#;
const EMPTY: &[u8] = br#"{"data":{"events":[]},"error":null}"#;

impl Searcher {
    pub fn new(store: SharedStore, settings: &SearchSettings) -> Self {
        let days = moka::future::Cache::builder()
            .max_capacity(settings.cache_bytes)
            .weigher(|_k: &NaiveDate, v: &Arc<DayEntry>| v.bytes)
            .build();
        // Finished bodies duplicate day bytes: a quarter of the budget on top of the days.
        let bodies = moka::future::Cache::builder()
            .max_capacity((settings.cache_bytes / 4).max(1))
            .weigher(|_k: &(i64, i64), v: &Arc<CachedBody>| v.weight())
            .build();
        let counters = Arc::new(SearchCounters::default());
        let inner = Inner {
            store,
            days,
            bodies,
            body_limit: (settings.cache_bytes / BODY_FRACTION) as usize,
            directory: RwLock::new(None),
            directory_load: tokio::sync::Mutex::new(()),
            directory_refreshing: AtomicBool::new(false),
            directory_task: Mutex::new(None),
            deadline_nanos: AtomicU64::new(nanos(settings.store_deadline)),
            in_flight: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(0),
            run_bytes: AtomicU64::new(RUN_BYTES),
            ttl_nanos: AtomicU64::new(nanos(settings.cache_ttl)),
            epoch: AtomicU64::new(0),
            origin: Instant::now(),
            store_down_until: AtomicU64::new(0),
            counters: counters.clone(),
        };
        Self { inner: Arc::new(inner), counters }
    }

    /// Bounds the estimated bytes of one run query (default [`RUN_BYTES`]); small values let tests
    /// and benches exercise the splitting of wide ranges.
    pub fn set_run_bytes(&self, bytes: u64) {
        self.inner.run_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.inner.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
    }

    pub fn set_store_deadline(&self, deadline: Duration) {
        self.inner.deadline_nanos.store(nanos(deadline), Ordering::Relaxed);
    }

    /// Called by the batch writer after a successful flush with the days it touched (and by the
    /// change feed with the days another process changed): the next search reads them again, and
    /// the directory lists them until a read shows them empty.
    pub async fn invalidate(&self, days: &[NaiveDate]) {
        self.inner.invalidate(days).await
    }

    /// The full response body of `GET /search` for `range`.
    pub async fn search(&self, range: TimeRange) -> Result<Bytes, StoreError> {
        self.inner.search(range).await.map(|a| a.body)
    }

    /// The answer of `GET /search` for `range`, with its content hash.
    pub async fn answer(&self, range: TimeRange) -> Result<Answer, StoreError> {
        self.inner.search(range).await
    }

    /// The compressed form of a cached `answer`, made by `compress` on first use and kept beside its
    /// body (same byte budget); `None` for an answer that is not cached (too large, or stale), which
    /// would cost a compression per request.
    pub async fn compressed(&self, answer: &Answer, compress: fn(&[u8]) -> Bytes) -> Option<Bytes> {
        let (key, cached) = answer.cached.as_ref()?;
        if let Some(done) = cached.compressed.get() {
            return Some(done.clone());
        }
        let mut made = false;
        let packed = cached
            .compressed
            .get_or_init(|| async {
                made = true;
                // Compressing a large body takes milliseconds: let the runtime move other tasks.
                if cached.body.len() >= BLOCKING_COPY_BYTES && multi_threaded() {
                    tokio::task::block_in_place(|| compress(&cached.body))
                } else {
                    compress(&cached.body)
                }
            })
            .await
            .clone();
        let current = self.inner.bodies.get(key).await;
        if made && current.is_some_and(|c| Arc::ptr_eq(&c, cached)) {
            // Inserted again so the weigher counts the compressed bytes too.
            self.inner.bodies.insert(*key, cached.clone()).await;
        }
        Some(packed)
    }

    /// Reads the day directory from the store unless a fresh one is loaded (start-up warming).
    pub async fn load_directory(&self) -> Result<(), StoreError> {
        self.inner.load_directory(None).await.map(|_| ())
    }

    /// Follows the store's change feed: every `interval`, reads the days written since the last
    /// poll and invalidates exactly those (for processes whose own writer does not: role `api`).
    /// A poll costs one small query however much is cached; a write becomes visible here within
    /// about one interval plus one day reload. Ends when `shutdown` turns true, or at once when the
    /// store keeps no change feed (the TTL alone then bounds staleness).
    pub fn spawn_change_feed(&self, interval: Duration, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.inner.clone().follow_changes(interval, shutdown))
    }

    /// For `/ready`: true once the day directory was read from the store at least once.
    pub fn warmed(&self) -> bool {
        self.inner.directory.read().is_some()
    }

    /// The number of non-empty days the directory lists (for tests and metrics).
    pub fn directory_len(&self) -> usize {
        self.inner.directory.read().as_ref().map_or(0, |d| d.days.len())
    }
}

impl Inner {
    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
    }

    fn store_deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_nanos.load(Ordering::Relaxed))
    }

    /// A store read outlived a search's deadline: the store is taken as down, as if it had failed,
    /// so the next searches serve their cached copies without waiting again.
    fn deadline_passed(&self) {
        self.counters.deadlines_passed.fetch_add(1, Ordering::Relaxed);
        let until = nanos(self.origin.elapsed() + STORE_DOWN_BACKOFF);
        if self.store_down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                deadline_ms = self.store_deadline().as_millis() as u64,
                backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64,
                "store gave no answer within the search deadline: serving cached days"
            );
        }
    }

    /// `load` if it ends by `deadline`; `None` past it (the load goes on in its own task).
    async fn by_deadline<T>(&self, load: impl Future<Output = T>, deadline: Instant) -> Option<T> {
        match tokio::time::timeout_at(deadline.into(), load).await {
            Ok(out) => Some(out),
            Err(_) => {
                self.deadline_passed();
                None
            }
        }
    }

    /// `load` for a search with no copy to fall back on: past `deadline` it goes on waiting only
    /// while the store answers a ping within one store deadline (a long read of a healthy store),
    /// and fails as unavailable as soon as a ping goes unanswered (a hung or unreachable store).
    async fn answer_or_hung<T>(
        &self,
        mut load: impl Future<Output = Result<T, StoreError>> + Unpin,
        deadline: Instant,
    ) -> Result<T, StoreError> {
        if let Ok(out) = tokio::time::timeout_at(deadline.into(), &mut load).await {
            return out;
        }
        loop {
            let step = self.store_deadline();
            let ping = tokio::time::timeout(step, self.store.ping());
            tokio::select! {
                out = &mut load => return out,
                ping = ping => match ping {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.store_failed(&e);
                        return Err(e);
                    }
                    Err(_) => {
                        self.deadline_passed();
                        return Err(StoreError::Unavailable(format!(
                            "store gave no answer within the search deadline of {} ms",
                            step.as_millis()
                        )));
                    }
                },
            }
            // The store answers: wait one more step for the read before asking again.
            if let Ok(out) = tokio::time::timeout(step, &mut load).await {
                return out;
            }
        }
    }

    fn store_down(&self) -> bool {
        let until = self.store_down_until.load(Ordering::Relaxed);
        until != 0 && nanos(self.origin.elapsed()) < until
    }

    fn store_failed(&self, error: &StoreError) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        let until = nanos(self.origin.elapsed() + STORE_DOWN_BACKOFF);
        if self.store_down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %error, backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64, "store down: serving cached days");
        }
    }

    fn store_answered(&self) {
        if self.store_down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("store answers again");
        }
    }

    async fn follow_changes(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut marker: Option<i64> = None;
        // The days of the last poll with their markers: a store that returns an overlap window
        // before the marker returns them again, and they are not invalidated twice.
        let mut seen: HashMap<NaiveDate, i64> = HashMap::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            self.counters.change_polls.fetch_add(1, Ordering::Relaxed);
            let result = match marker {
                None => {
                    let asked = Instant::now();
                    match self.store.change_marker().await {
                        Ok(m) => {
                            marker = Some(m);
                            // A directory read before the marker may miss a write made in between.
                            let _ = self.load_directory(Some(asked)).await;
                            Ok(Vec::new())
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(since) => self.store.days_changed_since(since).await,
            };
            let changes = match result {
                Ok(changes) => changes,
                Err(e) if !e.is_transient() && marker.is_none() => {
                    tracing::warn!(error = %e, "no change feed: cached days follow other processes' writes by TTL only");
                    return;
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "change feed poll failed; retrying every interval");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                tracing::info!("change feed polls answer again");
            }
            let Some(since) = marker else { continue };
            let days: Vec<NaiveDate> = changes
                .iter()
                .filter(|c| c.marker > since || seen.get(&c.day) != Some(&c.marker))
                .map(|c| c.day)
                .collect();
            marker = Some(changes.iter().map(|c| c.marker).max().unwrap_or(since).max(since));
            seen = changes.iter().map(|c| (c.day, c.marker)).collect();
            if !days.is_empty() {
                self.counters.changed_days.fetch_add(days.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    days = days.len(),
                    marker = marker.unwrap_or(since),
                    "days changed by another process"
                );
                self.invalidate(&days).await;
            }
        }
    }

    async fn invalidate(self: &Arc<Self>, days: &[NaiveDate]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut used = Vec::new();
        for day in days {
            if let Some(entry) = self.days.get(day).await {
                // Reloading before dirty: a search never finds a used copy dirty and not reloading.
                if entry.used.load(Ordering::Relaxed) && !self.store_down() {
                    entry.reloading.store(true, Ordering::Release);
                    used.push((*day, entry.clone()));
                }
                entry.dirty.store(true, Ordering::Release);
            }
        }
        if let Some(dir) = self.directory.write().as_mut() {
            for day in days {
                dir.days.entry(*day).or_insert(DayInfo::UNKNOWN);
            }
        }
        if !used.is_empty() {
            used.sort_unstable_by_key(|(d, _)| *d);
            self.reload(used).await;
        }
    }

    /// Reloads the `marked` days (ascending, cached, dirty and marked reloading) once each, joining
    /// reads already in flight,
    /// while searches keep serving their previous copies; returns once the new copies are cached,
    /// or at the store deadline (the reads go on, searches then wait for them as for any miss). A
    /// read that raced with a later write leaves its copy dirty: it is read again, up to
    /// [`RELOAD_ROUNDS`] times, so the copies cached on return hold every write before the call.
    async fn reload(self: &Arc<Self>, marked: Vec<(NaiveDate, Arc<DayEntry>)>) {
        let deadline = Instant::now() + self.store_deadline();
        let days: Vec<NaiveDate> = marked.iter().map(|(d, _)| *d).collect();
        let mut entries = marked;
        for round in 0..RELOAD_ROUNDS {
            if round > 0 {
                entries.clear();
                for day in &days {
                    if let Some(e) = self.days.get(day).await.filter(|e| e.dirty.load(Ordering::Acquire)) {
                        entries.push((*day, e));
                    }
                }
            }
            if entries.is_empty() {
                return;
            }
            let reloading = Reloading::mark(entries.iter().map(|(_, e)| e.clone()).collect());
            self.counters.reloaded_days.fetch_add(entries.len() as u64, Ordering::Relaxed);
            let todo = self.runs_of(entries.iter().map(|(d, _)| *d));
            let mut loads: Vec<(u64, RunLoad)> = self.start_runs(&todo).into_values().collect();
            loads.sort_by_key(|(id, _)| *id);
            loads.dedup_by_key(|(id, _)| *id);
            let all = futures::future::join_all(loads.into_iter().map(|(_, l)| l));
            let done = self.by_deadline(all, deadline).await;
            drop(reloading);
            if done.is_none_or(|results| results.iter().any(Result::is_err)) {
                return;
            }
        }
    }

    /// `days` (ascending) with what the directory knows of each and whether it continues the run
    /// of the one before (the directory lists no day between them).
    fn runs_of(&self, days: impl Iterator<Item = NaiveDate>) -> Vec<(NaiveDate, DayInfo, bool)> {
        let guard = self.directory.read();
        let mut out: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        for day in days {
            let (info, before) = match guard.as_ref() {
                Some(dir) => (
                    dir.days.get(&day).copied().unwrap_or(DayInfo::UNKNOWN),
                    dir.days.range(..day).next_back().map(|(d, _)| *d),
                ),
                None => (DayInfo::UNKNOWN, None),
            };
            let continues = out.last().is_some_and(|(prev, _, _)| Some(*prev) == before);
            out.push((day, info, continues));
        }
        out
    }

    async fn search(self: &Arc<Self>, range: TimeRange) -> Result<Answer, StoreError> {
        let starts = range.starts_at.map_or(i64::MIN, |t| t.timestamp_micros());
        let ends = range.ends_at.map_or(i64::MAX, |t| t.timestamp_micros());
        let key = (starts, ends);
        let deadline = Instant::now() + self.store_deadline();
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(cached) = self.bodies.get(&key).await {
            if cached.epoch == epoch {
                if Instant::now() < cached.fresh_until {
                    self.counters.body_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Answer::cached(key, cached));
                }
                if self.store_down() {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    return Ok(Answer::cached(key, cached));
                }
            }
        }

        let first = range.starts_at.map(|t| t.date_naive());
        let last = range.ends_at.map(|t| t.date_naive());
        if first.zip(last).is_some_and(|(f, l)| f > l) {
            return Ok(Answer::uncached(Bytes::from_static(EMPTY)));
        }
        let (days, directory_at, mut stale) = self.days_in(first, last, deadline).await?;
        if days.is_empty() {
            return Ok(Answer::uncached(Bytes::from_static(EMPTY)));
        }
        // Sized from the directory (exact for every day read before): one allocation for the body.
        let estimate = days.iter().map(|(_, i)| i.bytes as usize + 1).sum::<usize>();
        let mut out = BytesMut::with_capacity(PREFIX.len() + SUFFIX.len() + estimate);
        out.put_slice(PREFIX);
        let mut first_event = true;
        let mut oldest = directory_at;
        // Parts resolve in day order, a few runs ahead; each is written out and dropped at once, so
        // a wide answer holds the cache, the runs in flight and the body, never a second copy.
        let in_range = move |d: &NaiveDate| first.is_none_or(|f| *d >= f) && last.is_none_or(|l| *d <= l);
        let parts = self.parts(&days).await;
        let mut resolved =
            stream::iter(parts).map(|part| self.resolve(part, in_range, deadline)).buffered(RUNS_IN_FLIGHT);
        while let Some(result) = resolved.next().await {
            let (entries, part_stale) = result?;
            stale |= part_stale;
            let bytes: usize = entries.iter().map(|e| e.joined.len()).sum();
            let mut copy = || {
                for entry in &entries {
                    oldest = oldest.min(entry.loaded_at);
                    entry.write_matching(starts, ends, &mut out, &mut first_event);
                }
            };
            // Copying megabytes takes milliseconds: let the runtime move its other tasks elsewhere.
            if bytes >= BLOCKING_COPY_BYTES && multi_threaded() {
                tokio::task::block_in_place(copy);
            } else {
                copy();
            }
        }
        drop(resolved);
        out.put_slice(SUFFIX);
        let body = out.freeze();
        let fresh_until = oldest + self.ttl() / 2;
        if !stale && body.len() <= self.body_limit && Instant::now() < fresh_until {
            let hash = crate::http::encoding::content_hash(&body);
            let compressed = tokio::sync::OnceCell::new();
            let cached = Arc::new(CachedBody { body, hash, compressed, epoch, fresh_until });
            self.bodies.insert(key, cached.clone()).await;
            return Ok(Answer::cached(key, cached));
        }
        Ok(Answer::uncached(body))
    }

    /// The directory's non-empty days between `first` and `last` (open ends: every day), with when
    /// the directory was read and whether it is a stale copy.
    async fn days_in(
        self: &Arc<Self>,
        first: Option<NaiveDate>,
        last: Option<NaiveDate>,
        deadline: Instant,
    ) -> Result<(Vec<(NaiveDate, DayInfo)>, Instant, bool), StoreError> {
        let stale = self.directory_days(deadline).await?;
        let lo = first.map_or(Bound::Unbounded, Bound::Included);
        let hi = last.map_or(Bound::Unbounded, Bound::Included);
        let guard = self.directory.read();
        let dir = guard.as_ref().ok_or_else(|| StoreError::Unavailable("day directory vanished".into()))?;
        let days = dir.days.range((lo, hi)).map(|(d, i)| (*d, *i)).collect();
        Ok((days, dir.loaded_at, stale))
    }

    /// Makes sure a directory is loaded: a fresh one is used as is (refreshed in the background past
    /// half its TTL); an expired one is read again, or served stale when the store is down or does
    /// not answer by `deadline`. Returns whether the directory in place is a stale copy.
    async fn directory_days(self: &Arc<Self>, deadline: Instant) -> Result<bool, StoreError> {
        let ttl = self.ttl();
        let loaded_at = self.directory.read().as_ref().map(|d| d.loaded_at);
        if let Some(at) = loaded_at {
            let age = at.elapsed();
            if age < ttl {
                if age >= ttl / 2 && !self.directory_refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.load_directory(Some(at)).await;
                        me.directory_refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(false);
            }
            if self.store_down() {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let load = self.directory_task();
        if loaded_at.is_none() {
            return self.answer_or_hung(load, deadline).await;
        }
        match self.by_deadline(load, deadline).await {
            Some(result) => result,
            None => {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// The directory load under way, or a new one in a task of its own: a search waits for it
    /// only until its deadline, and the load (and its lock) never holds a search longer.
    fn directory_task(self: &Arc<Self>) -> DirectoryLoad {
        let mut task = self.directory_task.lock();
        if let Some((running, load)) = task.as_ref() {
            if !running.is_finished() {
                return load.clone();
            }
        }
        let me = self.clone();
        let handle = tokio::spawn(async move { me.load_directory(None).await });
        let running = handle.abort_handle();
        let load: DirectoryLoad = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("day directory task failed: {e}"))))
        }
        .boxed()
        .shared();
        *task = Some((running, load.clone()));
        load
    }

    /// Reads the directory unless another caller did meanwhile (a load newer than `older_than`, or
    /// any fresh one). On failure the last copy is served when there is one.
    async fn load_directory(&self, older_than: Option<Instant>) -> Result<bool, StoreError> {
        let _single = self.directory_load.lock().await;
        if let Some(at) = self.directory.read().as_ref().map(|d| d.loaded_at) {
            let replaced = older_than.is_some_and(|t| at > t);
            if replaced || (older_than.is_none() && at.elapsed() < self.ttl()) {
                return Ok(false);
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.store.day_directory().await {
            Ok(sizes) => {
                self.store_answered();
                let mut days: BTreeMap<NaiveDate, DayInfo> =
                    sizes.iter().map(|s| (s.day, DayInfo::of(s))).collect();
                let mut guard = self.directory.write();
                if self.epoch.load(Ordering::Acquire) != epoch {
                    // An invalidation raced with the read: keep every day the old copy knew (a day
                    // listed in excess costs one empty read, a day missing would hide plans).
                    if let Some(old) = guard.as_ref() {
                        for (d, i) in &old.days {
                            days.entry(*d).or_insert(*i);
                        }
                    }
                }
                tracing::debug!(days = days.len(), "day directory loaded");
                *guard = Some(Directory { days, loaded_at: Instant::now() });
                Ok(false)
            }
            Err(e) => {
                self.store_failed(&e);
                if self.directory.read().is_some() {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// How each of `days` (ascending) will be answered, in day order: fresh cached days as they are
    /// (past half their TTL they are also reloaded in the background), days another search is
    /// reading from that load, the other missing days from new runs of consecutive days.
    async fn parts(self: &Arc<Self>, days: &[(NaiveDate, DayInfo)]) -> Vec<Part> {
        let ttl = self.ttl();
        let down = self.store_down();
        let mut slots: Vec<Slot> = Vec::with_capacity(days.len());
        // Each day with whether it continues a run (the previous listed day is in the same list).
        let mut missing: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        let mut refresh: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        let mut hits = 0;
        let (mut prev_missing, mut prev_refresh) = (false, false);
        for &(day, info) in days {
            let (mut is_missing, mut is_refresh) = (false, false);
            match self.days.get(&day).await {
                Some(entry) if !entry.dirty.load(Ordering::Acquire) && entry.loaded_at.elapsed() < ttl => {
                    hits += 1;
                    if entry.loaded_at.elapsed() >= ttl / 2
                        && !down
                        && !entry.refreshing.swap(true, Ordering::AcqRel)
                    {
                        refresh.push((day, info, prev_refresh));
                        is_refresh = true;
                    }
                    entry.mark_used();
                    slots.push(Slot::Ready(entry, false));
                }
                // Changed and being reloaded once for everyone: the previous copy, without waiting
                // (marked stale, so no finished body is kept from it).
                Some(entry) if entry.reloading.load(Ordering::Acquire) => {
                    self.counters.previous_served.fetch_add(1, Ordering::Relaxed);
                    entry.mark_used();
                    slots.push(Slot::Ready(entry, true));
                }
                Some(entry) if down => {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    slots.push(Slot::Ready(entry, true));
                }
                old => {
                    missing.push((day, info, prev_missing));
                    slots.push(Slot::Missing(day, old));
                    is_missing = true;
                }
            }
            (prev_missing, prev_refresh) = (is_missing, is_refresh);
        }
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        if !refresh.is_empty() {
            let me = self.clone();
            tokio::spawn(async move {
                let mut loads: Vec<(u64, RunLoad)> = me.start_runs(&refresh).into_values().collect();
                loads.sort_by_key(|(id, _)| *id);
                loads.dedup_by_key(|(id, _)| *id);
                futures::future::join_all(loads.into_iter().map(|(_, l)| l)).await;
            });
        }
        self.counters.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let loads = if missing.is_empty() { HashMap::new() } else { self.start_runs(&missing) };
        // Consecutive missing days of one load become one part (a run's new days come with it).
        let mut parts: Vec<Part> = Vec::new();
        for slot in slots {
            match slot {
                Slot::Ready(entry, stale) => parts.push(Part::Ready(entry, stale)),
                Slot::Missing(day, old) => {
                    let (id, load) = loads.get(&day).cloned().expect("every missing day has a load");
                    match parts.last_mut() {
                        Some(Part::Load { id: last_id, to, olds, .. }) if *last_id == id => {
                            *to = day;
                            olds.push((day, old));
                        }
                        _ => parts.push(Part::Load { id, load, from: day, to: day, olds: vec![(day, old)] }),
                    }
                }
            }
        }
        parts
    }

    /// The entries of one part, in day order, and whether a stale copy stands in for a failed read.
    async fn resolve(
        &self,
        part: Part,
        in_range: impl Fn(&NaiveDate) -> bool,
        deadline: Instant,
    ) -> Result<(Vec<Arc<DayEntry>>, bool), StoreError> {
        let (load, from, to, olds) = match part {
            Part::Ready(entry, stale) => return Ok((vec![entry], stale)),
            Part::Load { load, from, to, olds, .. } => (load, from, to, olds),
        };
        // With a copy of every day to fall back on, wait until the deadline; without, as long as
        // the store is alive.
        let outcome = if olds.iter().all(|(_, old)| old.is_some()) {
            self.by_deadline(load, deadline).await.unwrap_or_else(|| {
                Err(StoreError::Unavailable(format!("days {from}..={to} not read by the search deadline")))
            })
        } else {
            self.answer_or_hung(load, deadline).await
        };
        match outcome {
            // A run this search started may bring days the directory did not list yet: every day of
            // it inside the range counts. A day borrowed from another search's run counts alone.
            Ok(run) => Ok((
                run.range(from..=to)
                    .filter(|(d, _)| in_range(d))
                    .filter(|(d, _)| *d >= &from && *d <= &to)
                    .map(|(_, e)| {
                        e.mark_used();
                        e.clone()
                    })
                    .collect(),
                false,
            )),
            Err(e) => {
                // The last copies of the part's days, if every one has one.
                let mut copies = Vec::with_capacity(olds.len());
                for (_, old) in olds {
                    match old {
                        Some(entry) => copies.push(entry),
                        None => return Err(e),
                    }
                }
                self.counters.stale_served.fetch_add(copies.len() as u64, Ordering::Relaxed);
                Ok((copies, true))
            }
        }
    }

    /// Loads for `days` (ascending, each with whether it continues the previous one's run): the
    /// in-flight loads that already cover some of them, and new runs of consecutive days for the
    /// rest, each under [`RUN_BYTES`].
    fn start_runs(
        self: &Arc<Self>,
        days: &[(NaiveDate, DayInfo, bool)],
    ) -> HashMap<NaiveDate, (u64, RunLoad)> {
        let mut loads: HashMap<NaiveDate, (u64, RunLoad)> = HashMap::with_capacity(days.len());
        let mut runs: Vec<Vec<NaiveDate>> = Vec::new();
        let mut in_flight = self.in_flight.lock();
        let budget = self.run_bytes.load(Ordering::Relaxed);
        let mut run_bytes = 0;
        let mut extend = false;
        for &(day, info, continues) in days {
            if let Some(load) = in_flight.get(&day) {
                loads.insert(day, load.clone());
                extend = false;
                continue;
            }
            match runs.last_mut() {
                Some(run) if extend && continues && run_bytes + info.bytes <= budget => run.push(day),
                _ => {
                    runs.push(vec![day]);
                    run_bytes = 0;
                }
            }
            run_bytes += info.bytes;
            extend = true;
        }
        // This call's runs query the store a few at a time, in day order (the semaphore is fair).
        let permits = Arc::new(tokio::sync::Semaphore::new(RUNS_IN_FLIGHT));
        for run in runs {
            let id = self.next_run.fetch_add(1, Ordering::Relaxed);
            let (from, to) = (run[0], run[run.len() - 1]);
            let me = self.clone();
            let permits = permits.clone();
            let task = tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                me.load_run(id, from, to).await
            });
            let load: RunLoad = async move {
                task.await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("day load task failed: {e}"))))
            }
            .boxed()
            .shared();
            for day in &run {
                in_flight.insert(*day, (id, load.clone()));
                loads.insert(*day, (id, load.clone()));
            }
        }
        loads
    }

    /// One store query for the days `from..=to`: caches each day's entry, brings the directory up
    /// to date for those days, and releases them from `in_flight`.
    async fn load_run(self: Arc<Self>, id: u64, from: NaiveDate, to: NaiveDate) -> RunResult {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.counters.run_queries.fetch_add(1, Ordering::Relaxed);
        let result = self.store.plans_by_day(from, to).await;
        let outcome = match result {
            Ok(rows) => {
                self.store_answered();
                // Rendering a run is CPU work of up to a few tens of milliseconds: off the runtime's
                // threads, so searches answered from memory never queue behind it.
                let entries =
                    tokio::task::spawn_blocking(move || by_day(&rows, from, to)).await.map_err(|e| {
                        StoreError::Unavailable(format!("rendering days {from}..={to} failed: {e}"))
                    });
                let entries = match entries {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.in_flight.lock().retain(|_, (run, _)| *run != id);
                        return Err(e);
                    }
                };
                let raced = self.epoch.load(Ordering::Acquire) != epoch;
                for entry in entries.values() {
                    if raced {
                        // A write landed while reading: serve this, but read again next time.
                        entry.dirty.store(true, Ordering::Release);
                    }
                }
                for (day, entry) in &entries {
                    self.days.insert(*day, entry.clone()).await;
                }
                self.update_directory(from, to, &entries, raced);
                Ok(Arc::new(entries))
            }
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        };
        self.in_flight.lock().retain(|_, (run, _)| *run != id);
        tracing::trace!(%from, %to, ok = outcome.is_ok(), "day run loaded");
        outcome
    }

    /// What a read of `from..=to` showed: exact sizes of the days it found, and (unless a write
    /// raced with it) no listing for the days it found empty.
    fn update_directory(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        entries: &BTreeMap<NaiveDate, Arc<DayEntry>>,
        raced: bool,
    ) {
        let mut guard = self.directory.write();
        let Some(dir) = guard.as_mut() else { return };
        if !raced {
            let empty: Vec<NaiveDate> =
                dir.days.range(from..=to).map(|(d, _)| *d).filter(|d| !entries.contains_key(d)).collect();
            for d in empty {
                dir.days.remove(&d);
            }
        }
        for (day, entry) in entries {
            dir.days.insert(
                *day,
                DayInfo { plans: entry.spans.len() as u64, bytes: entry.joined.len() as u64 + 1 },
            );
        }
    }
}

/// Rows of `from..=to` (in answer order) grouped into one entry per day.
fn by_day(rows: &[EventRow], from: NaiveDate, to: NaiveDate) -> BTreeMap<NaiveDate, Arc<DayEntry>> {
    let mut out = BTreeMap::new();
    let mut begin = 0;
    // Rows come ordered by start instant, so each day's rows are contiguous.
    while begin < rows.len() {
        let day = rows[begin].start_utc.date_naive();
        let end = begin + rows[begin..].iter().take_while(|r| r.start_utc.date_naive() == day).count();
        if (from..=to).contains(&day) {
            out.insert(day, Arc::new(DayEntry::new(&rows[begin..end])));
        }
        begin = end;
    }
    out
}

/// `block_in_place` is only allowed on a multi-threaded runtime.
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, NaiveDateTime, Utc};

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
        let counts: Vec<(NaiveDate, usize)> = days.iter().map(|(k, v)| (*k, v.spans.len())).collect();
        assert_eq!(counts, vec![(d("2021-07-01"), 2), (d("2021-07-09"), 1)]);
    }
}
