//! The end of a fetch as the writer sees it: what became of each of its observations
//! ([`FetchTally`]), and the fetch record (its outcome included) and log line made from it once
//! every chunk is in.

use chrono::Utc;

use crate::actors::messages::FetchEnd;
use crate::domain::{FetchOutcome, FetchRecord};
use crate::fetch::FetchError;

/// Start of a fetch record's error when the store rejected some of its plans for good.
pub const STORE_REJECTED: &str = "store rejected";
/// Start of a fetch record's error when both the store and the spool refused its plans for a while.
pub const SPOOL_REFUSED: &str = "store and spool refused writes";

#[derive(Default)]
pub(super) struct FetchTally {
    pub(super) chunks_received: u32,
    pub(super) end: Option<FetchEnd>,
    pub(super) seen: u64,
    /// Observations taken into a batch, by what became of them once written.
    pub(super) written: u64,
    pub(super) spooled: u64,
    pub(super) dropped: u64,
    pub(super) unchanged: u64,
    pub(super) skipped: u64,
    /// Store write attempts repeated for this fetch's batches.
    pub(super) store_retries: u32,
    /// Why plans were dropped, or why the writer had to hold a batch (spool full), if it did.
    pub(super) dropped_reason: Option<String>,
    pub(super) held_reason: Option<String>,
    pub(super) errors: Vec<String>,
}

impl FetchTally {
    /// The fetch's record: its error made of the download's failure and the writer's notes, its
    /// outcome, what became of its plans; says it in the `fetch ingested` / `fetch failed` line.
    pub(super) fn complete(self, end: FetchEnd) -> FetchRecord {
        let tally = self;
        let fetch_retries = end.retries;
        let retries = fetch_retries + tally.store_retries;
        let mut record = end.record;
        record.plans_seen = tally.seen;
        record.plans_written = tally.written;
        record.plans_unchanged = tally.unchanged;
        record.plans_skipped = tally.skipped;
        record.plans_spooled = Some(tally.spooled);
        record.plans_dropped = Some(tally.dropped);
        record.outcome = fetch_outcome(end.error.as_ref(), &tally);
        let mut notes: Vec<String> = end.error.iter().map(ToString::to_string).collect();
        if notes.is_empty() {
            notes.extend(tally.errors);
        }
        if let Some(reason) = &tally.dropped_reason {
            notes.push(format!(
                "{STORE_REJECTED} {} plans (written {}, spooled {}): {reason}",
                tally.dropped, tally.written, tally.spooled
            ));
        }
        if let Some(reason) = &tally.held_reason {
            notes.push(format!("{SPOOL_REFUSED} ({reason}): the download was held until it took them"));
        }
        record.error = (!notes.is_empty()).then(|| notes.join("; "));
        record.duration_ms = (Utc::now() - record.started_at).num_milliseconds().max(0) as u64;
        match &record.error {
            None => tracing::info!(
                provider = %record.provider, seen = record.plans_seen, written = record.plans_written,
                spooled = tally.spooled, unchanged = record.plans_unchanged, skipped = record.plans_skipped,
                bytes = record.bytes, retries, fetch_retries, store_retries = tally.store_retries,
                duration_ms = record.duration_ms, "fetch ingested"
            ),
            Some(e) => tracing::warn!(
                provider = %record.provider, error = %e, http_status = ?record.http_status, seen = record.plans_seen,
                written = record.plans_written, spooled = tally.spooled, dropped = tally.dropped,
                bytes = record.bytes, retries, fetch_retries, store_retries = tally.store_retries,
                outcome = record.outcome.label(), "fetch failed"
            ),
        }
        record
    }
}

/// The outcome of a recorded fetch (record, metric and log line): what became of its plans in
/// the store says more than how the download ended, so the writer's notes come first.
fn fetch_outcome(error: Option<&FetchError>, tally: &FetchTally) -> FetchOutcome {
    if tally.dropped_reason.is_some() {
        FetchOutcome::StoreRejected
    } else if tally.held_reason.is_some() {
        FetchOutcome::SpoolFull
    } else if let Some(e) = error {
        e.outcome()
    } else if !tally.errors.is_empty() {
        // A chunk the parser could not read.
        FetchOutcome::BadFeed
    } else {
        FetchOutcome::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedError;

    fn end(error: Option<FetchError>) -> FetchEnd {
        let record = FetchRecord { provider: "p".into(), started_at: Utc::now(), ..Default::default() };
        FetchEnd { fetch_id: 1, chunks: 1, retries: 0, record, error }
    }

    /// The writer's notes decide the outcome, the record carries it with the counts, and an older
    /// record's text gives both back.
    #[test]
    fn a_record_says_its_outcome_and_counts_and_its_text_gives_them_back() {
        let dropped = FetchTally {
            seen: 45,
            written: 40,
            spooled: 2,
            dropped: 3,
            dropped_reason: Some("Code: 53, type mismatch".into()),
            ..Default::default()
        };
        let held = FetchTally {
            seen: 10,
            spooled: 10,
            held_reason: Some("spool full".into()),
            ..Default::default()
        };
        let unread_chunk = FetchTally { errors: vec!["malformed xml: bad".into()], ..Default::default() };
        let cases = [
            (FetchTally { seen: 5, written: 5, ..Default::default() }, None, FetchOutcome::Ok),
            (dropped, Some(FetchError::Feed(FeedError::Truncated { bytes: 9 })), FetchOutcome::StoreRejected),
            (held, None, FetchOutcome::SpoolFull),
            (unread_chunk, None, FetchOutcome::BadFeed),
            (FetchTally::default(), Some(FetchError::TooLarge { limit: 9 }), FetchOutcome::TooLarge),
        ];
        for (tally, error, outcome) in cases {
            let (spooled, dropped) = (tally.spooled, tally.dropped);
            let record = tally.complete(end(error));
            assert_eq!(record.outcome, outcome, "{:?}", record.error);
            assert_eq!((record.plans_spooled, record.plans_dropped), (Some(spooled), Some(dropped)));
            assert_eq!(FetchOutcome::of_legacy_error(record.error.as_deref()), outcome, "{:?}", record.error);
        }
        let record = FetchTally {
            seen: 45,
            written: 40,
            spooled: 2,
            dropped: 3,
            dropped_reason: Some("x".into()),
            ..Default::default()
        }
        .complete(end(None));
        assert_eq!(FetchOutcome::legacy_counts(record.error.as_deref()), (Some(2), Some(3)));
        assert_eq!(FetchOutcome::legacy_counts(Some("provider answered HTTP 503")), (None, None));
        assert_eq!(FetchOutcome::legacy_counts(None), (None, None));
    }
}
