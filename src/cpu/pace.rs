//! Pacing: while searches are being answered, each ingestion thread rests after a job for as long
//! as keeps its work within `pipeline.ingest_share` of the time (0.1: it rests nine times as long
//! as the job took); when no search came since its previous job it goes on at once.
//!
//! Why, beside `SCHED_IDLE` and nice: those decide who gets a core when both want one, but a thread
//! inside a system call keeps its core until the call returns on a kernel without preemption of
//! kernel code (`Dynamic Preempt: none`, as on the machines measured): the store's `pwrite`s, the
//! WAL checkpoint and the writeback they cause delay a woken search thread whatever its priority.
//! At 10,000 searches/s during a 61 MB round every second, the fixed-rate p99 went from 4.3× its
//! idle value unpaced to 2.25× at a share of 0.3, 2.05× at 0.2 and 1.36× at 0.1 (ADR 12). The
//! feed still finishes, later: at 0.1, 4.5 MB/s under that search load, full speed without it.
//!
//! The searches answered (`200` or `304`, so a flood of refused requests does not slow ingestion)
//! are read from the search metrics' per-thread counters (a probe given at start,
//! [`watch_searches`]), so a request pays nothing for it.
//!
//! A fetch must still end within `provider.timeout`, and resting slows its download (the pipeline's
//! permits come back later). So a fetch past half its time limit holds a [`Hurry`] until it ends,
//! and while one is held no thread rests and the starvation guard promotes a starved one at once:
//! finishing that feed matters more than the searches' tail.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The share, as `f64` bits; 1.0 (never rest) until [`set_share`].
static SHARE: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);
/// How many searches have been answered so far (set once, by the service that answers them).
static SEARCHES: OnceLock<fn() -> u64> = OnceLock::new();

/// Sets `pipeline.ingest_share` (0 < share <= 1); takes effect at each thread's next job.
pub fn set_share(share: f64) {
    SHARE.store(share.clamp(f64::MIN_POSITIVE, 1.0).to_bits(), Ordering::Relaxed);
}

/// The share in force.
pub fn share() -> f64 {
    f64::from_bits(SHARE.load(Ordering::Relaxed))
}

/// Paces ingestion against the searches `answered` counts (a running total). The first call
/// wins: a process answers searches with one service.
pub fn watch_searches(answered: fn() -> u64) {
    let _ = SEARCHES.set(answered);
}

/// Fetches past half their time limit (each holds a [`Hurry`]).
static HURRYING: AtomicUsize = AtomicUsize::new(0);

/// Held by a fetch that must not be slowed any more: no ingestion thread rests while one exists.
pub struct Hurry(());

impl Hurry {
    pub fn start() -> Self {
        HURRYING.fetch_add(1, Ordering::Relaxed);
        Hurry(())
    }
}

impl Drop for Hurry {
    fn drop(&mut self) {
        HURRYING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a fetch is past half its time limit: no rests, and the starvation guard promotes a
/// starved ingestion thread at once, whoever starves it.
pub fn hurrying() -> bool {
    HURRYING.load(Ordering::Relaxed) > 0
}

/// One thread's pacing: what it saw of the searches at its previous job.
#[derive(Default)]
pub(super) struct Pacer {
    seen: Option<u64>,
}

impl Pacer {
    /// After a job that took `took`: how long to rest before the next one.
    pub(super) fn rest_after(&mut self, took: Duration) -> Duration {
        let Some(answered) = SEARCHES.get() else { return Duration::ZERO };
        let share = if hurrying() { 1.0 } else { share() };
        self.rest(took, answered(), share)
    }

    /// [`Self::rest_after`] with the searches answered so far and the share in force.
    fn rest(&mut self, took: Duration, answered: u64, share: f64) -> Duration {
        let searching = self.seen.is_some_and(|seen| seen != answered);
        self.seen = Some(answered);
        if !searching || share >= 1.0 {
            return Duration::ZERO;
        }
        let rest = took.mul_f64((1.0 - share) / share);
        PACED_MICROS.fetch_add(rest.as_micros() as u64, Ordering::Relaxed);
        rest
    }
}

/// Rest taken by all ingestion threads since the process started, in microseconds.
static PACED_MICROS: AtomicU64 = AtomicU64::new(0);

/// Seconds the ingestion threads have rested for searches since the process started
/// (`planfeed_ingest_paced_seconds_total`).
pub fn paced_seconds() -> f64 {
    PACED_MICROS.load(Ordering::Relaxed) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_rests_only_while_searches_are_answered_and_in_proportion_to_its_share() {
        let mut p = Pacer::default();
        let job = Duration::from_millis(10);
        // The first job has nothing to compare with.
        assert_eq!(p.rest(job, 5, 0.1), Duration::ZERO);
        // No search since: no rest.
        assert_eq!(p.rest(job, 5, 0.1), Duration::ZERO);
        // Searches answered since: 10 % of the time working, 90 % resting.
        assert_eq!(p.rest(job, 9, 0.1), Duration::from_millis(90));
        assert_eq!(p.rest(job, 10, 0.5), Duration::from_millis(10));
        assert_eq!(p.rest(job, 11, 0.25), Duration::from_millis(30));
        // A share of 1 never rests.
        assert_eq!(p.rest(job, 12, 1.0), Duration::ZERO);
    }

    #[test]
    fn no_thread_rests_while_a_fetch_hurries() {
        watch_searches(|| 0);
        let mut p = Pacer::default();
        let answered = SEARCHES.get().unwrap();
        assert_eq!(answered(), 0);
        let hurry = Hurry::start();
        assert!(HURRYING.load(Ordering::Relaxed) >= 1);
        // Whatever the share: `rest_after` reads the hurry first.
        p.seen = Some(u64::MAX);
        assert_eq!(p.rest_after(Duration::from_millis(10)), Duration::ZERO);
        drop(hurry);
    }

    #[test]
    fn the_share_is_kept_in_range() {
        let before = share();
        set_share(0.2);
        assert_eq!(share(), 0.2);
        set_share(7.0);
        assert_eq!(share(), 1.0);
        set_share(before);
    }
}
