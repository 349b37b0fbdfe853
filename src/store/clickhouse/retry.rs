//! Timeouts, error classification and the retry loop of the ClickHouse store: which failures are
//! worth another attempt (network trouble, overload, read-only replicas) and which are not.

use std::time::Duration;

use rand::Rng;

use crate::store::{StoreError, StoreResult};

/// Attempts per batch inside the store; the batch writer retries further on `Unavailable`.
pub(super) const WRITE_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

pub(super) async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Unavailable(format!("clickhouse did not answer within {limit:?}"))),
    }
}

/// Server error codes worth retrying: overload, timeouts, network trouble between replicas,
/// read-only replicas and "too many parts" back-pressure.
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// Maps a client error to transient (`Unavailable`) or permanent.
fn classify(error: clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    let message = error.to_string();
    match &error {
        E::Network(_) | E::TimedOut | E::Other(_) => StoreError::Unavailable(message),
        E::BadResponse(body) => match server_code(body) {
            Some(code) if TRANSIENT_CODES.contains(&code) => StoreError::Unavailable(message),
            Some(_) => StoreError::Permanent(message),
            // No ClickHouse exception: a proxy's or the server's bare status (502, 503, ...).
            None if body.starts_with('4') && !body.starts_with("429") => StoreError::Permanent(message),
            None => StoreError::Unavailable(message),
        },
        _ => StoreError::Permanent(message),
    }
}

/// The `N` of a ClickHouse exception text (`Code: 60, e.displayText() = ...` on 18.16,
/// `Code: 60. DB::Exception: ...` on current servers).
fn server_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code:")? + "Code:".len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Runs `op` up to [`WRITE_ATTEMPTS`] times while it fails transiently, each time with a fresh
/// statement (the crate's insert cannot be reused after an error), waiting [`backoff`] between.
pub(super) async fn with_attempts<F, Fut>(what: &str, mut op: F) -> StoreResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<()>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt + 1 < WRITE_ATTEMPTS => {
                let wait = backoff(attempt);
                tracing::warn!(
                    error = %e,
                    attempt = attempt + 1,
                    wait_ms = wait.as_millis() as u64,
                    "{what} failed, retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.min(8)).min(BACKOFF_CAP);
    // Full jitter in [exp/2, exp].
    let half = exp / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_decide_retry() {
        let bad = |s: &str| classify(clickhouse::error::Error::BadResponse(s.into()));
        let old = "Code: 60, e.displayText() = DB::Exception: Table x.plans doesn't exist., e.what() = DB::Exception";
        assert!(matches!(bad(old), StoreError::Permanent(_)));
        let new = "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)";
        assert!(bad(new).is_transient());
        assert!(bad("503 Service Unavailable").is_transient());
        assert!(matches!(bad("400 Bad Request"), StoreError::Permanent(_)));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP);
            assert!(d >= BACKOFF_BASE / 2);
        }
    }
}
