//! Sends spooled entries to the store, oldest first, and removes each once the store has it.
//!
//! One replayer runs beside each batch writer. While the spool is empty it sleeps until an append
//! wakes it; while the store does not take the oldest entry it tries again on the layer's policy,
//! so entries never overtake each other. A batch the store rejects is narrowed down to the plans
//! it rejects ([`super::isolate`]); those are dropped only when proven, the rest is written. An
//! entry that cannot be decoded is set aside ([`Spool::set_aside`]), never lost or in the way.
//!
//! Replaying an older version after a newer one (a restart that re-read plans while the spool still
//! held older versions of them) is harmless: both stores keep the newest version of a key and keep
//! the ever-online flag sticky.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::NaiveDate;

use super::spool::{Entry, SpoolError};
use super::Inner;
use crate::domain::{FetchRecord, PlanKey, StoredPlan};

/// Told about plans dropped for good, so the writer forgets them (the next fetch offers them again).
pub type OnDropped = Box<dyn Fn(Vec<(PlanKey, u64)>) + Send + Sync>;

impl Inner {
    /// Runs until the future is dropped.
    pub(super) async fn replay(self: Arc<Self>, on_dropped: OnDropped) {
        let Some(spool) = self.spool.clone() else { return std::future::pending().await };
        let mut failed = 0u32;
        loop {
            if spool.entries() == 0 {
                spool.appended().await;
                continue;
            }
            match self.replay_first(&on_dropped).await {
                Ok(()) => failed = 0,
                Err(e) => {
                    crate::metrics::record_retry("spool_replay");
                    tracing::debug!(error = %e, failed, "spool replay waits for the store");
                    self.rest(failed).await;
                    failed += 1;
                }
            }
        }
    }

    /// Delivers the oldest entry; `Err` when it must be tried again later.
    async fn replay_first(&self, on_dropped: &OnDropped) -> Result<(), String> {
        let spool = self.spool.as_ref().expect("the replayer runs with a spool");
        let (seq, entry) = match spool.first().await {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(()),
            Err(SpoolError::Corrupt { seq, message }) => {
                tracing::error!(seq, error = %message, "spool entry unreadable: set aside");
                spool.set_aside(seq).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        match entry {
            Entry::Batch { plans, marks } => self.replay_batch(seq, plans, marks, on_dropped).await?,
            Entry::Fetch(record) => self.replay_fetch(&record).await?,
        }
        spool.remove(seq).await.map_err(|e| e.to_string())?;
        self.counters.spool_replayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn replay_fetch(&self, record: &FetchRecord) -> Result<(), String> {
        match self.once(self.store.record_fetch(record)).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => Err(e.to_string()),
            Err(e) if self.store_takes_plans().await => {
                tracing::error!(error = %e, provider = %record.provider, "fetch record rejected by the store: dropped");
                Ok(())
            }
            Err(e) => {
                self.refusals.unproven(&e);
                Err(e.to_string())
            }
        }
    }

    async fn replay_batch(
        &self,
        seq: i64,
        plans: Vec<StoredPlan>,
        marks: Vec<(PlanKey, NaiveDate)>,
        on_dropped: &OnDropped,
    ) -> Result<(), String> {
        let plans = Arc::new(plans);
        let mut dropped = Vec::new();
        if !plans.is_empty() {
            let whole = self.once(self.store.write_plans_shared(plans.clone())).await;
            match whole {
                Ok(()) => self.remember(&plans),
                Err(e) if e.is_transient() => return Err(e.to_string()),
                Err(e) => {
                    let settled = self.isolate(&plans, Err(e)).await;
                    if let Some(&i) = settled.pending.first() {
                        // Parts written meanwhile are written again next time: writes are idempotent.
                        return Err(format!("plan {} not taken yet", plans[i].plan.key));
                    }
                    for (i, e) in &settled.dropped {
                        self.record_drop(&plans[*i], e);
                        dropped.push((plans[*i].plan.key.clone(), plans[*i].version));
                    }
                }
            }
        }
        if !marks.is_empty() {
            match self.once(self.store.mark_ever_online(&marks)).await {
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
            on_dropped(dropped);
        }
        tracing::info!(
            seq,
            plans = written,
            left = self.spool.as_ref().map_or(0, |s| s.entries().saturating_sub(1)),
            "spooled batch replayed into the store"
        );
        let days: HashSet<NaiveDate> = plans
            .iter()
            .flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date))
            .chain(marks.iter().map(|(_, d)| *d))
            .collect();
        self.events.publish(days.into_iter().collect()).await;
        Ok(())
    }
}
