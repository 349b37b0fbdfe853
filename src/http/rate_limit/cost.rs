//! What each client's answers cost, charged against a budget of its own besides its request
//! count: requests differ in cost by orders of magnitude (a warm `304` against a fresh 1 MB body
//! compressed), so a count alone let one client take both cores at a small share of its limit.
//!
//! The cost is in bytes of work: each byte an answer built (copied and hashed) counts 1, each
//! byte compressed [`COMPRESSED_BYTE_COST`]. It is charged after the answer, as only then is it
//! known (a generic cell rate with debt: the client's theoretical arrival time moves on by the
//! cost), and a client whose debt is beyond its burst is refused until it is paid off. Cached
//! answers cost nothing, so a client asking what others ask, or the same again, never meets it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A byte compressed (gzip level 6 on zlib-rs, about 15 ns a byte) costs as much CPU as about
/// eight built (a copy and an xxh3 pass, 1–2 ns a byte).
pub const COMPRESSED_BYTE_COST: u64 = 8;

const SHARDS: usize = 16;

/// The clients in debt, by key: the instant (ns since `start`) their debt is paid off.
pub(super) struct CostBudget {
    shards: [Mutex<HashMap<IpAddr, u64>>; SHARDS],
    /// Keys in the table: while it is 0 (no client has a fresh answer's cost on it) a check
    /// reads this line alone.
    clients: AtomicUsize,
    start: Instant,
    per_second: u64,
    burst_ns: u64,
}

impl CostBudget {
    pub(super) fn new(per_second: u64, burst: u64) -> Self {
        let per_second = per_second.max(1);
        let mut budget = Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            clients: AtomicUsize::new(0),
            start: Instant::now(),
            per_second,
            burst_ns: 0,
        };
        budget.burst_ns = budget.cost_ns(burst);
        budget
    }

    fn cost_ns(&self, bytes: u64) -> u64 {
        (u128::from(bytes) * 1_000_000_000 / u128::from(self.per_second)).min(u128::from(u64::MAX / 4)) as u64
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, u64>> {
        let h = match key {
            IpAddr::V4(a) => u64::from(u32::from(*a)),
            IpAddr::V6(a) => (u128::from(*a) >> 64) as u64 ^ u128::from(*a) as u64,
        };
        &self.shards[(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    /// `Err(wait)` while `key`'s debt is beyond its burst.
    pub(super) fn check(&self, key: &IpAddr) -> Result<(), Duration> {
        if self.clients.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let Some(paid_at) = self.shard(key).lock().get(key).copied() else { return Ok(()) };
        let allowed_until = self.now() + self.burst_ns;
        match paid_at.checked_sub(allowed_until) {
            Some(over) if over > 0 => Err(Duration::from_nanos(over)),
            _ => Ok(()),
        }
    }

    /// Charges `key` for `bytes` of work (see [`COMPRESSED_BYTE_COST`]).
    pub(super) fn charge(&self, key: IpAddr, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let (now, cost) = (self.now(), self.cost_ns(bytes));
        let mut shard = self.shard(&key).lock();
        let paid_at = shard.entry(key).or_insert_with(|| {
            self.clients.fetch_add(1, Ordering::Relaxed);
            0
        });
        *paid_at = (*paid_at).max(now).saturating_add(cost);
    }

    /// Forgets the clients whose debt is paid off.
    pub(super) fn prune(&self) {
        let now = self.now();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, paid_at| *paid_at > now);
            self.clients.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_refused_once_its_debt_passes_its_burst_and_others_are_not() {
        // 1 MB a second, a burst of 3 MB: the test takes far less than the 100 ms that would
        // pay off a tenth of a megabyte.
        let budget = CostBudget::new(1 << 20, 3 << 20);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(budget.check(&a).is_ok());
        budget.charge(a, 2 << 20);
        assert!(budget.check(&a).is_ok(), "within the burst");
        budget.charge(a, 2 << 20);
        let wait = budget.check(&a).unwrap_err();
        assert!(wait > Duration::from_millis(800) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(budget.check(&b).is_ok(), "another client has its own budget");
        budget.prune();
        assert!(budget.check(&a).is_err(), "a client in debt is kept");
        assert_eq!(budget.clients.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_paid_off_client_is_forgotten() {
        let budget = CostBudget::new(u64::MAX / 2, 1);
        budget.charge("10.0.0.1".parse().unwrap(), 1);
        // Paid off within the nanosecond it was charged in: the next reading of the clock.
        while budget.clients.load(Ordering::Relaxed) != 0 {
            budget.prune();
        }
    }
}
