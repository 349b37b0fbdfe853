//! The end of a fetch as the writer sees it: what became of each of its observations
//! ([`FetchTally`]), and the fetch record, log line and outcome label made from it once every
//! chunk is in.

use chrono::Utc;

use crate::actors::messages::FetchEnd;
use crate::domain::FetchRecord;
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
    /// The fetch's record, its error made of the download's failure and the writer's notes, and
    /// its outcome label; says it in the `fetch ingested` / `fetch failed` line.
    pub(super) fn complete(self, end: FetchEnd) -> (FetchRecord, &'static str) {
        let tally = self;
        let fetch_retries = end.retries;
        let retries = fetch_retries + tally.store_retries;
        let mut record = end.record;
        record.plans_seen = tally.seen;
        record.plans_written = tally.written;
        record.plans_unchanged = tally.unchanged;
        record.plans_skipped = tally.skipped;
        let outcome = fetch_outcome(end.error.as_ref(), &tally);
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
                outcome, "fetch failed"
            ),
        }
        (record, outcome)
    }
}

/// The `outcome` label of a recorded fetch (metric and log line): what became of its plans in
/// the store says more than how the download ended, so the writer's notes come first.
fn fetch_outcome(error: Option<&FetchError>, tally: &FetchTally) -> &'static str {
    if tally.dropped_reason.is_some() {
        "store_rejected"
    } else if tally.held_reason.is_some() {
        "spool_full"
    } else if let Some(e) = error {
        e.outcome()
    } else if !tally.errors.is_empty() {
        // A chunk the parser could not read.
        "bad_feed"
    } else {
        "ok"
    }
}
