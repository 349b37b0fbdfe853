//! Retries: one policy type ([`RetryPolicy`]: first delay, cap, jitter) that every wait between two
//! attempts in the service comes from, and one bounded retry loop ([`retry`]) for the operations
//! that simply repeat a call: the delivery layer's store writes, the writer's start-up load and the
//! connecting store. Four loops have a shape of their own and take their waits from a
//! [`RetryPolicy`] too: the fetcher's request (the fetch's deadline and the provider's
//! `Retry-After` decide each wait), the supervisor's restarts (timer messages), and the delivery
//! layer's held batches and spool replays (unbounded, until the store or the spool takes them).
//! Each operation retries at one level only (stores never repeat a call; the delivery layer does),
//! and every retry is counted in `planfeed_retries_total{operation}` (see
//! [`crate::metrics::record_retry`]), whoever retries.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff: retry `n + 1` waits `initial × 2ⁿ`, at most `cap`, then jittered
/// down by up to `jitter` of itself so that replicas and providers do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub cap: Duration,
    /// Share of the delay that is random, in `0.0..=1.0` (0.5: between 50 % and 100 %).
    pub jitter: f64,
}

impl RetryPolicy {
    /// No jitter: for waits nobody else shares (a local restart, a held batch).
    pub const fn new(initial: Duration, cap: Duration) -> Self {
        Self { initial, cap, jitter: 0.0 }
    }

    pub const fn jittered(self, jitter: f64) -> Self {
        Self { jitter, ..self }
    }

    /// The wait before retry `done + 1`, `done` retries having been made.
    pub fn delay(&self, done: u32) -> Duration {
        let full = self.initial.saturating_mul(2u32.saturating_pow(done.min(16))).min(self.cap);
        if self.jitter <= 0.0 {
            return full;
        }
        full.mul_f64(rand::rng().random_range((1.0 - self.jitter.min(1.0))..=1.0))
    }
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, or has been retried
/// `max_retries` times, waiting [`RetryPolicy::delay`] between attempts. Each retry is counted
/// under `operation` and reported to `on_retry` (the caller's log line and own counters) with the
/// error, the retry's number (from 1) and the wait.
pub async fn retry<T, E, Fut>(
    policy: &RetryPolicy,
    max_retries: u32,
    operation: &'static str,
    mut attempt: impl FnMut() -> Fut,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, u32, Duration),
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut done = 0u32;
    loop {
        match attempt().await {
            Err(e) if done < max_retries && retryable(&e) => {
                let delay = policy.delay(done);
                done += 1;
                crate::metrics::record_retry(operation);
                on_retry(&e, done, delay);
                tokio::time::sleep(delay).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let p = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(10)).jittered(0.5);
        for (done, full) in [(0, 500), (1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 10_000), (40, 10_000)]
        {
            let d = p.delay(done).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "retry {done}: {d} ms not in [{}, {full}]", full / 2);
        }
        let exact = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(exact.delay(0), Duration::from_millis(100));
        assert_eq!(exact.delay(3), Duration::from_millis(800));
        assert_eq!(exact.delay(20), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn retries_transient_errors_up_to_the_limit_and_stops_at_a_permanent_one() {
        let p = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40));
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let r: Result<(), &str> = retry(
            &p,
            3,
            "test",
            || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err("down")
            },
            |_| true,
            |_, n, d| waits.push((n, d.as_millis())),
        )
        .await;
        assert_eq!((r, calls.load(Ordering::Relaxed)), (Err("down"), 4));
        assert_eq!(waits, [(1, 10), (2, 20), (3, 40)]);

        calls.store(0, Ordering::Relaxed);
        let r: Result<(), &str> = retry(
            &p,
            3,
            "test",
            || async {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                Err(if n == 0 { "down" } else { "rejected" })
            },
            |e| *e == "down",
            |_, _, _| {},
        )
        .await;
        assert_eq!((r, calls.load(Ordering::Relaxed)), (Err("rejected"), 2));

        let r: Result<u32, &str> = retry(&p, 3, "test", || async { Ok(7) }, |_| true, |_, _, _| {}).await;
        assert_eq!(r, Ok(7));
    }
}
