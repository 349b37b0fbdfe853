//! The writer's and the delivery layer's outcome counters, in plain atomics: read by tests and
//! copied into `/metrics` when it is scraped ([`crate::metrics::Collect`]).

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Set once the writer has loaded its bookkeeping (what the store and the spool hold): an
    /// `ingest` process is ready from then on.
    pub states_loaded: std::sync::atomic::AtomicBool,
}

impl crate::metrics::Collect for WriterCounters {
    fn collect(&self) {
        for (outcome, v) in [
            ("seen", &self.plans_seen),
            ("written", &self.plans_written),
            ("spooled", &self.plans_spooled),
            ("dropped", &self.plans_dropped),
            ("unchanged", &self.plans_unchanged),
            ("skipped", &self.plans_skipped),
        ] {
            metrics::counter!("planfeed_plans_total", "outcome" => outcome)
                .absolute(v.load(Ordering::Relaxed));
        }
        let abs =
            |name: &'static str, v: &AtomicU64| metrics::counter!(name).absolute(v.load(Ordering::Relaxed));
        abs("planfeed_writer_batches_total", &self.batches);
        abs("planfeed_writer_batches_dropped_total", &self.batches_dropped);
        abs("planfeed_spool_replayed_total", &self.spool_replayed);
        abs("planfeed_spool_refusals_total", &self.spool_refusals);
    }
}
