//! The batch writer's outcome counters: kept by the writer (and the spool replayer it starts) in
//! plain atomics, read by `/metrics` and tests. Apart from the writer so that `metrics` reads them
//! without importing an actor.

use std::sync::atomic::AtomicU64;

/// Outcome counters, shared with metrics and tests.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub plans_seen: AtomicU64,
    /// Plans the store holds: counted when a write (direct or replayed from the spool) completes.
    pub plans_written: AtomicU64,
    /// Plans put in the spool (each is counted written again once replayed).
    pub plans_spooled: AtomicU64,
    /// Plans the store rejected for good.
    pub plans_dropped: AtomicU64,
    /// Spool entries delivered to the store.
    pub spool_replayed: AtomicU64,
    /// Times a batch found both the store and the spool refusing it (the writer held it).
    pub spool_refusals: AtomicU64,
    pub plans_unchanged: AtomicU64,
    pub plans_skipped: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub fetches_recorded: AtomicU64,
}
