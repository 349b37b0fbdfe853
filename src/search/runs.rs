//! Reads of a search's days: which are cached, which join a read in flight, and new store
//! queries over runs of consecutive missing days.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use futures::future::FutureExt;

use super::day::{by_day, DayEntry};
use super::lane::Lane;
use super::state::{micros, DayInfo, Inner, RunLoad, RunResult};
use crate::store::{ReadSize, StoreError};

/// A day of a search as classified before anything is awaited.
pub(super) enum Slot {
    /// Cached; `true` when it is a stale copy served because the store is down.
    Ready(Arc<DayEntry>, bool),
    /// To read, with the expired or invalidated copy to fall back on.
    Missing(NaiveDate, Option<Arc<DayEntry>>),
}

/// A piece of a search's answer, resolved in day order.
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

impl Inner {
    /// How each of `days` (ascending) will be answered, in day order: fresh cached days as they are
    /// (past half their TTL they are also reloaded in the background), days another search is
    /// reading from that load, the other missing days from new runs of consecutive days.
    pub(super) async fn parts(self: &Arc<Self>, days: &[(NaiveDate, DayInfo)]) -> Vec<Part> {
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
            self.refresh_in_background(refresh);
        }
        self.counters.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let (loads, own) =
            if missing.is_empty() { (HashMap::new(), 0..0) } else { self.start_runs_owned(&missing) };
        group_parts(slots, &loads, &own)
    }

    /// Reloads days in their refresh window in a task of its own, while searches serve the
    /// current copies.
    fn refresh_in_background(self: &Arc<Self>, refresh: Vec<(NaiveDate, DayInfo, bool)>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut loads: Vec<(u64, RunLoad)> = me.start_runs(&refresh).into_values().collect();
            loads.sort_by_key(|(id, _)| *id);
            loads.dedup_by_key(|(id, _)| *id);
            futures::future::join_all(loads.into_iter().map(|(_, l)| l)).await;
        });
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
    /// rest, each under [`RUN_BYTES`](super::RUN_BYTES).
    pub(super) fn start_runs(
        self: &Arc<Self>,
        days: &[(NaiveDate, DayInfo, bool)],
    ) -> HashMap<NaiveDate, (u64, RunLoad)> {
        self.start_runs_owned(days).0
    }

    /// [`Self::start_runs`], with the ids of the runs this call started. A short call (all its
    /// days under [`SHORT_READ_BYTES`](super::SHORT_READ_BYTES)) reads on the short lane and joins
    /// only short reads in flight: a day that a wide run is reading is read again on its own, since
    /// waiting for a wide run costs the whole run (measured: most slow 1-day searches of the
    /// replay were waiting on a wide run they joined). Wider calls read on the wide lane and join
    /// any read in flight. Runs leave their lane earliest deadline first (see `lane`); a call that
    /// joins a run brings its deadline forward to the call's own.
    fn start_runs_owned(
        self: &Arc<Self>,
        days: &[(NaiveDate, DayInfo, bool)],
    ) -> (HashMap<NaiveDate, (u64, RunLoad)>, Range<u64>) {
        let mut loads: HashMap<NaiveDate, (u64, RunLoad)> = HashMap::with_capacity(days.len());
        let mut runs: Vec<Vec<NaiveDate>> = Vec::new();
        let mut in_flight = self.in_flight.lock();
        let budget = self.run_bytes.load(Ordering::Relaxed);
        let bytes = days.iter().map(|(_, i, _)| i.bytes).sum::<u64>();
        let short = bytes <= self.short_read_bytes.load(Ordering::Relaxed);
        let (lane, size) = self.lane(short);
        let deadline = lane.deadline_after(bytes);
        let mut run_bytes = 0;
        let mut extend = false;
        for &(day, info, continues) in days {
            if let Some((id, load, _, theirs)) =
                in_flight.get(&day).filter(|(_, _, wide, _)| !(short && *wide))
            {
                theirs.advance_to(deadline.nanos());
                loads.insert(day, (*id, load.clone()));
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
        let first = self.next_run.load(Ordering::Relaxed);
        for run in runs {
            let id = self.next_run.fetch_add(1, Ordering::Relaxed);
            let (from, to) = (run[0], run[run.len() - 1]);
            let (me, deadline) = (self.clone(), deadline.fork());
            let permit = lane.clone().acquire(deadline.clone());
            let task = tokio::spawn(async move {
                let queued = Instant::now();
                let _permit = permit.await;
                me.counters.run_queued_us.fetch_add(micros(queued.elapsed()), Ordering::Relaxed);
                me.load_run(id, from, to, size).await
            });
            let load: RunLoad = async move {
                task.await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("day load task failed: {e}"))))
            }
            .boxed()
            .shared();
            for day in &run {
                in_flight.insert(*day, (id, load.clone(), !short, deadline.clone()));
                loads.insert(*day, (id, load.clone()));
            }
        }
        // Ids are taken under the `in_flight` lock, so this call's are contiguous.
        let own = first..self.next_run.load(Ordering::Relaxed);
        (loads, own)
    }

    /// The lane of a short or a wide call, with the size its store reads give for their priority.
    fn lane(&self, short: bool) -> (&Arc<Lane>, ReadSize) {
        if short {
            (&self.short_lane, ReadSize::Short)
        } else {
            (&self.wide_lane, ReadSize::Wide)
        }
    }

    /// One store query for the days `from..=to`, at the priority of the search's `size`: caches
    /// each day's entry, brings the directory up to date for those days, and releases them from
    /// `in_flight`.
    pub(super) async fn load_run(
        self: Arc<Self>,
        id: u64,
        from: NaiveDate,
        to: NaiveDate,
        size: ReadSize,
    ) -> RunResult {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.counters.run_queries.fetch_add(1, Ordering::Relaxed);
        let asked = Instant::now();
        let result = self.store.plans_by_day_sized(from, to, size).await;
        self.counters.run_store_us.fetch_add(micros(asked.elapsed()), Ordering::Relaxed);
        let outcome = match result {
            Ok(rows) => {
                self.store_answered();
                // Rendering a run is CPU work of up to a few tens of milliseconds: off the runtime's
                // threads, so searches answered from memory never queue behind it.
                let rendering = Instant::now();
                let entries =
                    tokio::task::spawn_blocking(move || by_day(&rows, from, to)).await.map_err(|e| {
                        StoreError::Unavailable(format!("rendering days {from}..={to} failed: {e}"))
                    });
                self.counters.run_render_us.fetch_add(micros(rendering.elapsed()), Ordering::Relaxed);
                let entries = match entries {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.in_flight.lock().retain(|_, (run, _, _, _)| *run != id);
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
        self.in_flight.lock().retain(|_, (run, _, _, _)| *run != id);
        tracing::trace!(%from, %to, ok = outcome.is_ok(), "day run loaded");
        outcome
    }
}

/// The parts of a search in day order: `slots` as classified, with `loads` reading the missing days.
fn group_parts(slots: Vec<Slot>, loads: &HashMap<NaiveDate, (u64, RunLoad)>, own: &Range<u64>) -> Vec<Part> {
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
                    _ => parts.push(Part::Load {
                        id,
                        own: own.contains(&id),
                        load,
                        from: day,
                        to: day,
                        olds: vec![(day, old)],
                    }),
                }
            }
        }
    }
    parts
}
