//! The day cache: each day's rendered plans in a byte-bounded moka cache, how the days of a search
//! are answered (fresh copies, copies being reloaded, reads of runs of missing days, stale copies
//! while the store is down), the reads that fill it, and the reloads an invalidation asks for.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;

use super::counters::{micros, SearchCounters};
use super::day::{by_day, DayEntry, Reloading, Serve};
use super::directory::{DayInfo, Directory};
use super::freshness::Freshness;
use super::health::StoreHealth;
use super::runs::{Loads, RunLoad, RunResult, Runs};
use crate::store::{ReadSize, SharedStore, StoreError};

/// Reads of the same days an invalidation makes before it returns (a read that raced with a later
/// write is repeated; a store written faster than it is read is not chased forever).
const RELOAD_ROUNDS: usize = 3;

pub(super) struct DayCache {
    days: moka::future::Cache<NaiveDate, Arc<DayEntry>>,
    runs: Arc<Runs>,
    /// Told what each read showed (sizes, days found empty).
    directory: Arc<Directory>,
    health: Arc<StoreHealth>,
    fresh: Arc<Freshness>,
    store: SharedStore,
    counters: Arc<SearchCounters>,
}

/// A day of a search as classified before anything is awaited.
enum Slot {
    /// Cached; `true` when it is a stale copy (the store is down, or the day is being reloaded).
    Ready(Arc<DayEntry>, bool),
    /// To read, with the expired or invalidated copy to fall back on.
    Missing(NaiveDate, Option<Arc<DayEntry>>),
}

/// A piece of a search's answer, resolved in day order ([`DayCache::resolve`]).
pub(super) enum Part {
    Ready(Arc<DayEntry>, bool),
    /// Consecutive days `from..=to` read by one load (`id`), with their last copies; `own` when
    /// this search started the load (else it joined another's).
    Load {
        id: u64,
        own: bool,
        load: RunLoad,
        from: NaiveDate,
        to: NaiveDate,
        olds: Vec<(NaiveDate, Option<Arc<DayEntry>>)>,
    },
}

impl Part {
    /// `None` for a cached day; for a read, whether this search started it.
    pub(super) fn started_by_this_search(&self) -> Option<bool> {
        match self {
            Part::Ready(..) => None,
            Part::Load { own, .. } => Some(*own),
        }
    }
}

impl DayCache {
    pub(super) fn new(
        cache_bytes: u64,
        store: SharedStore,
        directory: Arc<Directory>,
        health: Arc<StoreHealth>,
        fresh: Arc<Freshness>,
        counters: Arc<SearchCounters>,
    ) -> Self {
        let days = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &NaiveDate, v: &Arc<DayEntry>| v.weight())
            .build();
        let runs = Arc::new(Runs::new(counters.clone()));
        Self { days, runs, directory, health, fresh, store, counters }
    }

    /// Bounds the estimated bytes of one run query ([`RUN_BYTES`](super::RUN_BYTES) by default).
    pub(super) fn set_run_bytes(&self, bytes: u64) {
        self.runs.set_run_bytes(bytes);
    }

    /// Bounds the estimated bytes of a read on the short lane.
    pub(super) fn set_short_read_bytes(&self, bytes: u64) {
        self.runs.set_short_read_bytes(bytes);
    }

    /// How each of `days` (ascending) will be answered, in day order: fresh cached days as they are
    /// (past half their TTL they are also reloaded in the background), days another search is
    /// reading from that load, the other missing days from new runs of consecutive days.
    pub(super) async fn parts(self: &Arc<Self>, days: &[(NaiveDate, DayInfo)]) -> Vec<Part> {
        let ttl = self.fresh.ttl();
        let down = self.health.down();
        let mut slots: Vec<Slot> = Vec::with_capacity(days.len());
        // Each day with whether it continues a run (the previous listed day is in the same list).
        let mut missing: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        let mut refresh: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        let mut hits = 0;
        let (mut prev_missing, mut prev_refresh) = (false, false);
        for &(day, info) in days {
            let (mut is_missing, mut is_refresh) = (false, false);
            let cached = self.days.get(&day).await;
            match (cached.as_ref().map(|entry| entry.serve(ttl, down)), cached) {
                (Some(Serve::Fresh { refresh: due }), Some(entry)) => {
                    hits += 1;
                    if due {
                        refresh.push((day, info, prev_refresh));
                        is_refresh = true;
                    }
                    slots.push(Slot::Ready(entry, false));
                }
                (Some(Serve::Previous), Some(entry)) => {
                    self.counters.previous_served.fetch_add(1, Ordering::Relaxed);
                    slots.push(Slot::Ready(entry, true));
                }
                (Some(Serve::Stale), Some(entry)) => {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    slots.push(Slot::Ready(entry, true));
                }
                (_, old) => {
                    missing.push((day, info, prev_missing));
                    slots.push(Slot::Missing(day, old));
                    is_missing = true;
                }
            }
            (prev_missing, prev_refresh) = (is_missing, is_refresh);
        }
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        if !refresh.is_empty() {
            self.refresh_in_background(refresh);
        }
        self.counters.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let loads = if missing.is_empty() { Loads::none() } else { self.start_runs(&missing) };
        group_parts(slots, &loads)
    }

    /// The entries of one part, in day order, and whether a stale copy stands in for a failed read.
    pub(super) async fn resolve(
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
            self.health.by_deadline(load, deadline).await.unwrap_or_else(|| {
                Err(StoreError::Unavailable(format!("days {from}..={to} not read by the search deadline")))
            })
        } else {
            self.health.answer_or_hung(load, deadline).await
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

    /// Marks the cached copies of `days` changed by a write; returns the ones searches use (now
    /// marked reloading), in day order, for [`Self::reload`]. While the store is down none is
    /// reloaded: the next search after the backoff reads them.
    pub(super) async fn invalidate(&self, days: &[NaiveDate]) -> Vec<(NaiveDate, Arc<DayEntry>)> {
        let mut used = Vec::new();
        for day in days {
            if let Some(entry) = self.days.get(day).await {
                if entry.invalidate(!self.health.down()) {
                    used.push((*day, entry.clone()));
                }
            }
        }
        used.sort_unstable_by_key(|(d, _)| *d);
        used
    }

    /// Reloads the `marked` days (ascending, cached, dirty and marked reloading) once each, joining
    /// reads already in flight, while searches keep serving their previous copies; returns once the
    /// new copies are cached, or at the store deadline (the reads go on, searches then wait for
    /// them as for any miss). A read that raced with a later write leaves its copy dirty: it is read
    /// again, up to [`RELOAD_ROUNDS`] times, so the copies cached on return hold every write before
    /// the call.
    pub(super) async fn reload(self: &Arc<Self>, marked: Vec<(NaiveDate, Arc<DayEntry>)>) {
        let deadline = Instant::now() + self.health.deadline();
        let days: Vec<NaiveDate> = marked.iter().map(|(d, _)| *d).collect();
        let mut entries = marked;
        for round in 0..RELOAD_ROUNDS {
            if round > 0 {
                entries.clear();
                for day in &days {
                    if let Some(e) = self.days.get(day).await.filter(|e| e.is_dirty()) {
                        entries.push((*day, e));
                    }
                }
            }
            if entries.is_empty() {
                return;
            }
            let reloading = Reloading::mark(entries.iter().map(|(_, e)| e.clone()).collect());
            self.counters.reloaded_days.fetch_add(entries.len() as u64, Ordering::Relaxed);
            let todo = self.directory.runs_of(entries.iter().map(|(d, _)| *d));
            let all = futures::future::join_all(self.start_runs(&todo).distinct());
            let done = self.health.by_deadline(all, deadline).await;
            drop(reloading);
            if done.is_none_or(|results| results.iter().any(Result::is_err)) {
                return;
            }
        }
    }

    /// Reloads days in their refresh window in a task of its own, while searches serve the
    /// current copies.
    fn refresh_in_background(self: &Arc<Self>, refresh: Vec<(NaiveDate, DayInfo, bool)>) {
        let me = self.clone();
        tokio::spawn(async move {
            futures::future::join_all(me.start_runs(&refresh).distinct()).await;
        });
    }

    /// Loads for `days` (see [`Runs::start`]), each run read by [`Self::read`].
    fn start_runs(self: &Arc<Self>, days: &[(NaiveDate, DayInfo, bool)]) -> Loads {
        let me = self.clone();
        self.runs.start(days, move |from, to, size| me.clone().read(from, to, size))
    }

    /// One store query for the days `from..=to`, at the priority of the search's `size`: caches
    /// each day's entry and brings the directory up to date for those days.
    async fn read(self: Arc<Self>, from: NaiveDate, to: NaiveDate, size: ReadSize) -> RunResult {
        let epoch = self.fresh.epoch();
        self.counters.run_queries.fetch_add(1, Ordering::Relaxed);
        let asked = Instant::now();
        let result = self.store.plans_by_day_sized(from, to, size).await;
        self.counters.run_store_us.fetch_add(micros(asked.elapsed()), Ordering::Relaxed);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                self.health.failed(&e);
                tracing::trace!(%from, %to, ok = false, "day run loaded");
                return Err(e);
            }
        };
        self.health.answered();
        // Rendering a run is CPU work of up to a few tens of milliseconds: on an answer thread, below
        // the workers' priority, so searches answered from memory never queue behind it.
        let rendering = Instant::now();
        let entries = crate::cpu::answers::run(move || by_day(&rows, from, to)).await;
        self.counters.run_render_us.fetch_add(micros(rendering.elapsed()), Ordering::Relaxed);
        let raced = self.fresh.changed_since(epoch);
        if raced {
            // A write landed while reading: serve this, but read again next time.
            entries.values().for_each(|entry| entry.mark_dirty());
        }
        for (day, entry) in &entries {
            self.days.insert(*day, entry.clone()).await;
        }
        self.directory.note_read(from, to, &entries, raced);
        tracing::trace!(%from, %to, ok = true, "day run loaded");
        Ok(Arc::new(entries))
    }
}

/// The parts of a search in day order: `slots` as classified, with `loads` reading the missing days.
fn group_parts(slots: Vec<Slot>, loads: &Loads) -> Vec<Part> {
    // Consecutive missing days of one load become one part (a run's new days come with it).
    let mut parts: Vec<Part> = Vec::new();
    for slot in slots {
        match slot {
            Slot::Ready(entry, stale) => parts.push(Part::Ready(entry, stale)),
            Slot::Missing(day, old) => {
                let (id, load, own) = loads.of(day);
                match parts.last_mut() {
                    Some(Part::Load { id: last_id, to, olds, .. }) if *last_id == id => {
                        *to = day;
                        olds.push((day, old));
                    }
                    _ => parts.push(Part::Load { id, own, load, from: day, to: day, olds: vec![(day, old)] }),
                }
            }
        }
    }
    parts
}
