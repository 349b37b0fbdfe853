//! Why a fetch failed, as a value: the same [`FetchError`] gives the `fetch failed` log line its
//! text, the stored fetch record its `error` and its `outcome` ([`FetchError::outcome`]), which is
//! also `planfeed_fetches_total`'s label, so no outcome is ever recovered from a message.

use std::time::Duration;

use crate::domain::FetchOutcome;
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
    /// The outcome of this failure: the stored record's `outcome`, the label of
    /// `planfeed_fetches_total{outcome}` and of the log line (docs/operations.md lists them).
    pub fn outcome(&self) -> FetchOutcome {
        match self {
            Self::CircuitOpen { .. } => FetchOutcome::Skipped,
            Self::OpenFile { .. } => FetchOutcome::Connect,
            Self::Request { cause: RequestError::Status(_), .. } => FetchOutcome::HttpError,
            Self::Request { cause: RequestError::NoResponse(_), .. } => FetchOutcome::Timeout,
            Self::Request { cause: RequestError::Send { timed_out: true, .. }, .. } => FetchOutcome::Timeout,
            Self::Request { cause: RequestError::Send { .. }, .. } => FetchOutcome::Connect,
            Self::BodyRead { timed_out: true, .. } | Self::BodyTimeout { .. } => FetchOutcome::Timeout,
            Self::BodyRead { .. } => FetchOutcome::BodyError,
            Self::TooLarge { .. } => FetchOutcome::TooLarge,
            Self::Feed(FeedError::Truncated { .. }) => FetchOutcome::Truncated,
            Self::Feed(_) => FetchOutcome::BadFeed,
            Self::Backpressure { .. } => FetchOutcome::Backpressure,
            Self::Interrupted { .. } => FetchOutcome::Shutdown,
            Self::ShuttingDown | Self::NoParser => FetchOutcome::Pipeline,
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
        assert_eq!(e.outcome().label(), "http_error");
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
        assert_eq!(skipped.outcome().label(), "skipped");
        assert_eq!(FetchError::Feed(FeedError::Truncated { bytes: 9 }).outcome().label(), "truncated");
        assert_eq!(FetchError::Feed(FeedError::Empty).outcome().label(), "bad_feed");
        assert_eq!(FetchError::TooLarge { limit: 6000 }.outcome().label(), "too_large");
        let stopped = FetchError::Interrupted { bytes: 4096 };
        assert_eq!(stopped.outcome().label(), "shutdown");
        assert!(stopped.to_string().starts_with("fetch interrupted by shutdown after 4096 bytes"));
    }

    /// Fetch records kept before they carried an outcome get it from their error text: for every
    /// failure, the text gives back the outcome the value has.
    #[test]
    fn the_outcome_of_an_older_record_comes_back_from_its_text() {
        let send = |chain: &str, timed_out: bool| FetchError::Request {
            cause: RequestError::Send {
                url: "http://127.0.0.1:1/feed".into(),
                chain: chain.into(),
                timed_out,
                transient: true,
            },
            retries: 3,
            out_of_time: None,
        };
        let body =
            |chain: &str, timed_out: bool| FetchError::BodyRead { bytes: 10, chain: chain.into(), timed_out };
        let status = |code: u16, out_of_time| FetchError::Request {
            cause: RequestError::Status(reqwest::StatusCode::from_u16(code).unwrap()),
            retries: 1,
            out_of_time,
        };
        let failures = [
            FetchError::CircuitOpen { failures: 3, remaining: Duration::from_millis(1500) },
            FetchError::OpenFile {
                path: "/feeds/x.xml".into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)"),
            },
            status(503, None),
            status(429, Some(Duration::from_secs(2))),
            status(404, None),
            FetchError::Request { cause: RequestError::NoResponse(Duration::from_secs(30)), retries: 0, out_of_time: None },
            send("error sending request for url (http://127.0.0.1:1/feed): operation timed out", true),
            send("error sending request for url (http://127.0.0.1:1/feed): client error (Connect): tcp connect error: Connection refused (os error 111)", false),
            body("error decoding response body: connection reset by peer", false),
            body("error decoding response body: operation timed out", true),
            body("no body bytes from the provider for 10s", true),
            FetchError::BodyTimeout { timeout: Duration::from_secs(30), bytes: 100 },
            FetchError::TooLarge { limit: 6000 },
            FetchError::Feed(FeedError::Truncated { bytes: 9 }),
            FetchError::Feed(FeedError::Empty),
            FetchError::Feed(FeedError::NotXml("text/html".into())),
            FetchError::Feed(FeedError::WrongShape("root <html>".into())),
            FetchError::Feed(FeedError::ElementTooLarge { limit: 1024 }),
            FetchError::Feed(FeedError::Malformed("unexpected end".into())),
            FetchError::Backpressure { timeout: Duration::from_secs(30) },
            FetchError::Interrupted { bytes: 4096 },
            FetchError::ShuttingDown,
            FetchError::NoParser,
        ];
        for e in &failures {
            assert_eq!(FetchOutcome::of_legacy_error(Some(&e.to_string())), e.outcome(), "{e}");
        }
        let labels: std::collections::HashSet<_> = failures.iter().map(|e| e.outcome().label()).collect();
        assert_eq!(labels.len(), 11, "every download outcome is among the samples: {labels:?}");
        assert_eq!(FetchOutcome::of_legacy_error(None), FetchOutcome::Ok);
    }

    #[test]
    fn waiting_for_the_store_is_not_a_provider_timeout() {
        let slow_store = FetchError::Backpressure { timeout: Duration::from_secs(30) };
        let slow_provider = FetchError::BodyTimeout { timeout: Duration::from_secs(30), bytes: 10 };
        assert_eq!(slow_store.outcome().label(), "backpressure");
        assert_eq!(slow_provider.outcome().label(), "timeout");
        assert!(slow_store.to_string().contains("waiting for the pipeline"));
    }
}
