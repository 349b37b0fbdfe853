//! Timeouts, error classification and the retry loop of the ClickHouse store: which failures are
//! worth another attempt (network trouble, overload, read-only replicas) and which are not.
//!
//! Retries are counted, and bounded so that levels multiply to a small, written-down number:
//! one write (a batch or its ever-online marks) is one pass over the replicas in order (a
//! transient failure moves the whole batch to the next replica, see [`super::endpoints`]),
//! repeated once ([`STATEMENT_RETRIES`], `planfeed_retries_total{operation="clickhouse_statement"}`)
//! on the shared [`RetryPolicy`]. The batch writer makes at most 5 calls per batch
//! (`store_write`), so one batch costs at most 5 × 2 × R INSERTs with R replicas: 10 with one
//! replica, 20 with two. Reads and the fetch log are not repeated here (one pass over the replicas).

use std::time::Duration;

use crate::retry::{retry, RetryPolicy};
use crate::store::{StoreError, StoreResult};

/// Repeats of a statement inside the store after its first pass over the replicas failed
/// transiently: one, because the batch writer and the spool replayer retry the whole call again.
pub(super) const STATEMENT_RETRIES: u32 = 1;
/// Wait before that repeat: long enough for a replica that just restarted to be found by the
/// probe, short against the writer's own backoff (200 ms to 5 s).
const STATEMENT_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2)).jittered(0.5);

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
    285, // TOO_FEW_LIVE_REPLICAS (insert_quorum)
    286, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
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

/// Runs `op` (one pass over the replicas, see [`super::endpoints`]) and, while it fails
/// transiently, repeats it up to [`STATEMENT_RETRIES`] times on the shared [`RetryPolicy`], each
/// time with a fresh statement (the crate's insert cannot be reused after an error). Every repeat
/// is counted as `planfeed_retries_total{operation="clickhouse_statement"}`.
pub(super) async fn with_attempts<F, Fut>(what: &str, op: F) -> StoreResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<()>>,
{
    let log = |e: &StoreError, attempt: u32, wait: Duration| {
        tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "{what} failed, retrying");
    };
    retry(&STATEMENT_RETRY, STATEMENT_RETRIES, "clickhouse_statement", op, StoreError::is_transient, log)
        .await
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
}
