//! Answers searches from the store through a cache of per-day results.
//!
//! A plan lives on the day bucket of its start instant (UTC date). Since a matching plan starts
//! inside the searched range, a search reads only the buckets from `date(starts_at)` to
//! `date(ends_at)`, clamped to the days that hold any plan. Each bucket keeps every plan's
//! `EventSummary` JSON rendered once, so a cached answer is a concatenation of ready-made bytes.
//!
//! Freshness: the batch writer calls [`Searcher::invalidate`] for the days it changed (the next
//! search reloads them); entries older than the TTL are reloaded too, which covers writes made by
//! another process. When the store fails, the last loaded copy of a day is served instead.

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
    bytes: u32,
}

impl DayEntry {
    fn new(events: Vec<Prepared>) -> Self {
        let bytes = events.iter().map(|e| e.json.len() + 64).sum::<usize>() + 64;
        Self {
            events,
            loaded_at: Instant::now(),
            dirty: AtomicBool::new(false),
            bytes: bytes.min(u32::MAX as usize) as u32,
        }
    }
}

#[derive(Debug, Default)]
pub struct SearchCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub store_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bounds {
    days: Option<(NaiveDate, NaiveDate)>,
    loaded_at: Instant,
    /// False when an invalidation raced with the load: reload at next use.
    valid: bool,
}

pub struct Searcher {
    store: SharedStore,
    days: moka::future::Cache<NaiveDate, Arc<DayEntry>>,
    bounds: RwLock<Option<Bounds>>,
    ttl: RwLock<Duration>,
    /// Bumped by every invalidation; a load that saw it move may hold pre-write data.
    epoch: AtomicU64,
    pub counters: SearchCounters,
}

const PREFIX: &[u8] = br#"{"data":{"events":["#;
const SUFFIX: &[u8] = br#"]},"error":null}"#;

impl Searcher {
    pub fn new(store: SharedStore, settings: &SearchSettings) -> Self {
        let days = moka::future::Cache::builder()
            .max_capacity(settings.cache_bytes)
            .weigher(|_k: &NaiveDate, v: &Arc<DayEntry>| v.bytes)
            .build();
        Self {
            store,
            days,
            bounds: RwLock::new(None),
            ttl: RwLock::new(settings.cache_ttl),
            epoch: AtomicU64::new(0),
            counters: Default::default(),
        }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.write() = ttl;
    }

    /// Called by the batch writer after a successful flush with the days it touched.
    pub async fn invalidate(&self, days: &[NaiveDate]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for day in days {
            if let Some(entry) = self.days.get(day).await {
                entry.dirty.store(true, Ordering::Release);
            }
        }
        let mut bounds = self.bounds.write();
        if let Some(b) = bounds.as_mut() {
            for &d in days {
                b.days = Some(match b.days {
                    None => (d, d),
                    Some((lo, hi)) => (lo.min(d), hi.max(d)),
                });
            }
        }
    }

    /// The full response body of `GET /search` for `range`.
    pub async fn search(&self, range: TimeRange) -> Result<Bytes, StoreError> {
        let Some((first, last)) = self.day_span(range).await? else {
            return Ok(Bytes::from_static(br#"{"data":{"events":[]},"error":null}"#));
        };
        let starts = range.starts_at.map_or(i64::MIN, |t| t.timestamp_micros());
        let ends = range.ends_at.map_or(i64::MAX, |t| t.timestamp_micros());
        let mut out = BytesMut::with_capacity(4096);
        out.put_slice(PREFIX);
        let mut first_event = true;
        let mut day = first;
        while day <= last {
            let entry = self.day(day).await?;
            for e in &entry.events {
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
        out.put_slice(SUFFIX);
        Ok(out.freeze())
    }

    /// Days to read for `range`, clamped to the days that hold any plan.
    async fn day_span(&self, range: TimeRange) -> Result<Option<(NaiveDate, NaiveDate)>, StoreError> {
        let Some((lo, hi)) = self.bounds().await? else { return Ok(None) };
        let first = range.starts_at.map_or(lo, |t| t.date_naive().max(lo));
        let last = range.ends_at.map_or(hi, |t| t.date_naive().min(hi));
        Ok((first <= last).then_some((first, last)))
    }

    async fn bounds(&self) -> Result<Option<(NaiveDate, NaiveDate)>, StoreError> {
        let ttl = *self.ttl.read();
        let cached = *self.bounds.read();
        if let Some(b) = cached {
            if b.valid && b.loaded_at.elapsed() < ttl {
                return Ok(b.days);
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.store.day_bounds().await {
            Ok(days) => {
                let valid = self.epoch.load(Ordering::Acquire) == epoch;
                *self.bounds.write() = Some(Bounds { days, loaded_at: Instant::now(), valid });
                Ok(days)
            }
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                match cached {
                    Some(b) => {
                        self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                        Ok(b.days)
                    }
                    None => Err(e),
                }
            }
        }
    }

    fn is_fresh(&self, entry: &DayEntry) -> bool {
        !entry.dirty.load(Ordering::Acquire) && entry.loaded_at.elapsed() < *self.ttl.read()
    }

    /// One day's plans: from the cache when fresh, else loaded once (concurrent callers of the same
    /// day wait for the same load) and, when the store fails, the last copy.
    async fn day(&self, day: NaiveDate) -> Result<Arc<DayEntry>, StoreError> {
        if let Some(entry) = self.days.get(&day).await {
            if self.is_fresh(&entry) {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry);
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let store = &self.store;
        let result = self
            .days
            .entry(day)
            .and_try_compute_with(|current| async move {
                if let Some(cur) = &current {
                    if self.is_fresh(cur.value()) {
                        return Ok(Op::Nop);
                    }
                }
                let epoch = self.epoch.load(Ordering::Acquire);
                match store.plans_by_day(day, day).await {
                    Ok(rows) => {
                        let entry = DayEntry::new(rows.iter().map(Prepared::from_row).collect());
                        if self.epoch.load(Ordering::Acquire) != epoch {
                            // A write landed while reading: serve this, but read again next time.
                            entry.dirty.store(true, Ordering::Release);
                        }
                        Ok(Op::Put(Arc::new(entry)))
                    }
                    Err(e) => {
                        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                        if current.is_some() {
                            self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                            Ok(Op::Nop)
                        } else {
                            Err(e)
                        }
                    }
                }
            })
            .await;
        match result {
            Ok(r) => r
                .into_entry()
                .map(|e| e.into_value())
                .ok_or_else(|| StoreError::Unavailable("day vanished from cache".into())),
            Err(e) => Err(e),
        }
    }

    /// For `/ready`: true once the day bounds were read from the store at least once.
    pub fn warmed(&self) -> bool {
        self.bounds.read().is_some()
    }
}
