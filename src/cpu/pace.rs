//! Pacing: each ingestion thread, after a job, rests in proportion to the cap in force: at a cap of
//! 0.25 it rests three times as long as the job took, at 1 it goes on at once. The cap is moved
//! every 100 ms by the [`super::share`] controller, from what the searches' threads went through
//! (their waits for a core), between `pipeline.min_ingest_share` and 1; without a controller (not
//! Linux) it stays at 1.
//!
//! Why rests, beside `SCHED_IDLE`: priorities decide who gets a core when both want one, but a thread
//! inside a system call keeps its core until the call returns on a kernel without preemption of
//! kernel code (`Dynamic Preempt: none`, as on the machines measured): the store's `pwrite`s, the
//! WAL checkpoint and the writeback they cause delay a woken search thread whatever its priority.
//! Working less often is what shortens the searches' tail then (ADR 12).
//!
//! A fetch must still end within `provider.timeout`, and resting slows its download (the pipeline's
//! permits come back later). So a fetch past half its time limit holds a [`Hurry`] until it ends,
//! and while one is held no thread rests and the controller promotes a waiting one at once:
//! finishing that feed matters more than the searches' tail.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The cap, as `f64` bits; 1.0 (never rest) until the controller lowers it.
static CAP: AtomicU64 = AtomicU64::new(ONE);
/// `pipeline.min_ingest_share`, as `f64` bits.
static MIN_SHARE: AtomicU64 = AtomicU64::new(ONE);
const ONE: u64 = 0x3FF0_0000_0000_0000;

/// Sets `pipeline.min_ingest_share` (0 < share <= 1): the cap never goes below it, and ingestion
/// kept below it is promoted. Takes effect at the controller's next period.
pub fn set_min_share(share: f64) {
    MIN_SHARE.store(share.clamp(f64::MIN_POSITIVE, 1.0).to_bits(), Ordering::Relaxed);
}

/// The floor in force.
pub fn min_share() -> f64 {
    f64::from_bits(MIN_SHARE.load(Ordering::Relaxed))
}

/// Sets the cap (the controller's; clamped to the floor and 1).
pub(super) fn set_cap(cap: f64) {
    CAP.store(cap.clamp(min_share(), 1.0).to_bits(), Ordering::Relaxed);
}

/// The cap in force.
pub fn cap() -> f64 {
    f64::from_bits(CAP.load(Ordering::Relaxed))
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

/// A thread's rest after a job that took `took`, at the cap in force (none while a fetch hurries).
pub(super) fn rest_after(took: Duration) -> Duration {
    let rest = rest(took, cap(), hurrying());
    PACED_MICROS.fetch_add(rest.as_micros() as u64, Ordering::Relaxed);
    rest
}

/// How long a job of `took` rests at `cap`: the thread works `cap` of the time, all of it while a
/// fetch hurries.
fn rest(took: Duration, cap: f64, hurry: bool) -> Duration {
    if hurry || cap >= 1.0 {
        return Duration::ZERO;
    }
    took.mul_f64((1.0 - cap) / cap)
}

/// Rest taken by all ingestion threads since the process started, in microseconds.
static PACED_MICROS: AtomicU64 = AtomicU64::new(0);

/// Seconds the ingestion threads have rested for searches since the process started
/// (`planfeed_ingest_paced_seconds_total`).
pub fn paced_seconds() -> f64 {
    PACED_MICROS.load(Ordering::Relaxed) as f64 / 1e6
}

/// The same, as a duration (what the controller compares between periods).
pub(super) fn rested() -> Duration {
    Duration::from_micros(PACED_MICROS.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_works_the_cap_of_its_time() {
        let job = Duration::from_millis(10);
        assert_eq!(rest(job, 0.1, false), Duration::from_millis(90));
        assert_eq!(rest(job, 0.5, false), Duration::from_millis(10));
        assert_eq!(rest(job, 0.25, false), Duration::from_millis(30));
        assert_eq!(rest(job, 1.0, false), Duration::ZERO);
    }

    #[test]
    fn no_thread_rests_while_a_fetch_hurries() {
        assert_eq!(rest(Duration::from_millis(10), 0.25, true), Duration::ZERO);
        let hurry = Hurry::start();
        assert!(hurrying());
        drop(hurry);
    }

    #[test]
    fn the_floor_is_kept_in_range_and_bounds_the_cap() {
        let before = min_share();
        set_min_share(7.0);
        assert_eq!(min_share(), 1.0);
        set_min_share(0.2);
        assert_eq!(min_share(), 0.2);
        set_cap(0.05);
        assert_eq!(cap(), 0.2);
        set_cap(1.0);
        set_min_share(before);
    }
}
