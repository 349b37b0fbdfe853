//! Answers searches from the store through a cache of per-day results.
//!
//! A plan lives on the day bucket of its start instant (UTC date). Since a matching plan starts
//! inside the searched range, a search reads only the buckets from `date(starts_at)` to
//! `date(ends_at)`, clamped to the days that hold any plan. Each bucket keeps every plan's
//! `EventSummary` JSON rendered once, so a cached answer is a concatenation of ready-made bytes.
//! The finished body of a range is cached too (keyed by the exact instants), so a hot query costs
//! one cache lookup however many days it spans.
//!
//! Freshness: the batch writer calls [`Searcher::invalidate`] for the days it changed (the next
//! search reloads them, and every cached body is dropped); entries older than the TTL are reloaded
//! too, which covers writes made by another process. A day used in the second half of its TTL is
//! reloaded in the background while the current copy is served, so hot days never make a request
//! wait for the store. When the store fails, the last loaded copy of a day is served instead, and
//! for a short while ([`STORE_DOWN_BACKOFF`]) cached days stop asking it at all: a down store costs
//! one failing call per second, not one per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDate;
use moka::ops::compute::Op;
use parking_lot::RwLock;
use uuid::Uuid;

use crate::config::SearchSettings;
use crate::domain::{EventRow, TimeRange};
use crate::store::{SharedStore, StoreError};

/// After a store failure, how long cached days are served without asking the store again.
pub const STORE_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// One plan ready to be served.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub start_utc: i64,
    pub end_utc: i64,
    pub id: Uuid,
    pub json: Bytes,
}

impl Prepared {
    pub fn from_row(row: &EventRow) -> Self {
        Self {
            start_utc: row.start_utc.timestamp_micros(),
            end_utc: row.end_utc.timestamp_micros(),
            id: row.id,
            json: Bytes::from(render_event(row)),
        }
    }
}

/// The contract's `EventSummary`. Prices are written as exact decimal literals (`20.00`), which
/// are valid JSON numbers.
pub fn render_event(row: &EventRow) -> String {
    let price = |p: Option<rust_decimal::Decimal>| p.map_or_else(|| "null".to_string(), |d| d.to_string());
    format!(
        r#"{{"id":"{}","title":{},"start_date":"{}","start_time":"{}","end_date":"{}","end_time":"{}","min_price":{},"max_price":{}}}"#,
        row.id,
        serde_json::to_string(&row.title).unwrap_or_else(|_| "\"\"".into()),
        row.start_local.format("%Y-%m-%d"),
        row.start_local.format("%H:%M:%S"),
        row.end_local.format("%Y-%m-%d"),
        row.end_local.format("%H:%M:%S"),
        price(row.min_price),
        price(row.max_price),
    )
}

#[derive(Debug)]
struct DayEntry {
    events: Vec<Prepared>,
    loaded_at: Instant,
    /// Set by the writer's invalidation: reload before serving, fall back to this copy on error.
    dirty: AtomicBool,
    /// A background reload of this copy is under way (at most one).
    refreshing: AtomicBool,
    bytes: u32,
}

impl DayEntry {
    fn new(events: Vec<Prepared>) -> Self {
        let bytes = events.iter().map(|e| e.json.len() + 64).sum::<usize>() + 64;
        Self {
            events,
            loaded_at: Instant::now(),
            dirty: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            bytes: bytes.min(u32::MAX as usize) as u32,
        }
    }
}

/// A finished `/search` body for one exact range.
#[derive(Debug)]
struct CachedBody {
    body: Bytes,
    /// The invalidation epoch the body was built under; any invalidation retires it.
    epoch: u64,
    /// Half a TTL after its oldest day was loaded: from then on its days are in their refresh
    /// window, so the body is rebuilt from them (and picks up what the refreshes bring).
    fresh_until: Instant,
}

#[derive(Debug, Default)]
pub struct SearchCounters {
    /// Day lookups answered from the cache.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub store_errors: AtomicU64,
    /// Searches answered with a finished body from the cache.
    pub body_hits: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bounds {
    days: Option<(NaiveDate, NaiveDate)>,
    loaded_at: Instant,
    /// False when an invalidation raced with the load: reload at next use.
    valid: bool,
}

struct Inner {
    store: SharedStore,
    days: moka::future::Cache<NaiveDate, Arc<DayEntry>>,
    bodies: moka::future::Cache<(i64, i64), Arc<CachedBody>>,
    bounds: RwLock<Option<Bounds>>,
    /// One bounds load at a time (the others wait for it and use its result).
    bounds_load: tokio::sync::Mutex<()>,
    bounds_refreshing: AtomicBool,
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

/// How a day was answered, for the body cache's bookkeeping.
struct DayAnswer {
    entry: Arc<DayEntry>,
    /// Served past its freshness (store down): the body built from it must not be cached.
    stale: bool,
}

impl Searcher {
    pub fn new(store: SharedStore, settings: &SearchSettings) -> Self {
        let days = moka::future::Cache::builder()
            .max_capacity(settings.cache_bytes)
            .weigher(|_k: &NaiveDate, v: &Arc<DayEntry>| v.bytes)
            .build();
        // Finished bodies duplicate day bytes: a quarter of the budget on top of the days.
        let bodies = moka::future::Cache::builder()
            .max_capacity((settings.cache_bytes / 4).max(1))
            .weigher(|_k: &(i64, i64), v: &Arc<CachedBody>| (v.body.len() + 64).min(u32::MAX as usize) as u32)
            .build();
        let counters = Arc::new(SearchCounters::default());
        let inner = Inner {
            store,
            days,
            bodies,
            bounds: RwLock::new(None),
            bounds_load: tokio::sync::Mutex::new(()),
            bounds_refreshing: AtomicBool::new(false),
            ttl_nanos: AtomicU64::new(nanos(settings.cache_ttl)),
            epoch: AtomicU64::new(0),
            origin: Instant::now(),
            store_down_until: AtomicU64::new(0),
            counters: counters.clone(),
        };
        Self { inner: Arc::new(inner), counters }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.inner.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
    }

    /// Called by the batch writer after a successful flush with the days it touched.
    pub async fn invalidate(&self, days: &[NaiveDate]) {
        let inner = &self.inner;
        inner.epoch.fetch_add(1, Ordering::AcqRel);
        for day in days {
            if let Some(entry) = inner.days.get(day).await {
                entry.dirty.store(true, Ordering::Release);
            }
        }
        let mut bounds = inner.bounds.write();
        if let Some(b) = bounds.as_mut() {
            b.days = widen(b.days, days);
        }
    }

    /// The full response body of `GET /search` for `range`.
    pub async fn search(&self, range: TimeRange) -> Result<Bytes, StoreError> {
        self.inner.search(range).await
    }

    /// For `/ready`: true once the day bounds were read from the store at least once.
    pub fn warmed(&self) -> bool {
        self.inner.bounds.read().is_some()
    }
}

impl Inner {
    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
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

    async fn search(self: &Arc<Self>, range: TimeRange) -> Result<Bytes, StoreError> {
        let starts = range.starts_at.map_or(i64::MIN, |t| t.timestamp_micros());
        let ends = range.ends_at.map_or(i64::MAX, |t| t.timestamp_micros());
        let key = (starts, ends);
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(cached) = self.bodies.get(&key).await {
            if cached.epoch == epoch {
                if Instant::now() < cached.fresh_until {
                    self.counters.body_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(cached.body.clone());
                }
                if self.store_down() {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    return Ok(cached.body.clone());
                }
            }
        }

        let (span, bounds_loaded_at, mut stale) = self.day_span(range).await?;
        let Some((first, last)) = span else {
            return Ok(Bytes::from_static(EMPTY));
        };
        let mut oldest = bounds_loaded_at;
        let mut out = BytesMut::with_capacity(4096);
        out.put_slice(PREFIX);
        let mut first_event = true;
        let mut hits = 0;
        let mut day = first;
        while day <= last {
            let answer = self.day(day, &mut hits).await?;
            stale |= answer.stale;
            oldest = oldest.min(answer.entry.loaded_at);
            for e in &answer.entry.events {
                if e.start_utc >= starts && e.end_utc <= ends {
                    if !first_event {
                        out.put_u8(b',');
                    }
                    first_event = false;
                    out.put_slice(&e.json);
                }
            }
            day = match day.succ_opt() {
                Some(d) => d,
                None => break,
            };
        }
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        out.put_slice(SUFFIX);
        let body = out.freeze();
        let fresh_until = oldest + self.ttl() / 2;
        if !stale && Instant::now() < fresh_until {
            self.bodies.insert(key, Arc::new(CachedBody { body: body.clone(), epoch, fresh_until })).await;
        }
        Ok(body)
    }

    /// Days to read for `range`, clamped to the days that hold any plan, with when the bounds were
    /// read and whether they are a stale copy.
    async fn day_span(
        self: &Arc<Self>,
        range: TimeRange,
    ) -> Result<(Option<(NaiveDate, NaiveDate)>, Instant, bool), StoreError> {
        let (bounds, stale) = self.bounds().await?;
        let Some((lo, hi)) = bounds.days else { return Ok((None, bounds.loaded_at, stale)) };
        let first = range.starts_at.map_or(lo, |t| t.date_naive().max(lo));
        let last = range.ends_at.map_or(hi, |t| t.date_naive().min(hi));
        Ok(((first <= last).then_some((first, last)), bounds.loaded_at, stale))
    }

    async fn bounds(self: &Arc<Self>) -> Result<(Bounds, bool), StoreError> {
        let ttl = self.ttl();
        let cached = *self.bounds.read();
        if let Some(b) = cached {
            let age = b.loaded_at.elapsed();
            if b.valid && age < ttl {
                if age >= ttl / 2 && !self.bounds_refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.load_bounds(Some(b.loaded_at)).await;
                        me.bounds_refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok((b, false));
            }
            if self.store_down() {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok((b, true));
            }
        }
        self.load_bounds(None).await
    }

    /// Reads the day bounds unless another caller did meanwhile (a load newer than `older_than`, or
    /// any fresh one). On failure the last copy is served when there is one.
    async fn load_bounds(&self, older_than: Option<Instant>) -> Result<(Bounds, bool), StoreError> {
        let _single = self.bounds_load.lock().await;
        let current = *self.bounds.read();
        if let Some(b) = current {
            let replaced = older_than.is_some_and(|t| b.loaded_at > t);
            if b.valid && (replaced || (older_than.is_none() && b.loaded_at.elapsed() < self.ttl())) {
                return Ok((b, false));
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.store.day_bounds().await {
            Ok(days) => {
                self.store_answered();
                let mut guard = self.bounds.write();
                let raced = self.epoch.load(Ordering::Acquire) != epoch;
                // A racing invalidation may have widened the bounds past what this read saw.
                let days = match (raced, guard.as_ref()) {
                    (true, Some(b)) => merge(days, b.days),
                    _ => days,
                };
                let b = Bounds { days, loaded_at: Instant::now(), valid: !raced };
                *guard = Some(b);
                Ok((b, false))
            }
            Err(e) => {
                self.store_failed(&e);
                match current {
                    Some(b) => {
                        self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                        Ok((b, true))
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// One day's plans: from the cache when fresh (reloaded in the background when past half its
    /// TTL), else loaded once (concurrent callers of the same day wait for the same load); the last
    /// copy when the store fails or is known to be down.
    async fn day(self: &Arc<Self>, day: NaiveDate, hits: &mut u64) -> Result<DayAnswer, StoreError> {
        if let Some(entry) = self.days.get(&day).await {
            let ttl = self.ttl();
            let age = entry.loaded_at.elapsed();
            if !entry.dirty.load(Ordering::Acquire) && age < ttl {
                *hits += 1;
                if age >= ttl / 2 && !self.store_down() && !entry.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    let seen = entry.loaded_at;
                    let old = entry.clone();
                    tokio::spawn(async move {
                        let _ = me.load_day(day, Some(seen)).await;
                        old.refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(DayAnswer { entry, stale: false });
            }
            if self.store_down() {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok(DayAnswer { entry, stale: true });
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        self.load_day(day, None).await
    }

    /// Loads `day` through the cache's single flight. `older_than`: a background refresh of the copy
    /// loaded then (skipped when another load replaced it); `None`: whatever is fresh will do.
    async fn load_day(&self, day: NaiveDate, older_than: Option<Instant>) -> Result<DayAnswer, StoreError> {
        let store = &self.store;
        let mut stale = false;
        let stale_flag = &mut stale;
        let result = self
            .days
            .entry(day)
            .and_try_compute_with(|current| async move {
                if let Some(cur) = &current {
                    let cur = cur.value();
                    let fresh = !cur.dirty.load(Ordering::Acquire) && cur.loaded_at.elapsed() < self.ttl();
                    let replaced = older_than.is_some_and(|t| cur.loaded_at > t);
                    if fresh && (older_than.is_none() || replaced) {
                        return Ok(Op::Nop);
                    }
                }
                let epoch = self.epoch.load(Ordering::Acquire);
                match store.plans_by_day(day, day).await {
                    Ok(rows) => {
                        self.store_answered();
                        let entry = DayEntry::new(rows.iter().map(Prepared::from_row).collect());
                        if self.epoch.load(Ordering::Acquire) != epoch {
                            // A write landed while reading: serve this, but read again next time.
                            entry.dirty.store(true, Ordering::Release);
                        }
                        Ok(Op::Put(Arc::new(entry)))
                    }
                    Err(e) => {
                        self.store_failed(&e);
                        if current.is_some() {
                            if older_than.is_none() {
                                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                            }
                            *stale_flag = true;
                            Ok(Op::Nop)
                        } else {
                            Err(e)
                        }
                    }
                }
            })
            .await;
        let entry = result?
            .into_entry()
            .map(|e| e.into_value())
            .ok_or_else(|| StoreError::Unavailable("day vanished from cache".into()))?;
        Ok(DayAnswer { entry, stale })
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// `bounds` widened to include every day of `days`.
fn widen(bounds: Option<(NaiveDate, NaiveDate)>, days: &[NaiveDate]) -> Option<(NaiveDate, NaiveDate)> {
    days.iter().fold(bounds, |b, &d| merge(b, Some((d, d))))
}

fn merge(
    a: Option<(NaiveDate, NaiveDate)>,
    b: Option<(NaiveDate, NaiveDate)>,
) -> Option<(NaiveDate, NaiveDate)> {
    match (a, b) {
        (Some((alo, ahi)), Some((blo, bhi))) => Some((alo.min(blo), ahi.max(bhi))),
        (x, None) | (None, x) => x,
    }
}
