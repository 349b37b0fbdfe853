//! The day directory: which event days hold plans (with their estimated sizes), loaded once from
//! the store and kept current by the reads of days and by invalidations, so a search visits only
//! the days that hold plans. A load runs in a task of its own, one at a time; searches wait for it
//! only until their store deadline and serve the last copy past it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::{Mutex, RwLock};

use super::counters::SearchCounters;
use super::day::DayEntry;
use super::freshness::Freshness;
use super::health::StoreHealth;
use super::render::EVENT_OVERHEAD;
use crate::store::{DaySize, SharedStore, StoreError};

/// What the directory knows of one non-empty day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DayInfo {
    plans: u64,
    /// Estimated JSON bytes of the day's plans.
    bytes: u64,
}

impl DayInfo {
    /// A day an invalidation reported: it may hold plans now, its size is unknown until read.
    pub(super) const UNKNOWN: DayInfo = DayInfo { plans: 0, bytes: EVENT_OVERHEAD };

    fn of(size: &DaySize) -> Self {
        Self { plans: size.plans, bytes: size.plans * EVENT_OVERHEAD + size.text_bytes }
    }

    /// The exact size of a day as read.
    fn read(entry: &DayEntry) -> Self {
        Self { plans: entry.plans() as u64, bytes: entry.joined().len() as u64 + 1 }
    }

    /// Estimated JSON bytes of the day's plans (exact once the day was read).
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The non-empty event days, in order, as of one load.
struct Listing {
    days: BTreeMap<NaiveDate, DayInfo>,
    loaded_at: Instant,
}

/// A directory load run in a task of its own; `true` when it kept a stale copy.
type DirectoryLoad = Shared<BoxFuture<'static, Result<bool, StoreError>>>;

pub(super) struct Directory {
    listing: RwLock<Option<Listing>>,
    /// One load at a time (the others wait for it and use its result).
    load_lock: tokio::sync::Mutex<()>,
    /// A background refresh is under way.
    refreshing: AtomicBool,
    /// The load searches wait for (up to their deadline), with its task: a finished task is never
    /// waited for again (its shared result is only stored when someone polled it).
    task: Mutex<Option<(tokio::task::AbortHandle, DirectoryLoad)>>,
    store: SharedStore,
    health: Arc<StoreHealth>,
    fresh: Arc<Freshness>,
    counters: Arc<SearchCounters>,
}

impl Directory {
    pub(super) fn new(
        store: SharedStore,
        health: Arc<StoreHealth>,
        fresh: Arc<Freshness>,
        counters: Arc<SearchCounters>,
    ) -> Self {
        Self {
            listing: RwLock::new(None),
            load_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            task: Mutex::new(None),
            store,
            health,
            fresh,
            counters,
        }
    }

    /// True once the directory was read from the store at least once.
    pub(super) fn warmed(&self) -> bool {
        self.listing.read().is_some()
    }

    /// The number of non-empty days listed.
    pub(super) fn len(&self) -> usize {
        self.listing.read().as_ref().map_or(0, |d| d.days.len())
    }

    /// `days` (ascending) with what the directory knows of each and whether it continues the run
    /// of the one before (the directory lists no day between them).
    pub(super) fn runs_of(&self, days: impl Iterator<Item = NaiveDate>) -> Vec<(NaiveDate, DayInfo, bool)> {
        let guard = self.listing.read();
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

    /// The non-empty days between `first` and `last` (open ends: every day), with when the
    /// directory was read and whether it is a stale copy.
    pub(super) async fn days_in(
        self: &Arc<Self>,
        first: Option<NaiveDate>,
        last: Option<NaiveDate>,
        deadline: Instant,
    ) -> Result<(Vec<(NaiveDate, DayInfo)>, Instant, bool), StoreError> {
        let stale = self.ensure(deadline).await?;
        let lo = first.map_or(Bound::Unbounded, Bound::Included);
        let hi = last.map_or(Bound::Unbounded, Bound::Included);
        let guard = self.listing.read();
        let dir = guard.as_ref().ok_or_else(|| StoreError::Unavailable("day directory vanished".into()))?;
        let days = dir.days.range((lo, hi)).map(|(d, i)| (*d, *i)).collect();
        Ok((days, dir.loaded_at, stale))
    }

    /// Makes sure a directory is loaded: a fresh one is used as is (refreshed in the background past
    /// half its TTL); an expired one is read again, or served stale when the store is down or does
    /// not answer by `deadline`. Returns whether the directory in place is a stale copy.
    async fn ensure(self: &Arc<Self>, deadline: Instant) -> Result<bool, StoreError> {
        let ttl = self.fresh.ttl();
        let loaded_at = self.listing.read().as_ref().map(|d| d.loaded_at);
        if let Some(at) = loaded_at {
            let age = at.elapsed();
            if age < ttl {
                if age >= ttl / 2 && !self.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.load(Some(at)).await;
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(false);
            }
            if self.health.down() {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let load = self.task();
        if loaded_at.is_none() {
            return self.health.answer_or_hung(load, deadline).await;
        }
        match self.health.by_deadline(load, deadline).await {
            Some(result) => result,
            None => {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// The load under way, or a new one in a task of its own: a search waits for it only until its
    /// deadline, and the load (and its lock) never holds a search longer.
    fn task(self: &Arc<Self>) -> DirectoryLoad {
        let mut task = self.task.lock();
        if let Some((running, load)) = task.as_ref() {
            if !running.is_finished() {
                return load.clone();
            }
        }
        let me = self.clone();
        let handle = tokio::spawn(async move { me.load(None).await });
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
    /// any fresh one). On failure the last copy is served when there is one; returns whether it is.
    pub(super) async fn load(&self, older_than: Option<Instant>) -> Result<bool, StoreError> {
        let _single = self.load_lock.lock().await;
        if let Some(at) = self.listing.read().as_ref().map(|d| d.loaded_at) {
            let replaced = older_than.is_some_and(|t| at > t);
            if replaced || (older_than.is_none() && at.elapsed() < self.fresh.ttl()) {
                return Ok(false);
            }
        }
        let epoch = self.fresh.epoch();
        match self.store.day_directory().await {
            Ok(sizes) => {
                self.health.answered();
                let mut days: BTreeMap<NaiveDate, DayInfo> =
                    sizes.iter().map(|s| (s.day, DayInfo::of(s))).collect();
                let mut guard = self.listing.write();
                if self.fresh.changed_since(epoch) {
                    // An invalidation raced with the read: keep every day the old copy knew (a day
                    // listed in excess costs one empty read, a day missing would hide plans).
                    if let Some(old) = guard.as_ref() {
                        for (d, i) in &old.days {
                            days.entry(*d).or_insert(*i);
                        }
                    }
                }
                tracing::debug!(days = days.len(), "day directory loaded");
                *guard = Some(Listing { days, loaded_at: Instant::now() });
                Ok(false)
            }
            Err(e) => {
                self.health.failed(&e);
                if self.listing.read().is_some() {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// What a read of `from..=to` showed: exact sizes of the days it found, and (unless a write
    /// raced with it) no listing for the days it found empty.
    pub(super) fn note_read(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        entries: &BTreeMap<NaiveDate, Arc<DayEntry>>,
        raced: bool,
    ) {
        let mut guard = self.listing.write();
        let Some(dir) = guard.as_mut() else { return };
        if !raced {
            let empty: Vec<NaiveDate> =
                dir.days.range(from..=to).map(|(d, _)| *d).filter(|d| !entries.contains_key(d)).collect();
            for d in empty {
                dir.days.remove(&d);
            }
        }
        for (day, entry) in entries {
            dir.days.insert(*day, DayInfo::read(entry));
        }
    }

    /// Days a write changed: listed (size unknown) until a read shows them empty.
    pub(super) fn note_changed(&self, days: &[NaiveDate]) {
        if let Some(dir) = self.listing.write().as_mut() {
            for day in days {
                dir.days.entry(*day).or_insert(DayInfo::UNKNOWN);
            }
        }
    }
}
