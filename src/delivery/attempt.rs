//! The one timeout and the one retry policy of every store call the layer makes: a call is bounded
//! by `spool.write_timeout` ([`Inner::once`]), an unavailable store is tried [`ATTEMPTS`] times on
//! [`POLICY`] ([`Inner::attempts`]), and each outcome tells the refusal tracker. The same policy
//! paces the replayer and a held batch. Stores do not retry: a repeat happens here or nowhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Inner;
use crate::retry::{retry, RetryPolicy};
use crate::store::{StoreError, StoreResult};

/// Calls of one write before its batch goes to the spool (about 3 s of backoff).
pub(super) const ATTEMPTS: u32 = 5;
/// Between attempts: 200 ms doubling, jittered to 50–100 %, at most 5 s.
pub(super) const POLICY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5)).jittered(0.5);

impl Inner {
    /// One store call, unavailable when it outlives the write timeout: a hung store (stopped, not
    /// closed) answers nothing for minutes, and the spool must take over well before. A call cut
    /// off this way may still land later; writes are idempotent, so its replay does no harm.
    pub(super) async fn once<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let limit = self.write_timeout;
        let result = tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!("store did not answer within {limit:?}")))
        });
        self.refusals.observe(result.as_ref().err());
        result
    }

    /// The wait before the next try after `failed` tries of a held batch or a spool entry.
    pub(super) async fn rest(&self, failed: u32) {
        tokio::time::sleep(POLICY.delay(failed)).await
    }

    /// Runs `op` until it succeeds, is refused or rejected, or was unavailable [`ATTEMPTS`] times,
    /// counting each repeat in `retries`, the writer's counters and `planfeed_retries_total`. A
    /// call that outlives the timeout ends the attempts at once: a store that hangs would hang
    /// again, and the spool should take over after one timeout, not after five.
    pub(super) async fn attempts<F, Fut>(
        &self,
        what: &'static str,
        retries: &mut u32,
        mut op: F,
    ) -> StoreResult<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<()>>,
    {
        let hung = AtomicBool::new(false);
        let attempt = || {
            let (call, hung) = (op(), &hung);
            async move {
                let started = std::time::Instant::now();
                let result = self.once(call).await;
                if result.is_err() && started.elapsed() >= self.write_timeout {
                    hung.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        limit_ms = self.write_timeout.as_millis() as u64,
                        "{what}: store did not answer in time"
                    );
                }
                result
            }
        };
        let retryable =
            |e: &StoreError| matches!(e, StoreError::Unavailable(_)) && !hung.load(Ordering::Relaxed);
        retry(&POLICY, ATTEMPTS - 1, "store_write", attempt, retryable, |e, attempt, delay| {
            *retries += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
        })
        .await
    }
}
