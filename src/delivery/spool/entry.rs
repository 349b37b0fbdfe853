//! What the spool holds: a batch of plan versions (with the ever-online marks that follow them) or
//! a fetch record, each the store refused for the moment.

use crate::domain::{FetchRecord, PlanKey, StoredPlan};

/// What waits in the spool.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Plan versions the store refused, with the ever-online marks that follow them.
    Batch { plans: Vec<StoredPlan>, marks: Vec<(PlanKey, chrono::NaiveDate)> },
    /// A fetch record the store's fetch log refused.
    Fetch(FetchRecord),
}

impl Entry {
    /// Plans carried (0 for a fetch record).
    pub fn plans(&self) -> usize {
        match self {
            Entry::Batch { plans, .. } => plans.len(),
            Entry::Fetch(_) => 0,
        }
    }
}
