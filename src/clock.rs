//! The hybrid logical clock that orders a plan's observations (its `version`, see
//! [`crate::domain::StoredPlan::version`]).
//!
//! A fetch's id is the wall clock's milliseconds, or one more than the last id given out when the
//! clock has not moved past it, and never at or below what [`observe`] was told the store holds.
//! So versions follow the wall clock while it is sane, and never go backwards when it is not: a
//! clock stepped back (an NTP correction, a restored VM) or a store moved from a host whose clock
//! ran ahead still gets every change written. Process-wide: every fetcher (one per provider, and
//! a restarted one) draws from it, so two fetches never share an id, and the writer tells fetches
//! apart by it.
//!
//! The wall clock can be shifted ([`shift_wall_clock`]), so tests step it back for real.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// The last id given out or observed.
static LAST: AtomicU64 = AtomicU64::new(0);
/// Milliseconds added to the system clock (tests only; 0 in production).
static SHIFT_MS: AtomicI64 = AtomicI64::new(0);

/// The wall clock, in milliseconds since the epoch (the system clock, shifted by
/// [`shift_wall_clock`]).
pub fn wall_ms() -> u64 {
    let now = chrono::Utc::now().timestamp_millis() + SHIFT_MS.load(Relaxed);
    now.max(0) as u64
}

/// Moves the wall clock by `ms` (negative: back), as an operator's or NTP's step would. For tests.
pub fn shift_wall_clock(ms: i64) {
    SHIFT_MS.fetch_add(ms, Relaxed);
}

/// The id of a fetch starting now: [`wall_ms`], or one more than the last id given out or observed.
pub fn next_fetch_id() -> u64 {
    tick(wall_ms())
}

/// [`next_fetch_id`] at a given wall time.
fn tick(now_ms: u64) -> u64 {
    let next = |last: u64| now_ms.max(last + 1);
    // `fetch_update` retries until no other fetcher moved `LAST` in between; it returns the value
    // it replaced.
    next(LAST.fetch_update(Relaxed, Relaxed, |last| Some(next(last))).unwrap_or_else(|last| last))
}

/// Tells the clock that a fetch id (a version's upper bits) of `id` exists (in the store, the
/// spool): every id given out from now on is above it.
pub fn observe(id: u64) {
    LAST.fetch_max(id, Relaxed);
}

/// The last id given out or observed.
pub fn last() -> u64 {
    LAST.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_increasing_even_within_one_millisecond_or_behind_the_store() {
        // Two providers' fetches started in the same millisecond, then a clock that went back.
        let now = chrono::Utc::now().timestamp_millis() as u64;
        let (a, b) = (tick(now), tick(now));
        assert!(a >= now && b > a, "{a} {b}");
        assert!(tick(now - 1_000) > b);
        // A store whose versions are an hour ahead of this clock.
        observe(now + 3_600_000);
        assert_eq!(tick(now), now + 3_600_001);
        assert!(next_fetch_id() > now + 3_600_001);
        // From many threads at once: all distinct.
        let ids: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..1_000).map(|_| tick(now)).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
