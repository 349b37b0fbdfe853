//! A batch the store rejected, narrowed down to the plans it rejects: halved until they are alone
//! (one request when nothing is rejected, about `2 · bad · log2(n)` when `bad` plans are). A
//! rejected plan is dropped only with proof that the store takes plans: another part of the batch
//! was written, or the witness (a plan the store took before, written again: writes are
//! idempotent and the stores keep the newest version) is. Without proof the rejection is the
//! store's: the plans wait like any refused batch.

use std::ops::Range;
use std::sync::Arc;

use super::Inner;
use crate::domain::StoredPlan;
use crate::store::{StoreError, StoreResult};

/// What isolation decided for a rejected batch, by position.
pub(super) struct Settled {
    /// Rejected while the store took other plans, with the store's reason.
    pub(super) dropped: Vec<(usize, StoreError)>,
    /// Not taken for a reason of the store's: to deliver later.
    pub(super) pending: Vec<usize>,
}

impl Inner {
    /// Continues from `whole`, the result of writing all of `plans` at once. Each part is tried
    /// once; its transient failures are the caller's to retry.
    pub(super) async fn isolate(&self, plans: &Arc<Vec<StoredPlan>>, whole: StoreResult<()>) -> Settled {
        let mut todo: Vec<(Range<usize>, Option<StoreResult<()>>)> = vec![(0..plans.len(), Some(whole))];
        let (mut rejected, mut pending, mut took_some) = (Vec::new(), Vec::new(), false);
        while let Some((range, known)) = todo.pop() {
            let result = match known {
                Some(r) => r,
                None => {
                    let part = Arc::new(plans[range.clone()].to_vec());
                    self.once(self.store.write_plans_shared(part)).await
                }
            };
            match result {
                Ok(()) => {
                    took_some = true;
                    self.remember(&plans[range]);
                }
                Err(StoreError::Permanent(_)) if range.len() > 1 => {
                    let mid = range.start + range.len() / 2;
                    todo.push((mid..range.end, None));
                    todo.push((range.start..mid, None));
                }
                Err(e) if e.is_transient() => pending.extend(range),
                Err(e) => rejected.push((range.start, e)),
            }
        }
        if rejected.is_empty() || took_some || self.store_takes_plans().await {
            return Settled { dropped: rejected, pending };
        }
        self.refusals.unproven(&rejected[0].1);
        pending.extend(rejected.into_iter().map(|(i, _)| i));
        pending.sort_unstable();
        Settled { dropped: Vec::new(), pending }
    }

    /// Keeps a plan of a batch the store took, as the next proof that it takes plans.
    pub(super) fn remember(&self, taken: &[StoredPlan]) {
        if let Some(p) = taken.first() {
            let mut witness = p.clone();
            // Written again it must change nothing: no other day's row is superseded by it.
            witness.previous_event_date = None;
            *self.witness.lock() = Some(witness);
        }
    }

    /// Whether the store takes a plan it took before (written again, unchanged). False with no
    /// such plan yet.
    pub(super) async fn store_takes_plans(&self) -> bool {
        let Some(witness) = self.witness.lock().clone() else { return false };
        self.once(self.store.write_plans_shared(Arc::new(vec![witness]))).await.is_ok()
    }
}
