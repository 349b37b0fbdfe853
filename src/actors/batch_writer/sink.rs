//! Delivering one batch: the store first (retried briefly, [`retry`]), then the durable spool;
//! while both refuse, the batch is held and retried, which holds the writer and so the download.
//! A write task runs [`Sink::deliver`] beside the writer and reports a [`WriteOutcome`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;

use crate::actors::counters::WriterCounters;
use crate::domain::{PlanKey, StoredPlan};
use crate::retry::{retry, RetryPolicy};
use crate::spool::replay::{bounded, isolate, record_drop};
use crate::spool::{Entry, Spool};
use crate::store::{SharedStore, StoreError, StoreResult};

/// Why a batch was flushed (logged with its delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Size,
    /// The batch's estimated memory reached `batch_writer::BATCH_BYTES`.
    Bytes,
    Age,
    FetchEnd,
    Requested,
    Stop,
}

/// What became of one plan of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Written,
    /// In the spool: the replayer writes it once the store answers.
    Spooled,
    /// Rejected by the store for good (or lost with a failed write task).
    Dropped,
}

/// What became of a batch's ever-online marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marks {
    Applied,
    Spooled,
    /// Back in line for the next write.
    NotApplied,
}

/// What a write task did.
pub(super) struct WriteOutcome {
    /// Per plan of the batch, in batch order.
    pub(super) fates: Vec<Fate>,
    pub(super) marked: Marks,
    /// Store write attempts repeated.
    pub(super) retries: u32,
    /// Why plans were dropped, if any were.
    pub(super) dropped: Option<String>,
    /// Why the batch had to be held (store and spool refused it), if it was.
    pub(super) held: Option<String>,
}

impl WriteOutcome {
    pub(super) fn failed(plans: usize, reason: String) -> Self {
        Self {
            fates: vec![Fate::Dropped; plans],
            marked: Marks::NotApplied,
            retries: 0,
            dropped: Some(reason),
            held: None,
        }
    }
}

/// Where a write task delivers: the store, else the spool.
pub(super) struct Sink {
    pub(super) store: SharedStore,
    pub(super) spool: Option<Arc<Spool>>,
    pub(super) counters: Arc<WriterCounters>,
    pub(super) write_timeout: Duration,
}

/// Attempts of one store write before its batch goes to the spool (about 3 s of backoff).
const STORE_ATTEMPTS: u32 = 5;
/// Between attempts of one store write: 200 ms doubling, jittered to 50–100 %, at most 5 s.
const STORE_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5)).jittered(0.5);
/// Between attempts while both the store and the spool refuse a batch.
const HOLD_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5));

impl Sink {
    /// Writes a batch, then applies the marks. Transient failures are retried briefly, then the
    /// rest goes to the spool; while the spool holds older entries the batch goes straight behind
    /// them. Returns only once every plan is written, spooled or rejected for good.
    pub(super) async fn deliver(
        self,
        batch: Arc<Vec<StoredPlan>>,
        marks: Vec<(PlanKey, NaiveDate)>,
        trigger: FlushTrigger,
    ) -> WriteOutcome {
        let n = batch.len();
        let mut out = WriteOutcome {
            fates: vec![Fate::Written; n],
            marked: Marks::Applied,
            retries: 0,
            dropped: None,
            held: None,
        };
        let backlog = self.spool.as_ref().is_some_and(|s| s.entries() > 0);
        let pending: Vec<usize> = match n {
            _ if backlog => (0..n).collect(),
            0 => Vec::new(),
            _ => self.write_to_store(&batch, &mut out).await,
        };
        if pending.is_empty() && !backlog {
            if marks.is_empty() {
                return out;
            }
            match self
                .retrying(&mut out.retries, "ever-online marks", || self.store.mark_ever_online(&marks))
                .await
            {
                Ok(()) => return out,
                Err(e) if e.is_transient() && self.spool.is_some() => {}
                Err(e) => {
                    tracing::warn!(error = %e, marks = marks.len(), "could not mark plans ever-online");
                    out.marked = Marks::NotApplied;
                    return out;
                }
            }
        }
        let plans: Vec<StoredPlan> = pending.iter().map(|&i| batch[i].clone()).collect();
        let why = if backlog { "behind earlier entries" } else { "store unavailable" };
        let spooled = self.hold_until_durable(Entry::Batch { plans, marks }, &mut out, trigger, why).await;
        for &i in &pending {
            out.fates[i] = if spooled { Fate::Spooled } else { Fate::Written };
        }
        out.marked = if spooled { Marks::Spooled } else { Marks::Applied };
        out
    }

    /// Writes the batch to the store, retried briefly; a permanent rejection is narrowed down to
    /// the plans it is about, which are dropped. Returns the positions still to deliver (the
    /// store is unavailable for them).
    async fn write_to_store(&self, batch: &Arc<Vec<StoredPlan>>, out: &mut WriteOutcome) -> Vec<usize> {
        let whole = self
            .retrying(&mut out.retries, "store write", || self.store.write_plans_shared(batch.clone()))
            .await;
        let e = match whole {
            Ok(()) => return Vec::new(),
            Err(e) if e.is_transient() => return (0..batch.len()).collect(),
            Err(e) => e,
        };
        let mut pending = Vec::new();
        for (range, result) in isolate(&self.store, batch, Err(e), self.write_timeout).await {
            match result {
                Ok(()) => {}
                Err(e) if e.is_transient() => pending.extend(range),
                Err(e) => {
                    for i in range {
                        out.fates[i] = Fate::Dropped;
                        record_drop(&self.counters, &batch[i], &e);
                    }
                    out.dropped = Some(e.to_string());
                }
            }
        }
        pending
    }

    /// Puts `entry` in the spool; while the spool refuses it, tries the store and the spool again
    /// with capped backoff, holding the writer (backpressure) until one takes it. Returns whether
    /// it went to the spool (else the store took it).
    async fn hold_until_durable(
        &self,
        entry: Entry,
        out: &mut WriteOutcome,
        trigger: FlushTrigger,
        why: &'static str,
    ) -> bool {
        let plans = entry.plans();
        let entry = Arc::new(entry);
        let mut held = 0u32;
        loop {
            if self.try_spool(&entry, out, trigger, why).await {
                return true;
            }
            tokio::time::sleep(HOLD_RETRY.delay(held)).await;
            held += 1;
            crate::metrics::record_retry("held_batch");
            let Entry::Batch { plans: rows, marks } = entry.as_ref() else { return false };
            let direct = async {
                if !rows.is_empty() {
                    self.store.write_plans(rows).await?;
                }
                if !marks.is_empty() {
                    self.store.mark_ever_online(marks).await?;
                }
                Ok::<(), StoreError>(())
            };
            match bounded(self.write_timeout, direct).await {
                Ok(()) => return false,
                Err(e) if e.is_transient() => out.retries += 1,
                Err(e) => {
                    // A permanent rejection while held: a later attempt of the spool or the store
                    // tells which plans; keep holding rather than drop the whole batch.
                    tracing::warn!(error = %e, plans, "store rejects the held batch; still holding it");
                    out.retries += 1;
                }
            }
        }
    }

    /// One attempt to spool `entry`; a refusal is recorded in `out.held` (and said once).
    async fn try_spool(
        &self,
        entry: &Arc<Entry>,
        out: &mut WriteOutcome,
        trigger: FlushTrigger,
        why: &str,
    ) -> bool {
        let plans = entry.plans();
        let Some(spool) = &self.spool else {
            if out.held.is_none() {
                tracing::error!(
                    plans,
                    "store unavailable and no spool: holding the batch, the download waits"
                );
                out.held = Some("no spool configured".into());
            }
            return false;
        };
        match spool.append(entry.clone()).await {
            Ok(()) => {
                self.counters.plans_spooled.fetch_add(plans as u64, Ordering::Relaxed);
                tracing::warn!(
                    plans,
                    ?trigger,
                    spool_entries = spool.entries(),
                    spool_bytes = spool.bytes(),
                    why,
                    "batch spooled"
                );
                true
            }
            Err(e) => {
                self.counters.spool_refusals.fetch_add(1, Ordering::Relaxed);
                if out.held.is_none() {
                    tracing::error!(error = %e, reason = e.label(), plans, "store and spool refuse the batch: holding it, the download waits");
                }
                out.held = Some(e.to_string());
                false
            }
        }
    }

    /// Runs `op` until it succeeds, fails permanently or has failed transiently
    /// [`STORE_ATTEMPTS`] times, counting each repeat in `retries` and the writer's counters. An
    /// attempt that outlives `write_timeout` ends the retries at once: a store that hangs would
    /// hang again, and the spool should take over after one timeout, not after five.
    async fn retrying<F, Fut>(&self, retries: &mut u32, what: &'static str, mut op: F) -> StoreResult<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<()>>,
    {
        let limit = self.write_timeout;
        let hung = AtomicBool::new(false);
        let attempt = || {
            let (call, hung) = (op(), &hung);
            async move {
                tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                    hung.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        limit_ms = limit.as_millis() as u64,
                        "{what}: store did not answer in time"
                    );
                    Err(StoreError::Unavailable(format!("store did not answer within {limit:?}")))
                })
            }
        };
        let retryable = |e: &StoreError| e.is_transient() && !hung.load(Ordering::Relaxed);
        retry(&STORE_RETRY, STORE_ATTEMPTS - 1, "store_write", attempt, retryable, |e, attempt, delay| {
            *retries += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
        })
        .await
    }
}
