//! One day's plans rendered once, joined in answer order: the unit the cache keeps, with the flags
//! that say how searches may use this copy. Only this file changes the flags: searches ask
//! [`DayEntry::serve`], invalidations [`DayEntry::invalidate`] and [`Reloading`], a read that raced
//! with a write [`DayEntry::mark_dirty`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDate;

use super::render::{write_event, EVENT_OVERHEAD};
use crate::domain::EventRow;

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
pub(super) struct DayEntry {
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

/// How a search may use a cached copy ([`DayEntry::serve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serve {
    /// Fresh; `refresh` when this search is the one to reload it in the background (past half its
    /// TTL, the store up, no refresh under way).
    Fresh { refresh: bool },
    /// Changed and being reloaded once for everyone: the previous copy, without waiting.
    Previous,
    /// Expired or changed, and the store is down: the last copy.
    Stale,
    /// Expired or changed: read it again (this copy is the fallback).
    Read,
}

impl DayEntry {
    /// `rows` must be one day's plans in answer order.
    pub(super) fn new(rows: &[EventRow]) -> Self {
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

    /// When this copy was read from the store.
    pub(super) fn loaded_at(&self) -> Instant {
        self.loaded_at
    }

    /// The plans of the day.
    pub(super) fn plans(&self) -> usize {
        self.spans.len()
    }

    /// Every plan's JSON in answer order, separated by commas.
    pub(super) fn joined(&self) -> &Bytes {
        &self.joined
    }

    /// Whether `[starts, ends]` (unix microseconds) holds every plan of the day.
    pub(super) fn within(&self, starts: i64, ends: i64) -> bool {
        starts <= self.min_start && self.max_end <= ends
    }

    /// What the entry costs the cache's byte budget.
    pub(super) fn weight(&self) -> u32 {
        self.bytes
    }

    /// How a search may use this copy under `ttl` while the store is `store_down` or not; notes
    /// that a search uses it (fresh or previous), and claims its background refresh for the caller
    /// when one is due.
    pub(super) fn serve(&self, ttl: Duration, store_down: bool) -> Serve {
        let age = self.loaded_at.elapsed();
        if !self.dirty.load(Ordering::Acquire) && age < ttl {
            let refresh = age >= ttl / 2 && !store_down && !self.refreshing.swap(true, Ordering::AcqRel);
            self.mark_used();
            return Serve::Fresh { refresh };
        }
        if self.reloading.load(Ordering::Acquire) {
            // Marked stale by the caller, so no finished body is kept from it.
            self.mark_used();
            return Serve::Previous;
        }
        if store_down {
            return Serve::Stale;
        }
        Serve::Read
    }

    /// Notes that a search uses this copy (a load first, so hot days do not share a written line).
    pub(super) fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// A write changed the day: this copy is read again before it is served as fresh. When
    /// `may_reload` and searches use it, it is first marked reloading (so a search never finds a
    /// used copy dirty and not reloading) and `true` says the caller must reload it.
    pub(super) fn invalidate(&self, may_reload: bool) -> bool {
        let reload = may_reload && self.used.load(Ordering::Relaxed);
        if reload {
            self.reloading.store(true, Ordering::Release);
        }
        self.dirty.store(true, Ordering::Release);
        reload
    }

    /// A write landed while this copy was read: it is served, but read again next time.
    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether a write changed the day since this copy was read.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Appends the plans inside `[starts, ends]` to `out`; `first` tracks whether a comma is due.
    pub(super) fn write_matching(&self, starts: i64, ends: i64, out: &mut BytesMut, first: &mut bool) {
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
        if self.within(starts, ends) {
            put(&self.joined, out);
            return;
        }
        for s in &self.spans {
            if s.start_utc >= starts && s.end_utc <= ends {
                put(&self.joined[s.at as usize..(s.at + s.len) as usize], out);
            }
        }
    }

    /// The instants of the day's `i`th plan (for tests).
    #[cfg(test)]
    pub(super) fn instants(&self, i: usize) -> (i64, i64) {
        (self.spans[i].start_utc, self.spans[i].end_utc)
    }

    /// Earliest start and latest end of the day's plans (for tests).
    #[cfg(test)]
    pub(super) fn bounds(&self) -> (i64, i64) {
        (self.min_start, self.max_end)
    }
}

/// The copies an invalidation is reloading: searches serve them meanwhile. Cleared on drop, so an
/// invalidation that is cancelled or gives up never leaves a copy served as if it were reloading.
pub(super) struct Reloading(Vec<Arc<DayEntry>>);

impl Reloading {
    pub(super) fn mark(entries: Vec<Arc<DayEntry>>) -> Self {
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

/// Rows of `from..=to` (in answer order) grouped into one entry per day.
pub(super) fn by_day(
    rows: &[EventRow],
    from: NaiveDate,
    to: NaiveDate,
) -> BTreeMap<NaiveDate, Arc<DayEntry>> {
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
