//! The batch writer's bookkeeping, per plan key: what the store holds or the spool will deliver
//! (content hash, event day, version, ever-online). One entry per plan ever written, so its size is
//! the writer's memory floor: a million plans must not cost a hundred megabytes. Keys are kept per
//! provider (the provider's name once, not in every key) and values packed, 40 bytes an entry
//! instead of 56; the table's growth (old and new table side by side for a moment) shrinks with it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{PlanKey, PlanState};
use crate::store::{day_number, day_of_number};

#[derive(Debug, Clone, Copy)]
struct Packed {
    hash: u64,
    version: u64,
    day: i32,
    ever_online: bool,
}

impl Packed {
    fn new(s: PlanState) -> Self {
        let day = day_number(s.event_date) as i32;
        Self { hash: s.hash, version: s.version, day, ever_online: s.ever_online }
    }

    fn state(self) -> PlanState {
        PlanState {
            hash: self.hash,
            event_date: day_of_number(i64::from(self.day)).unwrap_or_default(),
            version: self.version,
            ever_online: self.ever_online,
        }
    }
}

#[derive(Debug, Default)]
pub struct Persisted {
    by_provider: HashMap<Arc<str>, HashMap<(u64, u64), Packed>>,
}

impl Persisted {
    pub fn get(&self, key: &PlanKey) -> Option<PlanState> {
        let plans = self.by_provider.get(&key.provider)?;
        plans.get(&(key.base_plan_id, key.plan_id)).map(|p| p.state())
    }

    pub fn insert(&mut self, key: &PlanKey, state: PlanState) {
        let plans = match self.by_provider.get_mut(&key.provider) {
            Some(plans) => plans,
            None => self.by_provider.entry(key.provider.clone()).or_default(),
        };
        plans.insert((key.base_plan_id, key.plan_id), Packed::new(state));
    }

    pub fn remove(&mut self, key: &PlanKey) {
        if let Some(plans) = self.by_provider.get_mut(&key.provider) {
            plans.remove(&(key.base_plan_id, key.plan_id));
        }
    }

    /// Marks a known key ever-online; unknown keys are ignored.
    pub fn set_ever_online(&mut self, key: &PlanKey) {
        let plans = self.by_provider.get_mut(&key.provider);
        if let Some(p) = plans.and_then(|plans| plans.get_mut(&(key.base_plan_id, key.plan_id))) {
            p.ever_online = true;
        }
    }

    pub fn len(&self) -> usize {
        self.by_provider.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest fetch id among the versions (a version is a fetch id above a chunk's sequence
    /// number).
    pub fn version_floor(&self) -> u64 {
        self.by_provider.values().flat_map(|plans| plans.values()).map(|p| p.version >> 20).max().unwrap_or(0)
    }
}

impl FromIterator<(PlanKey, PlanState)> for Persisted {
    fn from_iter<I: IntoIterator<Item = (PlanKey, PlanState)>>(iter: I) -> Self {
        let mut persisted = Persisted::default();
        for (key, state) in iter {
            persisted.insert(&key, state);
        }
        persisted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn states_come_back_as_they_went_in_per_provider() {
        let mut p = Persisted::default();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let state = |event_date, version| PlanState { hash: 7, event_date, version, ever_online: false };
        let (a, b) = (PlanKey::new("a", 1, 2), PlanKey::new("b", 1, 2));
        p.insert(&a, state(day(1, 1, 1), 1 << 21));
        p.insert(&b, state(day(9999, 12, 31), 5 << 20));
        assert_eq!(p.get(&a), Some(state(day(1, 1, 1), 1 << 21)));
        assert_eq!(p.get(&b).map(|s| s.event_date), Some(day(9999, 12, 31)));
        assert_eq!((p.len(), p.version_floor()), (2, 5));
        p.set_ever_online(&a);
        assert!(p.get(&a).unwrap().ever_online);
        p.remove(&a);
        assert_eq!((p.get(&a), p.len()), (None, 1));
        assert_eq!(std::mem::size_of::<Packed>() + std::mem::size_of::<(u64, u64)>(), 40);
    }
}
