//! One day's plans rendered once, joined in answer order: the unit the cache keeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::NaiveDate;

use super::render::{write_event, EVENT_OVERHEAD};
use crate::domain::EventRow;

/// Where one plan's JSON sits in its day's joined bytes, with its instants (unix microseconds).
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) start_utc: i64,
    pub(super) end_utc: i64,
    pub(super) at: u32,
    pub(super) len: u32,
}

/// One day's plans, ready to be served.
#[derive(Debug)]
pub(super) struct DayEntry {
    /// Every plan's JSON in answer order, separated by commas.
    pub(super) joined: Bytes,
    pub(super) spans: Vec<Span>,
    /// Earliest start and latest end of the day's plans: a range covering both takes `joined` whole.
    pub(super) min_start: i64,
    pub(super) max_end: i64,
    pub(super) loaded_at: Instant,
    /// Set by an invalidation: reload before serving, fall back to this copy on error.
    pub(super) dirty: AtomicBool,
    /// A background reload of this copy is under way (at most one).
    pub(super) refreshing: AtomicBool,
    /// A search used this copy: an invalidation reloads it at once instead of leaving it to the
    /// next search (days nobody searches cost nothing until someone does).
    pub(super) used: AtomicBool,
    /// An invalidation is reloading this (dirty) copy and waits for it: searches serve this copy
    /// meanwhile instead of waiting for the store.
    pub(super) reloading: AtomicBool,
    pub(super) bytes: u32,
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

    /// Notes that a search uses this copy (a load first, so hot days do not share a written line).
    pub(super) fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
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
