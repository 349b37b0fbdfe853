//! Reads of missing days from the store, single flight: consecutive missing days are read by one
//! store query per run (bounded in estimated bytes), each run waits for its place in a lane
//! ([`super::lane`]), and a day already being read is joined instead of read again. What a run does
//! with its rows is its caller's (the day cache renders and keeps them).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::Future;
use parking_lot::Mutex;

use super::counters::{micros, SearchCounters};
use super::day::DayEntry;
use super::directory::DayInfo;
use super::lane::{Deadline, Lanes};
use crate::store::{ReadSize, StoreError};

/// Upper bound of the estimated JSON bytes one store query of a run of days may bring: a wide cold
/// range is read in several queries of about this size, [`RUNS_IN_FLIGHT`](super::RUNS_IN_FLIGHT)
/// at once, so no single query holds the whole range in flight and the first parts are rendered
/// while the rest arrive.
pub const RUN_BYTES: u64 = 4 << 20;

/// The result of one store query over a run of days: the entries of every day it read.
pub(super) type RunResult = Result<Arc<BTreeMap<NaiveDate, Arc<DayEntry>>>, StoreError>;
/// A run's read, shared by every search that waits for one of its days.
pub(super) type RunLoad = Shared<BoxFuture<'static, RunResult>>;

/// A day being read: by which run, with the shared load, whether it is a wide read (which short
/// reads do not join) and the run's deadline in its lane (which a search joining it brings forward
/// to its own).
struct Reading {
    run: u64,
    load: RunLoad,
    wide: bool,
    deadline: Deadline,
}

pub(super) struct Runs {
    in_flight: Mutex<HashMap<NaiveDate, Reading>>,
    next_run: AtomicU64,
    /// Estimated bytes one run query may bring ([`RUN_BYTES`] unless set).
    run_bytes: AtomicU64,
    lanes: Lanes,
    counters: Arc<SearchCounters>,
}

/// The loads that read a set of days ([`Runs::start`]).
pub(super) struct Loads {
    by_day: HashMap<NaiveDate, (u64, RunLoad)>,
    /// The runs this call started (ids are contiguous).
    own: Range<u64>,
}

impl Loads {
    /// No load: nothing was missing.
    pub(super) fn none() -> Self {
        Self { by_day: HashMap::new(), own: 0..0 }
    }

    /// The run reading `day` (one of the days asked for): its id, its load, and whether this call
    /// started it (else it joined another's).
    pub(super) fn of(&self, day: NaiveDate) -> (u64, RunLoad, bool) {
        let (id, load) = self.by_day.get(&day).cloned().expect("every day asked for has a load");
        (id, load, self.own.contains(&id))
    }

    /// Every run once, in the order they were started.
    pub(super) fn distinct(self) -> Vec<RunLoad> {
        let mut loads: Vec<(u64, RunLoad)> = self.by_day.into_values().collect();
        loads.sort_by_key(|(id, _)| *id);
        loads.dedup_by_key(|(id, _)| *id);
        loads.into_iter().map(|(_, load)| load).collect()
    }
}

impl Runs {
    pub(super) fn new(counters: Arc<SearchCounters>) -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(0),
            run_bytes: AtomicU64::new(RUN_BYTES),
            lanes: Lanes::new(),
            counters,
        }
    }

    /// Bounds the estimated bytes of one run query.
    pub(super) fn set_run_bytes(&self, bytes: u64) {
        self.run_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Bounds the estimated bytes of a read on the short lane.
    pub(super) fn set_short_read_bytes(&self, bytes: u64) {
        self.lanes.set_short_read_bytes(bytes);
    }

    /// Loads for `days` (ascending, each with whether it continues the previous one's run): the
    /// in-flight loads that already cover some of them, and new runs of consecutive days for the
    /// rest, each under [`RUN_BYTES`], each read by `read(from, to, size)` in a task of its own
    /// once its lane lets it through.
    ///
    /// A short call (all its days under [`SHORT_READ_BYTES`](super::SHORT_READ_BYTES)) reads on
    /// the short lane and joins only short reads in flight: a day that a wide run is reading is read
    /// again on its own, since waiting for a wide run costs the whole run (measured: most slow 1-day
    /// searches of the replay were waiting on a wide run they joined). Wider calls read on the wide
    /// lane and join any read in flight. Runs leave their lane earliest deadline first (see
    /// `lane`); a call that joins a run brings its deadline forward to the call's own.
    pub(super) fn start<R, F>(self: &Arc<Self>, days: &[(NaiveDate, DayInfo, bool)], read: R) -> Loads
    where
        R: Fn(NaiveDate, NaiveDate, ReadSize) -> F,
        F: Future<Output = RunResult> + Send + 'static,
    {
        let mut by_day: HashMap<NaiveDate, (u64, RunLoad)> = HashMap::with_capacity(days.len());
        let mut in_flight = self.in_flight.lock();
        let bytes = days.iter().map(|(_, i, _)| i.bytes()).sum::<u64>();
        let pick = self.lanes.pick(bytes);
        let deadline = pick.lane.deadline_after(bytes);
        let runs = self.cut(days, pick.short, &deadline, &in_flight, &mut by_day);
        let first = self.next_run.load(Ordering::Relaxed);
        for run in runs {
            let id = self.next_run.fetch_add(1, Ordering::Relaxed);
            let (from, to) = (run[0], run[run.len() - 1]);
            let deadline = deadline.fork();
            let permit = pick.lane.clone().acquire(deadline.clone());
            let (me, read) = (self.clone(), read(from, to, pick.size));
            let task = tokio::spawn(async move {
                let queued = Instant::now();
                let _permit = permit.await;
                me.counters.run_queued_us.fetch_add(micros(queued.elapsed()), Ordering::Relaxed);
                let outcome = read.await;
                me.in_flight.lock().retain(|_, r| r.run != id);
                outcome
            });
            let load: RunLoad = async move {
                task.await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("day load task failed: {e}"))))
            }
            .boxed()
            .shared();
            for day in &run {
                let (load, deadline) = (load.clone(), deadline.clone());
                in_flight.insert(*day, Reading { run: id, load: load.clone(), wide: !pick.short, deadline });
                by_day.insert(*day, (id, load));
            }
        }
        // Ids are taken under the `in_flight` lock, so this call's are contiguous.
        let own = first..self.next_run.load(Ordering::Relaxed);
        Loads { by_day, own }
    }

    /// Which of `days` join a read in flight (added to `by_day`, their runs' deadlines brought
    /// forward to `deadline`), and the runs of consecutive days the others are cut into.
    fn cut(
        &self,
        days: &[(NaiveDate, DayInfo, bool)],
        short: bool,
        deadline: &Deadline,
        in_flight: &HashMap<NaiveDate, Reading>,
        by_day: &mut HashMap<NaiveDate, (u64, RunLoad)>,
    ) -> Vec<Vec<NaiveDate>> {
        let budget = self.run_bytes.load(Ordering::Relaxed);
        let mut runs: Vec<Vec<NaiveDate>> = Vec::new();
        let mut run_bytes = 0;
        let mut extend = false;
        for &(day, info, continues) in days {
            if let Some(theirs) = in_flight.get(&day).filter(|r| !(short && r.wide)) {
                theirs.deadline.advance_to(deadline.nanos());
                by_day.insert(day, (theirs.run, theirs.load.clone()));
                extend = false;
                continue;
            }
            match runs.last_mut() {
                Some(run) if extend && continues && run_bytes + info.bytes() <= budget => run.push(day),
                _ => {
                    runs.push(vec![day]);
                    run_bytes = 0;
                }
            }
            run_bytes += info.bytes();
            extend = true;
        }
        runs
    }
}
