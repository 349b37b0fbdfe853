//! What every chunk of one fetch shares: where it comes from and the fetch's log of invalid plans,
//! whose summary line is written when the fetch and its last chunk are done.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::feed::{SkipKind, Skipped};

/// Invalid plans logged one by one per fetch; the rest are counted by kind in one summary line
/// when the fetch is done, so a feed of a million bad plans writes a few kilobytes of log.
pub const LOGGED_SKIPS_PER_FETCH: u64 = 20;

/// Where a chunk comes from; shared by every chunk of one fetch. Dropped when the fetch and its
/// last chunk are done, which writes the fetch's summary of skipped plans.
#[derive(Debug)]
pub struct FetchContext {
    pub fetch_id: u64,
    pub provider: Arc<str>,
    pub tz: chrono_tz::Tz,
    pub skips: SkipLog,
}

/// The invalid plans of one fetch, as far as the log is concerned.
#[derive(Debug, Default)]
pub struct SkipLog {
    by_kind: parking_lot::Mutex<BTreeMap<SkipKind, u64>>,
    /// The first plan skipped for each kind that is summed up rather than logged one by one
    /// ([`SkipKind::summed_up`]): the example its one line per fetch quotes.
    examples: parking_lot::Mutex<BTreeMap<SkipKind, Skipped>>,
}

impl SkipLog {
    /// Logs `skipped` while the fetch is under [`LOGGED_SKIPS_PER_FETCH`]; counts them all.
    pub(crate) fn record(&self, fetch: &FetchContext, skipped: &[Skipped]) {
        if skipped.is_empty() {
            return;
        }
        let before: u64 = {
            let mut by_kind = self.by_kind.lock();
            let before = by_kind.iter().filter(|(k, _)| !k.summed_up()).map(|(_, n)| n).sum();
            for s in skipped {
                *by_kind.entry(s.kind).or_default() += 1;
            }
            before
        };
        for s in skipped.iter().filter(|s| s.kind.summed_up()) {
            self.examples.lock().entry(s.kind).or_insert_with(|| s.clone());
        }
        let room = LOGGED_SKIPS_PER_FETCH.saturating_sub(before) as usize;
        for s in skipped.iter().filter(|s| !s.kind.summed_up()).take(room) {
            tracing::warn!(
                provider = %fetch.provider,
                fetch_id = fetch.fetch_id,
                base_plan_id = s.base_plan_id.as_deref().unwrap_or("?"),
                plan_id = s.plan_id.as_deref().unwrap_or("?"),
                kind = s.kind.label(),
                reason = %s.reason,
                "invalid plan skipped"
            );
        }
    }

    /// Skipped plans by kind label (`invalid_id=1000 negative_price=1`) and their total.
    pub fn summary(&self) -> (String, u64) {
        let by_kind = self.by_kind.lock();
        let text = by_kind.iter().map(|(k, n)| format!("{}={n}", k.label())).collect::<Vec<_>>().join(" ");
        (text, by_kind.values().sum())
    }
}

impl Drop for FetchContext {
    fn drop(&mut self) {
        let counts = self.skips.by_kind.lock().clone();
        for (kind, example) in self.skips.examples.lock().iter() {
            tracing::warn!(
                provider = %self.provider,
                fetch_id = self.fetch_id,
                kind = kind.label(),
                skipped = counts.get(kind).copied().unwrap_or(0),
                example_base_plan_id = example.base_plan_id.as_deref().unwrap_or("?"),
                example_plan_id = example.plan_id.as_deref().unwrap_or("?"),
                example = %example.reason,
                "invalid plans skipped, summed up once per fetch"
            );
        }
        let (by_kind, total) = self.skips.summary();
        let one_by_one: u64 = counts.iter().filter(|(k, _)| !k.summed_up()).map(|(_, n)| n).sum();
        if one_by_one > LOGGED_SKIPS_PER_FETCH {
            tracing::warn!(
                provider = %self.provider,
                fetch_id = self.fetch_id,
                skipped = total,
                not_logged = one_by_one - LOGGED_SKIPS_PER_FETCH,
                by_kind = %by_kind,
                "more invalid plans skipped than logged one by one"
            );
        }
    }
}
