//! Delivery: what becomes of the plan versions and fetch records the writer accepted. One layer,
//! the way a log shipper's sink is built: a bounded batch → one timeout → one retry policy with one
//! classifier → the store, or the durable spool when the store does not take it → replayed in
//! order. The writer actor drives it ([`Delivery::deliver`], [`Delivery::record_fetch`]) and
//! starts its replayer ([`Delivery::replay`]); the layer knows nothing of the writer's bookkeeping
//! nor of who reads the store: it announces the days it wrote as an event ([`events`]).
//!
//! The classifier (the store's [`StoreError`]) sorts a failure three ways:
//! - unavailable (down, slow, overloaded): retried briefly ([`attempt`]), then spooled;
//! - refused by the store for a reason of its own (credentials, grants, space, a missing table,
//!   read-only, a quota, a proxy, I/O): spooled at once and waited out, said once in the log with
//!   what the operator must fix, named by `/ready`, counted in `planfeed_store_refusals_total`
//!   ([`refusals`]);
//! - rejected: the batch is halved until the rejected plans are alone ([`isolate`]); they are
//!   dropped only when a write beside them succeeds (another part of the batch, or a plan the store
//!   took before), proving the store takes plans and refuses these. Without that proof the
//!   rejection is the store's, and the plans wait like any refused batch.
//!
//! Nothing is acknowledged that is not durable: a batch is reported written only once the store
//! said so, spooled only once the spool fsync'd it; while both refuse, [`Delivery::deliver`] does
//! not return (the writer stops taking chunks, which holds the download). While the spool holds
//! entries, new batches and fetch records queue behind them, so an older version never lands after
//! a newer one and a fetch record lands after the plans it counts.

mod attempt;
pub mod counters;
pub mod events;
mod isolate;
mod refusals;
mod replay;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use parking_lot::Mutex;

pub use counters::WriterCounters;
pub use events::{Events, WrittenDays};
pub use replay::OnDropped;
pub use spool::{Entry, Spool, SpoolError};

use crate::domain::{FetchRecord, PlanKey, StoredPlan};
use crate::store::{SharedStore, StoreError};
use refusals::Refusals;

/// What became of one plan of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Written,
    /// In the spool: the replayer writes it once the store takes it.
    Spooled,
    /// Rejected by the store while it took other plans (or lost with a failed write task).
    Dropped,
}

/// What became of a batch's ever-online marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    Applied,
    Spooled,
    /// Back in line for the next write.
    NotApplied,
}

/// What one delivery did.
#[derive(Debug)]
pub struct WriteOutcome {
    /// Per plan of the batch, in batch order.
    pub fates: Vec<Fate>,
    pub marked: Marks,
    /// Store calls repeated.
    pub retries: u32,
    /// Why plans were dropped, if any were.
    pub dropped: Option<String>,
    /// Why the batch had to be held (the store and the spool refused it), if it was.
    pub held: Option<String>,
}

impl WriteOutcome {
    fn written(plans: usize) -> Self {
        Self {
            fates: vec![Fate::Written; plans],
            marked: Marks::Applied,
            retries: 0,
            dropped: None,
            held: None,
        }
    }

    /// A delivery whose task failed: nothing is known to be durable.
    pub fn failed(plans: usize, reason: String) -> Self {
        Self {
            fates: vec![Fate::Dropped; plans],
            marked: Marks::NotApplied,
            retries: 0,
            dropped: Some(reason),
            held: None,
        }
    }
}

/// The delivery layer for one store: cheap to clone, shared by the writer (across its restarts),
/// its replayer and whoever reports on it (`/ready`, metrics).
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    spool: Option<Arc<Spool>>,
    counters: Arc<WriterCounters>,
    /// One store call slower than this counts as unavailable (`spool.write_timeout`).
    write_timeout: Duration,
    events: Events,
    refusals: Refusals,
    /// A plan the store took, to prove it still takes plans when it rejects others (see [`isolate`]).
    witness: Mutex<Option<StoredPlan>>,
}

impl Delivery {
    /// `spool`: where what the store does not take waits; `None`, it is held (the download waits).
    pub fn new(
        store: SharedStore,
        spool: Option<Arc<Spool>>,
        counters: Arc<WriterCounters>,
        write_timeout: Duration,
    ) -> Self {
        let refusals = Refusals::new(store.name());
        let inner = Inner {
            store,
            spool,
            counters,
            write_timeout,
            events: Events::default(),
            refusals,
            witness: Mutex::new(None),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.inner.spool.as_ref()
    }

    pub fn counters(&self) -> &Arc<WriterCounters> {
        &self.inner.counters
    }

    /// Where the days written are announced.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// What the operator must fix while the store refuses writes (`None` while it takes them).
    pub fn refusal(&self) -> Option<String> {
        self.inner.refusals.current()
    }

    /// Announces `days` as written and returns once every subscriber has handled them.
    pub async fn announce(&self, days: Vec<NaiveDate>) {
        self.inner.events.publish(days).await
    }

    /// Writes a batch, then applies the marks (each for a version written before). Returns only
    /// once every plan is written, spooled or dropped (see the module's rules).
    pub async fn deliver(
        &self,
        batch: Arc<Vec<StoredPlan>>,
        marks: Vec<(PlanKey, NaiveDate)>,
    ) -> WriteOutcome {
        let inner = &self.inner;
        let n = batch.len();
        let mut out = WriteOutcome::written(n);
        let backlog = inner.backlog();
        let pending: Vec<usize> = match n {
            _ if backlog => (0..n).collect(),
            0 => Vec::new(),
            _ => inner.write_to_store(&batch, &mut out).await,
        };
        if pending.is_empty() && !backlog {
            if marks.is_empty() {
                return out;
            }
            let store = &inner.store;
            match inner
                .attempts("ever-online marks", &mut out.retries, || store.mark_ever_online(&marks))
                .await
            {
                Ok(()) => return out,
                Err(e) if e.is_transient() => {}
                Err(e) => {
                    tracing::warn!(error = %e, marks = marks.len(), "could not mark plans ever-online");
                    out.marked = Marks::NotApplied;
                    return out;
                }
            }
        }
        let plans: Vec<StoredPlan> = pending.iter().map(|&i| batch[i].clone()).collect();
        let why = if backlog { "behind earlier entries" } else { "store does not take it" };
        let spooled = inner.hold_until_durable(Entry::Batch { plans, marks }, &mut out, why).await;
        for &i in &pending {
            out.fates[i] = if spooled { Fate::Spooled } else { Fate::Written };
        }
        out.marked = if spooled { Marks::Spooled } else { Marks::Applied };
        out
    }

    /// Appends a fetch record to the store's log, on the same path as plans: behind spooled
    /// entries (or when the store does not take it) it goes to the spool, so it lands after the
    /// plans it counts. Dropped only when the store rejects it while it takes plans.
    pub async fn record_fetch(&self, record: FetchRecord) {
        let inner = &self.inner;
        if !inner.backlog() {
            match inner.once(inner.store.record_fetch(&record)).await {
                Ok(()) => return,
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "fetch record goes to the spool");
                }
                Err(e) if inner.store_takes_plans().await => {
                    tracing::error!(error = %e, provider = %record.provider, "fetch record rejected by the store: dropped");
                    return;
                }
                Err(e) => inner.refusals.unproven(&e),
            }
        }
        let mut out = WriteOutcome::written(0);
        inner.hold_until_durable(Entry::Fetch(record), &mut out, "behind earlier entries").await;
    }

    /// Replays the spool into the store, oldest first, until the returned future is dropped
    /// (the writer that started it stops). Only one may run per spool.
    pub fn replay(&self, on_dropped: OnDropped) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.inner.clone().replay(on_dropped)
    }
}

impl Inner {
    /// Whether the spool holds entries that anything new must queue behind.
    fn backlog(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| s.entries() > 0)
    }

    /// Writes the batch to the store ([`Inner::attempts`]); a rejection is narrowed down to the
    /// plans it is about, which are dropped when proven ([`isolate`]). Returns the positions still
    /// to deliver.
    async fn write_to_store(&self, batch: &Arc<Vec<StoredPlan>>, out: &mut WriteOutcome) -> Vec<usize> {
        let store = &self.store;
        let whole =
            self.attempts("store write", &mut out.retries, || store.write_plans_shared(batch.clone())).await;
        let e = match whole {
            Ok(()) => {
                self.remember(batch);
                return Vec::new();
            }
            Err(e) if e.is_transient() => return (0..batch.len()).collect(),
            Err(e) => e,
        };
        let settled = self.isolate(batch, Err(e)).await;
        for (i, e) in &settled.dropped {
            out.fates[*i] = Fate::Dropped;
            self.record_drop(&batch[*i], e);
            out.dropped = Some(e.to_string());
        }
        settled.pending
    }

    /// Logs and counts one plan the store rejected while it took others.
    fn record_drop(&self, p: &StoredPlan, error: &StoreError) {
        self.counters.plans_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(plan = %p.plan.key, version = p.version, reason = %error, "plan rejected by the store while it takes others: dropped");
    }

    /// Puts `entry` in the spool; while the spool refuses it, tries the store and the spool again
    /// with backoff, holding the caller (backpressure) until one takes it. Returns whether it went
    /// to the spool (else the store took it).
    async fn hold_until_durable(&self, entry: Entry, out: &mut WriteOutcome, why: &'static str) -> bool {
        let entry = Arc::new(entry);
        let mut held = 0u32;
        loop {
            if self.try_spool(&entry, out, why).await {
                return true;
            }
            self.rest(held).await;
            held += 1;
            crate::metrics::record_retry("held_batch");
            let direct = async {
                match entry.as_ref() {
                    Entry::Batch { plans, marks } => {
                        if !plans.is_empty() {
                            self.store.write_plans(plans).await?;
                        }
                        if !marks.is_empty() {
                            self.store.mark_ever_online(marks).await?;
                        }
                        Ok(())
                    }
                    Entry::Fetch(record) => self.store.record_fetch(record).await,
                }
            };
            match self.once(direct).await {
                Ok(()) => return false,
                Err(e) => {
                    out.retries += 1;
                    if !e.is_transient() && held == 1 {
                        // A later attempt of the spool or the store tells which plans; dropping the
                        // whole batch unproven is never the answer.
                        tracing::warn!(error = %e, plans = entry.plans(), "store rejects the held batch; still holding it");
                    }
                }
            }
        }
    }

    /// One attempt to spool `entry`; a refusal is recorded in `out.held` (and said once).
    async fn try_spool(&self, entry: &Arc<Entry>, out: &mut WriteOutcome, why: &str) -> bool {
        let plans = entry.plans();
        let Some(spool) = &self.spool else {
            if out.held.is_none() {
                tracing::error!(plans, "store does not take the batch and no spool is configured: holding it, the download waits");
                out.held = Some("no spool configured".into());
            }
            return false;
        };
        match spool.append(entry.clone()).await {
            Ok(()) => {
                self.counters.plans_spooled.fetch_add(plans as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    plans,
                    spool_entries = spool.entries(),
                    spool_bytes = spool.bytes(),
                    why,
                    "batch spooled"
                );
                true
            }
            Err(e) => {
                self.counters.spool_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if out.held.is_none() {
                    tracing::error!(error = %e, reason = e.label(), plans, "store and spool refuse the batch: holding it, the download waits");
                }
                out.held = Some(e.to_string());
                false
            }
        }
    }
}
