//! A delivered batch settled: what was written or spooled enters the bookkeeping, the days a
//! written plan changed are announced ([`crate::delivery::Events`]), marks not applied go back in
//! line, and each observation's fate is added to its fetch's tally.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use chrono::NaiveDate;

use super::BatchWriterState;
use crate::delivery::{Fate, Marks, WriteOutcome};
use crate::domain::{PlanKey, PlanState, StoredPlan};

impl BatchWriterState {
    /// Awaits the write in flight, if any, and records its outcome.
    pub(super) async fn finish_write(&mut self) {
        let Some(f) = self.in_flight.take() else { return };
        let outcome = match f.handle.await {
            Ok(outcome) => outcome,
            Err(e) => {
                // Nothing is known to be durable: the fetch says so, the next fetch offers the plans again.
                tracing::error!(error = %e, plans = f.batch.len(), "store write task failed: batch not written");
                WriteOutcome::failed(f.batch.len(), format!("store write task failed: {e}"))
            }
        };
        let mut days = HashSet::<NaiveDate>::new();
        let written = self.settle_plans(&f.batch, &outcome.fates, &mut days);
        let counters = self.args.delivery.counters();
        counters.plans_written.fetch_add(written, Ordering::Relaxed);
        if written > 0 {
            counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.fates.contains(&Fate::Dropped) {
            counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.tally_outcome(&f.origins, &outcome);
        tracing::debug!(
            plans = f.batch.len(),
            written,
            trigger = ?f.trigger,
            retries = outcome.retries,
            elapsed_ms = f.started.elapsed().as_millis() as u64,
            "batch delivered"
        );
        self.settle_marks(f.marks, outcome.marked, &mut days);
        self.args.delivery.announce(days.into_iter().collect()).await;
    }

    /// Takes the written and spooled plans of a delivered batch into the bookkeeping and collects
    /// the days a written one changed; returns how many were written.
    fn settle_plans(&mut self, batch: &[StoredPlan], fates: &[Fate], days: &mut HashSet<NaiveDate>) -> u64 {
        let mut written = 0u64;
        for (p, fate) in batch.iter().zip(fates) {
            if *fate == Fate::Dropped {
                continue;
            }
            if *fate == Fate::Written {
                // Spooled plans' days are announced by the replayer, once they are in the store.
                days.insert(p.event_date);
                days.extend(p.previous_event_date);
                written += 1;
            }
            let state = PlanState {
                hash: p.hash,
                event_date: p.event_date,
                version: p.version,
                ever_online: p.ever_online,
            };
            self.persisted.insert(&p.plan.key, state);
        }
        written
    }

    /// Applied or spooled marks go into the bookkeeping (an applied one changes its day); marks
    /// not applied go back in line for the next write (or into the row of a newer version).
    fn settle_marks(
        &mut self,
        marks: HashMap<PlanKey, NaiveDate>,
        marked: Marks,
        days: &mut HashSet<NaiveDate>,
    ) {
        if marked == Marks::NotApplied {
            if !marks.is_empty() {
                tracing::warn!(
                    marks = marks.len(),
                    "ever-online marks not applied; retrying with the next write"
                );
            }
            for (key, day) in marks {
                match self.in_batch.get(&key) {
                    Some(&i) => self.batch[i].ever_online = true,
                    None => {
                        self.marks.entry(key).or_insert(day);
                    }
                }
            }
            return;
        }
        for (key, day) in &marks {
            self.persisted.set_ever_online(key);
            if marked == Marks::Applied {
                days.insert(*day);
            }
        }
    }

    /// Adds what became of each observation of a delivered batch to its fetch's tally.
    fn tally_outcome(&mut self, origins: &[(usize, u64)], outcome: &WriteOutcome) {
        let mut touched = HashSet::new();
        for &(slot, fetch_id) in origins {
            let Some(tally) = self.fetches.get_mut(&fetch_id) else { continue };
            match outcome.fates.get(slot) {
                Some(Fate::Written) => tally.written += 1,
                Some(Fate::Spooled) => tally.spooled += 1,
                Some(Fate::Dropped) | None => tally.dropped += 1,
            }
            touched.insert(fetch_id);
        }
        for fetch_id in touched {
            let Some(tally) = self.fetches.get_mut(&fetch_id) else { continue };
            tally.store_retries += outcome.retries;
            if outcome.held.is_some() {
                tally.held_reason.clone_from(&outcome.held);
            }
            if outcome.dropped.is_some() {
                tally.dropped_reason.clone_from(&outcome.dropped);
            }
        }
    }
}
