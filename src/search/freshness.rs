//! When a cached copy is current: its age against the TTL (`search.cache_ttl`), and the
//! invalidation epoch that every announced write moves. Shared by the day directory, the day cache
//! and the finished bodies, which each decide with it whether what they hold may be served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(super) struct Freshness {
    ttl_nanos: AtomicU64,
    /// Bumped by every invalidation; a load that saw it move may hold pre-write data.
    epoch: AtomicU64,
}

impl Freshness {
    pub(super) fn new(ttl: Duration) -> Self {
        Self { ttl_nanos: AtomicU64::new(nanos(ttl)), epoch: AtomicU64::new(0) }
    }

    /// Copies older than this are read again; past half of it they are refreshed in the background
    /// while served.
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
    }

    pub(super) fn set_ttl(&self, ttl: Duration) {
        self.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
    }

    /// The current epoch: taken before a load, compared after it ([`Self::changed_since`]).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A write was announced: every load under way may miss it, every finished body is retired.
    pub(super) fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a write was announced since `epoch` was taken.
    pub(super) fn changed_since(&self, epoch: u64) -> bool {
        self.epoch() != epoch
    }
}

/// `d` in nanoseconds, saturating (durations kept in atomics).
pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
