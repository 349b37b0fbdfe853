//! The batch writer's bookkeeping, per plan key: what the store holds or the spool will deliver
//! (content hash, event day, version, ever-online). One entry per plan ever written, so its size is
//! the writer's memory floor: a million plans must not cost a hundred megabytes. Keys are kept per
//! provider (the provider's name once, not in every key) and values packed, 40 bytes an entry
//! instead of 56. A provider's entries are spread over [`SHARDS`] tables, each growing on its own:
//! one table of a million entries doubled into a new one while the old was still there (86 MB of
//! table became 129 MB for that moment); a shard's growth adds a sixteenth of that.

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

/// Tables a provider's entries are spread over.
const SHARDS: usize = 16;

/// One provider's entries, by `(base_plan_id, plan_id)`, spread over [`SHARDS`] tables.
#[derive(Debug, Default)]
struct Shards([HashMap<(u64, u64), Packed>; SHARDS]);

impl Shards {
    fn of(&self, key: (u64, u64)) -> &HashMap<(u64, u64), Packed> {
        &self.0[shard(key)]
    }

    fn of_mut(&mut self, key: (u64, u64)) -> &mut HashMap<(u64, u64), Packed> {
        &mut self.0[shard(key)]
    }

    fn len(&self) -> usize {
        self.0.iter().map(HashMap::len).sum()
    }

    fn values(&self) -> impl Iterator<Item = &Packed> {
        self.0.iter().flat_map(HashMap::values)
    }
}

/// The shard of a key: the top bits of a multiplicative mix, so consecutive plan ids spread.
fn shard((base_plan_id, plan_id): (u64, u64)) -> usize {
    let mixed = (plan_id ^ base_plan_id.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SHARDS.trailing_zeros())) as usize
}

#[derive(Debug, Default)]
pub struct Persisted {
    by_provider: HashMap<Arc<str>, Shards>,
}

impl Persisted {
    pub fn get(&self, key: &PlanKey) -> Option<PlanState> {
        let k = (key.base_plan_id, key.plan_id);
        self.by_provider.get(&key.provider)?.of(k).get(&k).map(|p| p.state())
    }

    pub fn insert(&mut self, key: &PlanKey, state: PlanState) {
        let plans = match self.by_provider.get_mut(&key.provider) {
            Some(plans) => plans,
            None => self.by_provider.entry(key.provider.clone()).or_default(),
        };
        let k = (key.base_plan_id, key.plan_id);
        plans.of_mut(k).insert(k, Packed::new(state));
    }

    pub fn remove(&mut self, key: &PlanKey) {
        if let Some(plans) = self.by_provider.get_mut(&key.provider) {
            let k = (key.base_plan_id, key.plan_id);
            plans.of_mut(k).remove(&k);
        }
    }

    /// Marks a known key ever-online; unknown keys are ignored.
    pub fn set_ever_online(&mut self, key: &PlanKey) {
        let k = (key.base_plan_id, key.plan_id);
        let plans = self.by_provider.get_mut(&key.provider);
        if let Some(p) = plans.and_then(|plans| plans.of_mut(k).get_mut(&k)) {
            p.ever_online = true;
        }
    }

    pub fn len(&self) -> usize {
        self.by_provider.values().map(Shards::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest fetch id among the versions (a version is a fetch id above a chunk's sequence
    /// number).
    pub fn version_floor(&self) -> u64 {
        self.by_provider.values().flat_map(Shards::values).map(|p| p.version >> 20).max().unwrap_or(0)
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

    #[test]
    fn consecutive_plans_spread_over_every_shard() {
        let mut counts = [0usize; SHARDS];
        for plan_id in 0..16_000u64 {
            counts[shard((100, plan_id))] += 1;
        }
        assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
    }
}
