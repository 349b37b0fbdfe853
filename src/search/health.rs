//! The store's health as searches see it: deadlines, pings, and the short backoff after a failure.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::Future;

use super::state::{nanos, Inner, STORE_DOWN_BACKOFF};
use crate::store::StoreError;

/// Shortest bound on the ping that tells a slow store from a hung one. A live replica busy with a
/// failover (catching up, merging, taking every read) may answer `SELECT 1` in a few hundred
/// milliseconds; a search with nothing cached has no better answer than waiting for it, so the
/// ping gets at least this long even when the store deadline is shorter. A hung store still fails
/// such a search within the deadline plus this.
pub(super) const LIVENESS_PING: Duration = Duration::from_millis(500);

impl Inner {
    /// A store read outlived a search's deadline: the store is taken as down, as if it had failed,
    /// so the next searches serve their cached copies without waiting again.
    pub(super) fn deadline_passed(&self) {
        self.counters.deadlines_passed.fetch_add(1, Ordering::Relaxed);
        let until = nanos(self.origin.elapsed() + STORE_DOWN_BACKOFF);
        if self.store_down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                deadline_ms = self.store_deadline().as_millis() as u64,
                backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64,
                "store gave no answer within the search deadline: serving cached days"
            );
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
            let step = self.store_deadline();
            let ping = tokio::time::timeout(step.max(LIVENESS_PING), self.store.ping());
            tokio::select! {
                out = &mut load => return out,
                ping = ping => match ping {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.store_failed(&e);
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

    pub(super) fn store_down(&self) -> bool {
        let until = self.store_down_until.load(Ordering::Relaxed);
        until != 0 && nanos(self.origin.elapsed()) < until
    }

    pub(super) fn store_failed(&self, error: &StoreError) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        let until = nanos(self.origin.elapsed() + STORE_DOWN_BACKOFF);
        if self.store_down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %error, backoff_ms = STORE_DOWN_BACKOFF.as_millis() as u64, "store down: serving cached days");
        }
    }

    pub(super) fn store_answered(&self) {
        if self.store_down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("store answers again");
        }
    }
}
