//! Why a fetch failed, as a value: the same [`FetchError`] gives the `fetch failed` log line its
//! text, the stored fetch record its `error` and `planfeed_fetches_total` its `outcome` label
//! ([`FetchError::outcome`]), so no label is ever recovered from a message.

use std::time::Duration;

use crate::feed::FeedError;

/// A fetch that ended before its body was read whole. The text (`Display`) is what the store's
/// fetch log keeps; it names the value that failed (status, timeout, bytes read).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The breaker is open: no request was sent.
    #[error("circuit open: {failures} consecutive failed fetches, no request sent; next probe in {} ms", .remaining.as_millis())]
    CircuitOpen { failures: u32, remaining: Duration },
    /// `file://` feeds (`planfeed ingest --file`).
    #[error("cannot open {path}: {source}")]
    OpenFile { path: String, source: std::io::Error },
    /// No successful response started: the last attempt's failure, after `retries` repeats.
    #[error("{cause}{}{}", no_time_left(.out_of_time), after_retries(*.retries))]
    Request { cause: RequestError, retries: u32, out_of_time: Option<Duration> },
    #[error("body read failed after {bytes} bytes: {chain}")]
    BodyRead { bytes: u64, chain: String, timed_out: bool },
    #[error("fetch timed out after {timeout:?} while reading the body ({bytes} bytes read)")]
    BodyTimeout { timeout: Duration, bytes: u64 },
    #[error(
        "body exceeds provider.max_body_bytes ({limit} bytes); the base plans before the limit were kept"
    )]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The fetch's deadline passed while it waited for a pipeline permit: the writer (the store or
    /// the spool behind it) did not keep up. Not the provider's fault.
    #[error("fetch timed out after {timeout:?} waiting for the pipeline (store too slow?)")]
    Backpressure { timeout: Duration },
    /// The service was asked to stop (`SIGTERM`) while the fetch ran: the download was cut where it
    /// stood, and the complete base plans read until then were handed on. Its own outcome, so the
    /// fetch log tells an operator's stop from a provider's failure.
    #[error("fetch interrupted by shutdown after {bytes} bytes; the complete base plans read until then were kept")]
    Interrupted { bytes: u64 },
    #[error("pipeline is shutting down")]
    ShuttingDown,
    #[error("no parser is running")]
    NoParser,
}

/// The failure of one request attempt.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The fetch's whole time was spent waiting for a response.
    #[error("fetch timed out after {0:?} waiting for a response")]
    NoResponse(Duration),
    #[error("provider answered HTTP {0}")]
    Status(reqwest::StatusCode),
    /// `chain` is the error with its sources (`reqwest` hides the cause there); `transient`: a
    /// connect error, a timeout or a request that could not be sent, worth another attempt.
    #[error("request to {url} failed: {chain}")]
    Send { url: String, chain: String, timed_out: bool, transient: bool },
}

impl FetchError {
    /// The stable label of this failure for `planfeed_fetches_total{outcome}` and the log line
    /// (docs/operations.md lists them).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::CircuitOpen { .. } => "skipped",
            Self::OpenFile { .. } => "connect",
            Self::Request { cause: RequestError::Status(_), .. } => "http_error",
            Self::Request { cause: RequestError::NoResponse(_), .. } => "timeout",
            Self::Request { cause: RequestError::Send { timed_out: true, .. }, .. } => "timeout",
            Self::Request { cause: RequestError::Send { .. }, .. } => "connect",
            Self::BodyRead { timed_out: true, .. } | Self::BodyTimeout { .. } => "timeout",
            Self::BodyRead { .. } => "body_error",
            Self::TooLarge { .. } => "too_large",
            Self::Feed(FeedError::Truncated { .. }) => "truncated",
            Self::Feed(_) => "bad_feed",
            Self::Backpressure { .. } => "backpressure",
            Self::Interrupted { .. } => "shutdown",
            Self::ShuttingDown | Self::NoParser => "pipeline",
        }
    }
}

impl RequestError {
    /// Whether the attempt is worth repeating within the fetch: the provider may answer on the
    /// next try (connect error, 5xx, 429); a 4xx or a spent deadline will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NoResponse(_) => false,
            Self::Status(s) => s.is_server_error() || s.as_u16() == 429,
            Self::Send { transient, .. } => *transient,
        }
    }
}

fn no_time_left(out_of_time: &Option<Duration>) -> String {
    out_of_time.map(|t| format!("; no time left for a retry within {t:?}")).unwrap_or_default()
}

fn after_retries(retries: u32) -> String {
    match retries {
        0 => String::new(),
        1 => " (after 1 retry)".into(),
        n => format!(" (after {n} retries)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_label_come_from_the_same_value() {
        let e = FetchError::Request {
            cause: RequestError::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE),
            retries: 2,
            out_of_time: None,
        };
        assert_eq!(e.to_string(), "provider answered HTTP 503 Service Unavailable (after 2 retries)");
        assert_eq!(e.outcome(), "http_error");
        let e = FetchError::Request {
            cause: RequestError::Status(reqwest::StatusCode::TOO_MANY_REQUESTS),
            retries: 1,
            out_of_time: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            e.to_string(),
            "provider answered HTTP 429 Too Many Requests; no time left for a retry within 2s (after 1 retry)"
        );
        let skipped = FetchError::CircuitOpen { failures: 3, remaining: Duration::from_millis(1500) };
        assert_eq!(
            skipped.to_string(),
            "circuit open: 3 consecutive failed fetches, no request sent; next probe in 1500 ms"
        );
        assert_eq!(skipped.outcome(), "skipped");
        assert_eq!(FetchError::Feed(FeedError::Truncated { bytes: 9 }).outcome(), "truncated");
        assert_eq!(FetchError::Feed(FeedError::Empty).outcome(), "bad_feed");
        assert_eq!(FetchError::TooLarge { limit: 6000 }.outcome(), "too_large");
        let stopped = FetchError::Interrupted { bytes: 4096 };
        assert_eq!(stopped.outcome(), "shutdown");
        assert!(stopped.to_string().starts_with("fetch interrupted by shutdown after 4096 bytes"));
    }

    #[test]
    fn waiting_for_the_store_is_not_a_provider_timeout() {
        let slow_store = FetchError::Backpressure { timeout: Duration::from_secs(30) };
        let slow_provider = FetchError::BodyTimeout { timeout: Duration::from_secs(30), bytes: 10 };
        assert_eq!(slow_store.outcome(), "backpressure");
        assert_eq!(slow_provider.outcome(), "timeout");
        assert!(slow_store.to_string().contains("waiting for the pipeline"));
    }
}
