//! Sends spooled entries to the store, oldest first, and removes each once the store has it.
//!
//! One replayer runs beside each batch writer. While the spool is empty it sleeps until an append
//! wakes it; while the store refuses (transiently) it retries the oldest entry with capped backoff,
//! so entries never overtake each other. A batch the store rejects for good is cut down
//! ([`write_isolating`]) to the plans it rejects, which are dropped and recorded one by one with
//! the reason; the rest of the batch is written.
//!
//! Replaying an older version after a newer one (a restart that re-read plans while the spool still
//! held older versions of them) is harmless: both stores keep the newest version of a key and keep
//! the ever-online flag sticky.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;

use super::{Entry, Spool};
use crate::actors::counters::WriterCounters;
use crate::domain::{PlanKey, StoredPlan};
use crate::retry::RetryPolicy;
use crate::search::Searcher;
use crate::store::{SharedStore, StoreError, StoreResult};

/// Backoff between replay attempts while the store refuses: from the first to the cap, doubling.
const REPLAY_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2));

/// Told about plans dropped for good, so the writer forgets them (the next fetch offers them again).
pub type OnDropped = Box<dyn Fn(Vec<(PlanKey, u64)>) + Send + Sync>;

pub struct Replayer {
    pub spool: Arc<Spool>,
    pub store: SharedStore,
    pub searcher: Option<Arc<Searcher>>,
    pub counters: Arc<WriterCounters>,
    pub on_dropped: OnDropped,
    /// One store call slower than this counts as a transient failure (a hung store).
    pub write_timeout: Duration,
}

impl Replayer {
    /// Runs until the task is aborted (the writer that owns it stops).
    pub async fn run(self) {
        let mut failed = 0u32;
        loop {
            if self.spool.entries() == 0 {
                self.spool.appended().await;
                continue;
            }
            match self.replay_first().await {
                Ok(()) => failed = 0,
                Err(e) => {
                    let backoff = REPLAY_RETRY.delay(failed);
                    failed += 1;
                    crate::metrics::record_retry("spool_replay");
                    tracing::debug!(error = %e, backoff_ms = backoff.as_millis() as u64, "spool replay waits for the store");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Delivers the oldest entry; `Err` when it must be tried again later.
    async fn replay_first(&self) -> Result<(), String> {
        let (seq, entry) = match self.spool.first().await {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(()),
            Err(super::SpoolError::Corrupt { seq, message }) => {
                tracing::error!(seq, error = %message, "spool entry unreadable: removed");
                self.spool.remove(seq).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        match entry {
            Entry::Batch { plans, marks } => self.replay_batch(seq, plans, marks).await?,
            Entry::Fetch(record) => match bounded(self.write_timeout, self.store.record_fetch(&record)).await
            {
                Ok(()) => {}
                Err(e) if e.is_transient() => return Err(e.to_string()),
                Err(e) => {
                    tracing::error!(error = %e, provider = %record.provider, "fetch record rejected by the store: dropped")
                }
            },
        }
        self.spool.remove(seq).await.map_err(|e| e.to_string())?;
        self.counters.spool_replayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn replay_batch(
        &self,
        seq: i64,
        plans: Vec<StoredPlan>,
        marks: Vec<(PlanKey, NaiveDate)>,
    ) -> Result<(), String> {
        let plans = Arc::new(plans);
        let parts = write_isolating(&self.store, plans.clone(), self.write_timeout).await;
        if let Some((_, e)) =
            parts.iter().find_map(|(r, res)| res.as_ref().err().filter(|e| e.is_transient()).map(|e| (r, e)))
        {
            // Rows written by the parts that went through are written again on the next attempt:
            // writes are idempotent.
            return Err(e.to_string());
        }
        let mut dropped = Vec::new();
        for (range, result) in &parts {
            if let Err(e) = result {
                for p in &plans[range.clone()] {
                    record_drop(&self.counters, p, e);
                    dropped.push((p.plan.key.clone(), p.version));
                }
            }
        }
        if !marks.is_empty() {
            match bounded(self.write_timeout, self.store.mark_ever_online(&marks)).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => return Err(e.to_string()),
                Err(e) => {
                    tracing::error!(error = %e, marks = marks.len(), "ever-online marks rejected by the store")
                }
            }
        }
        let written = plans.len() - dropped.len();
        self.counters.plans_written.fetch_add(written as u64, Ordering::Relaxed);
        if !dropped.is_empty() {
            (self.on_dropped)(dropped);
        }
        tracing::info!(
            seq,
            plans = written,
            left = self.spool.entries().saturating_sub(1),
            "spooled batch replayed into the store"
        );
        if let Some(searcher) = &self.searcher {
            let days: HashSet<NaiveDate> = plans
                .iter()
                .flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date))
                .chain(marks.iter().map(|(_, d)| *d))
                .collect();
            searcher.invalidate(&days.into_iter().collect::<Vec<_>>()).await;
        }
        Ok(())
    }
}

/// Logs and counts one plan the store rejected for good.
pub fn record_drop(counters: &WriterCounters, p: &StoredPlan, error: &StoreError) {
    counters.plans_dropped.fetch_add(1, Ordering::Relaxed);
    tracing::error!(plan = %p.plan.key, version = p.version, reason = %error, "plan rejected by the store: dropped");
}

/// A part of a batch (a range of its plans) and how its write went.
pub type Part = (Range<usize>, StoreResult<()>);

/// Writes `plans` in one request; when the store rejects it for good, halves it until the
/// rejected plans are alone, so one bad plan never costs the others. Returns each part with its
/// result (one attempt per part, transient errors included: the caller decides). Costs one request
/// when nothing is rejected, about `2 · bad · log2(n)` when `bad` plans are.
pub async fn write_isolating(store: &SharedStore, plans: Arc<Vec<StoredPlan>>, limit: Duration) -> Vec<Part> {
    let first = bounded(limit, store.write_plans_shared(plans.clone())).await;
    isolate(store, &plans, first, limit).await
}

/// `call`, failing transiently when it takes longer than `limit`: a hung store (stopped, not
/// closed) answers nothing for minutes, and the spool must take over well before. A write cut off
/// this way may still land later; writes are idempotent, so its replay does no harm.
pub async fn bounded(
    limit: Duration,
    call: impl std::future::Future<Output = StoreResult<()>>,
) -> StoreResult<()> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("store did not answer within {limit:?}"))))
}

/// Continues [`write_isolating`] from the result of writing all of `plans` at once.
pub async fn isolate(
    store: &SharedStore,
    plans: &Arc<Vec<StoredPlan>>,
    whole: StoreResult<()>,
    limit: Duration,
) -> Vec<Part> {
    let n = plans.len();
    let mut out = Vec::new();
    // Each range with its result when already known (the whole batch's).
    let mut todo: Vec<(Range<usize>, Option<StoreResult<()>>)> = vec![(0..n, Some(whole))];
    while let Some((range, known)) = todo.pop() {
        let result = match known {
            Some(r) => r,
            None => bounded(limit, store.write_plans_shared(Arc::new(plans[range.clone()].to_vec()))).await,
        };
        match result {
            Err(StoreError::Permanent(_)) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                todo.push((mid..range.end, None));
                todo.push((range.start..mid, None));
            }
            other => out.push((range, other)),
        }
    }
    out
}
