//! The store's health as searches see it: how long a search waits for a read (its deadline), the
//! ping that tells a slow store from a hung one, and the short backoff after a failure during which
//! cached copies are served without asking the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Future;

use super::counters::SearchCounters;
use super::freshness::nanos;
use crate::store::{SharedStore, StoreError};

/// After a store failure, how long cached days are served without asking the store again.
pub const STORE_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Shortest bound on the ping that tells a slow store from a hung one. A live replica busy with a
/// failover (catching up, merging, taking every read) may answer `SELECT 1` in a few hundred
/// milliseconds; a search with nothing cached has no better answer than waiting for it, so the
/// ping gets at least this long even when the store deadline is shorter. A hung store still fails
/// such a search within the deadline plus this.
const LIVENESS_PING: Duration = Duration::from_millis(500);

pub(super) struct StoreHealth {
    /// Pinged while a search with nothing cached waits past its deadline.
    store: SharedStore,
    /// How long a search waits for the store (`search.store_deadline`).
    deadline_nanos: AtomicU64,
    /// Origin of `down_until`.
    origin: Instant,
    /// Nanoseconds since `origin` until which the store is taken as down (0: not down).
    down_until: AtomicU64,
    counters: Arc<SearchCounters>,
}

impl StoreHealth {
    pub(super) fn new(store: SharedStore, deadline: Duration, counters: Arc<SearchCounters>) -> Self {
        Self {
            store,
            deadline_nanos: AtomicU64::new(nanos(deadline)),
            origin: Instant::now(),
            down_until: AtomicU64::new(0),
            counters,
        }
    }

    /// How long a search waits for a store read (`search.store_deadline`).
    pub(super) fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline_nanos.load(Ordering::Relaxed))
    }

    pub(super) fn set_deadline(&self, deadline: Duration) {
        self.deadline_nanos.store(nanos(deadline), Ordering::Relaxed);
    }

    /// Whether the store is taken as down: cached copies are served without asking it.
    pub(super) fn down(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && nanos(self.origin.elapsed()) < until
    }

    /// A store read failed: the store is taken as down for [`STORE_DOWN_BACKOFF`].
    pub(super) fn failed(&self, error: &StoreError) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        if self.down_for_backoff() {
            tracing::warn!(error = %error, backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64, "store down: serving cached days");
        }
    }

    /// A store read succeeded: the store is up again.
    pub(super) fn answered(&self) {
        if self.down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("store answers again");
        }
    }

    /// `load` if it ends by `deadline`; `None` past it (the load goes on in its own task).
    pub(super) async fn by_deadline<T>(&self, load: impl Future<Output = T>, deadline: Instant) -> Option<T> {
        match tokio::time::timeout_at(deadline.into(), load).await {
            Ok(out) => Some(out),
            Err(_) => {
                self.deadline_passed();
                None
            }
        }
    }

    /// `load` for a search with no copy to fall back on: past `deadline` it goes on waiting only
    /// while the store answers a ping within one store deadline, or [`LIVENESS_PING`] if longer
    /// (a long read of a healthy store), and fails as unavailable as soon as a ping goes
    /// unanswered (a hung or unreachable store).
    pub(super) async fn answer_or_hung<T>(
        &self,
        mut load: impl Future<Output = Result<T, StoreError>> + Unpin,
        deadline: Instant,
    ) -> Result<T, StoreError> {
        if let Ok(out) = tokio::time::timeout_at(deadline.into(), &mut load).await {
            return out;
        }
        loop {
            let step = self.deadline();
            let ping = tokio::time::timeout(step.max(LIVENESS_PING), self.store.ping());
            tokio::select! {
                out = &mut load => return out,
                ping = ping => match ping {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.failed(&e);
                        return Err(e);
                    }
                    Err(_) => {
                        self.deadline_passed();
                        return Err(StoreError::Unavailable(format!(
                            "store answered neither the read nor a ping within {} ms",
                            step.max(LIVENESS_PING).as_millis()
                        )));
                    }
                },
            }
            // The store answers: wait one more step for the read before asking again.
            if let Ok(out) = tokio::time::timeout(step, &mut load).await {
                return out;
            }
        }
    }

    /// A store read outlived a search's deadline: the store is taken as down, as if it had failed,
    /// so the next searches serve their cached copies without waiting again.
    fn deadline_passed(&self) {
        self.counters.deadlines_passed.fetch_add(1, Ordering::Relaxed);
        if self.down_for_backoff() {
            tracing::warn!(
                deadline_ms = self.deadline().as_millis() as u64,
                backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64,
                "store gave no answer within the search deadline: serving cached days"
            );
        }
    }

    /// Takes the store as down from now for [`STORE_DOWN_BACKOFF`]; true when it was not down.
    fn down_for_backoff(&self) -> bool {
        let until = nanos(self.origin.elapsed() + STORE_DOWN_BACKOFF);
        self.down_until.swap(until, Ordering::Relaxed) == 0
    }
}
