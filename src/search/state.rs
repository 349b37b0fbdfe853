//! The search cache's shared state and its limits: what every job of the cache reads and updates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures::future::{BoxFuture, Shared};
use parking_lot::{Mutex, RwLock};

use super::body::CachedBody;
use super::day::DayEntry;
use super::lane::{Deadline, Lane};
use super::render::EVENT_OVERHEAD;
use crate::store::{DaySize, SharedStore, StoreError};

/// After a store failure, how long cached days are served without asking the store again.
pub const STORE_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Upper bound of the estimated JSON bytes one store query of a run of days may bring: a wide cold
/// range is read in several queries of about this size, [`RUNS_IN_FLIGHT`] at once, so no single
/// query holds the whole range in flight and the first parts are rendered while the rest arrive.
pub const RUN_BYTES: u64 = 4 << 20;
/// Store queries of one search (or background refresh) in flight at once.
pub const RUNS_IN_FLIGHT: usize = 4;
/// A search (or reload) whose missing days come to at most this many estimated bytes reads them on
/// the short lane: about a month of a busy feed. Wider reads take the wide lane, so a cold day or
/// month never queues behind the runs of a cold year or of the open range.
pub const SHORT_READ_BYTES: u64 = 2 << 20;
/// Run queries in flight at once in the whole process, per lane. Bounded across searches, so a
/// burst of cold searches does not open a connection and a server query per run at once (a
/// replica left alone by a failover refused connections under such a burst).
pub const SHORT_LANE: usize = 4;
pub const WIDE_LANE: usize = RUNS_IN_FLIGHT;
/// A search slower than this is counted by its main cause ([`SearchCounters::slow_by_store`] …).
pub const SLOW_SEARCH: Duration = Duration::from_millis(100);
/// A finished body larger than the cache budget divided by this is not kept (it would evict many
/// days to save one concatenation).
pub(super) const BODY_FRACTION: u64 = 64;

#[derive(Debug, Default)]
pub struct SearchCounters {
    /// Day lookups answered from the cache.
    pub hits: AtomicU64,
    /// Days read from the store because the cache had no fresh copy.
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub store_errors: AtomicU64,
    /// Searches answered with a finished body from the cache (one per warm request: sharded).
    pub body_hits: crate::metrics::ShardedCounter,
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
    /// Where run queries spent their time, summed in microseconds: waiting for a lane, waiting for
    /// the store's rows, rendering the rows into days.
    pub run_queued_us: AtomicU64,
    pub run_store_us: AtomicU64,
    pub run_render_us: AtomicU64,
    /// Searches slower than [`SLOW_SEARCH`], by what took most of their time: runs they started
    /// (lane, store and render), runs another search started, or building the answer (CPU, the
    /// directory and the runtime).
    pub slow_by_store: AtomicU64,
    pub slow_by_shared: AtomicU64,
    pub slow_by_cpu: AtomicU64,
}

pub(super) struct Inner {
    /// Unique in the process: names this searcher's bodies in each thread's recent ones.
    pub(super) id: u64,
    pub(super) store: SharedStore,
    pub(super) days: moka::future::Cache<NaiveDate, Arc<DayEntry>>,
    pub(super) bodies: moka::future::Cache<(i64, i64), Arc<CachedBody>>,
    /// Bodies up to this size are cached.
    pub(super) body_limit: usize,
    pub(super) directory: RwLock<Option<Directory>>,
    /// One directory load at a time (the others wait for it and use its result).
    pub(super) directory_load: tokio::sync::Mutex<()>,
    pub(super) directory_refreshing: AtomicBool,
    /// The directory load searches wait for (up to their deadline), with its task: a finished
    /// task is never waited for again (its shared result is only stored when someone polled it).
    pub(super) directory_task: Mutex<Option<(tokio::task::AbortHandle, DirectoryLoad)>>,
    /// How long a search waits for the store (`search.store_deadline`).
    pub(super) deadline_nanos: AtomicU64,
    /// The process-wide lanes run queries wait on ([`SHORT_LANE`], [`WIDE_LANE`]).
    pub(super) short_lane: Arc<Lane>,
    pub(super) wide_lane: Arc<Lane>,
    /// Days being read from the store, with the shared load that reads them (single flight),
    /// whether it is a wide read (which short reads do not join) and the run's deadline in its
    /// lane (which a search joining it brings forward to its own).
    pub(super) in_flight: Mutex<HashMap<NaiveDate, (u64, RunLoad, bool, Deadline)>>,
    pub(super) next_run: AtomicU64,
    /// Estimated bytes one run query may bring ([`RUN_BYTES`] unless set).
    pub(super) run_bytes: AtomicU64,
    /// Most estimated bytes a read may bring and still take the short lane ([`SHORT_READ_BYTES`]
    /// unless set).
    pub(super) short_read_bytes: AtomicU64,
    pub(super) ttl_nanos: AtomicU64,
    /// Bumped by every invalidation; a load that saw it move may hold pre-write data.
    pub(super) epoch: AtomicU64,
    /// Origin of `store_down_until`.
    pub(super) origin: Instant,
    /// Nanoseconds since `origin` until which the store is taken as down (0: not down).
    pub(super) store_down_until: AtomicU64,
    pub(super) counters: Arc<SearchCounters>,
}

/// What the directory knows of one non-empty day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DayInfo {
    pub(super) plans: u64,
    /// Estimated JSON bytes of the day's plans.
    pub(super) bytes: u64,
}

impl DayInfo {
    /// A day an invalidation reported: it may hold plans now, its size is unknown until read.
    pub(super) const UNKNOWN: DayInfo = DayInfo { plans: 0, bytes: EVENT_OVERHEAD };

    pub(super) fn of(size: &DaySize) -> Self {
        Self { plans: size.plans, bytes: size.plans * EVENT_OVERHEAD + size.text_bytes }
    }
}

/// The non-empty event days, in order.
#[derive(Debug)]
pub(super) struct Directory {
    pub(super) days: BTreeMap<NaiveDate, DayInfo>,
    pub(super) loaded_at: Instant,
}

/// A directory load run in a task of its own; `true` when it kept a stale copy.
pub(super) type DirectoryLoad = Shared<BoxFuture<'static, Result<bool, StoreError>>>;

/// The result of one store query over a run of days: the entries of every day it read.
pub(super) type RunResult = Result<Arc<BTreeMap<NaiveDate, Arc<DayEntry>>>, StoreError>;
pub(super) type RunLoad = Shared<BoxFuture<'static, RunResult>>;

impl Inner {
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
    }

    pub(super) fn store_deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_nanos.load(Ordering::Relaxed))
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
