//! The search cache's outcome counters: written by each part of the cache where the outcome
//! happens, read by `/metrics` and by tests.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

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
    /// Searches slower than [`SLOW_SEARCH`](super::SLOW_SEARCH), by what took most of their time:
    /// runs they started (lane, store and render), runs another search started, or building the
    /// answer (CPU, the directory and the runtime).
    pub slow_by_store: AtomicU64,
    pub slow_by_shared: AtomicU64,
    pub slow_by_cpu: AtomicU64,
}

/// `d` in microseconds, saturating (for the `*_us` counters).
pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
