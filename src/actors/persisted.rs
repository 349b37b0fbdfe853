//! The batch writer's bookkeeping, per plan key: what the store holds or the spool will deliver
//! (content hash, event day, version, ever-online). One entry per plan ever written, so its size is
//! the writer's memory floor: a million plans must not cost a hundred megabytes.
//!
//! Keys are kept per provider (the provider's name once, not in every key) and values packed: an
//! entry is 40 bytes. Entries live in blocks of [`BLOCK`] (growing adds a block, it never copies
//! the others), found through a hash table of 4-byte positions. A hash map of the entries
//! themselves would hold up to 2.3 buckets of 41 bytes per entry (it doubles past 7/8 full): a
//! million plans took 86 MB, and all of it doubled at once. Here the same million take 42 MB of
//! entries and at most 11 MB of positions, and a growth copies only the positions.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::{hash_table, HashTable};

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

/// A provider's key, `(base_plan_id, plan_id)`.
type Key = (u64, u64);

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    packed: Packed,
}

/// Entries a block holds: 640 KiB, the most a provider's entries overshoot what they need.
const BLOCK: usize = 1 << 14;

/// One provider's entries.
#[derive(Debug, Default)]
struct Plans {
    /// Positions in `blocks`, found by the key's hash.
    index: HashTable<u32>,
    /// The entries, in insertion order but for removals (the last entry takes the removed one's
    /// place). Every block but the last is full.
    blocks: Vec<Vec<Entry>>,
}

fn at(blocks: &[Vec<Entry>], position: u32) -> &Entry {
    let p = position as usize;
    &blocks[p / BLOCK][p % BLOCK]
}

fn at_mut(blocks: &mut [Vec<Entry>], position: u32) -> &mut Entry {
    let p = position as usize;
    &mut blocks[p / BLOCK][p % BLOCK]
}

impl Plans {
    fn len(&self) -> usize {
        self.blocks.last().map_or(0, |last| (self.blocks.len() - 1) * BLOCK + last.len())
    }

    fn position(&self, hash: u64, key: Key) -> Option<u32> {
        self.index.find(hash, |&p| at(&self.blocks, p).key == key).copied()
    }

    fn get(&self, hash: u64, key: Key) -> Option<&Entry> {
        self.position(hash, key).map(|p| at(&self.blocks, p))
    }

    fn get_mut(&mut self, hash: u64, key: Key) -> Option<&mut Entry> {
        self.position(hash, key).map(|p| at_mut(&mut self.blocks, p))
    }

    fn insert(&mut self, hasher: &RandomState, hash: u64, entry: Entry) {
        let position = u32::try_from(self.len()).expect("fewer than 2^32 plans per provider");
        let blocks = &self.blocks;
        let same = |&p: &u32| at(blocks, p).key == entry.key;
        match self.index.entry(hash, same, |&p| hasher.hash_one(at(blocks, p).key)) {
            hash_table::Entry::Occupied(found) => *at_mut(&mut self.blocks, *found.get()) = entry,
            hash_table::Entry::Vacant(slot) => {
                slot.insert(position);
                match self.blocks.last_mut() {
                    Some(last) if last.len() < BLOCK => last.push(entry),
                    _ => self.blocks.push(vec![entry]),
                }
            }
        }
    }

    fn remove(&mut self, hasher: &RandomState, hash: u64, key: Key) {
        let blocks = &self.blocks;
        let Ok(found) = self.index.find_entry(hash, |&p| at(blocks, p).key == key) else {
            return;
        };
        let (position, _) = found.remove();
        let last = u32::try_from(self.len() - 1).expect("positions fit in u32");
        if position != last {
            let moved = *at(&self.blocks, last);
            let slot = self.index.find_mut(hasher.hash_one(moved.key), |&p| p == last);
            *slot.expect("every entry has its position") = position;
            *at_mut(&mut self.blocks, position) = moved;
        }
        let tail = self.blocks.last_mut().expect("an entry was found");
        tail.pop();
        if tail.is_empty() {
            self.blocks.pop();
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.blocks.iter().flatten()
    }
}

#[derive(Debug, Default)]
pub struct Persisted {
    by_provider: HashMap<Arc<str>, Plans>,
    /// Hashes the keys (SipHash, keyed per process: the ids come from the provider).
    hasher: RandomState,
}

impl Persisted {
    fn key(&self, key: &PlanKey) -> (u64, Key) {
        let k = (key.base_plan_id, key.plan_id);
        (self.hasher.hash_one(k), k)
    }

    pub fn get(&self, key: &PlanKey) -> Option<PlanState> {
        let (hash, k) = self.key(key);
        self.by_provider.get(&key.provider)?.get(hash, k).map(|e| e.packed.state())
    }

    pub fn insert(&mut self, key: &PlanKey, state: PlanState) {
        let (hash, k) = self.key(key);
        let plans = match self.by_provider.get_mut(&key.provider) {
            Some(plans) => plans,
            None => self.by_provider.entry(key.provider.clone()).or_default(),
        };
        plans.insert(&self.hasher, hash, Entry { key: k, packed: Packed::new(state) });
    }

    pub fn remove(&mut self, key: &PlanKey) {
        let (hash, k) = self.key(key);
        if let Some(plans) = self.by_provider.get_mut(&key.provider) {
            plans.remove(&self.hasher, hash, k);
        }
    }

    /// Marks a known key ever-online; unknown keys are ignored.
    pub fn set_ever_online(&mut self, key: &PlanKey) {
        let (hash, k) = self.key(key);
        let plans = self.by_provider.get_mut(&key.provider);
        if let Some(e) = plans.and_then(|plans| plans.get_mut(hash, k)) {
            e.packed.ever_online = true;
        }
    }

    pub fn len(&self) -> usize {
        self.by_provider.values().map(Plans::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest fetch id among the versions (a version is a fetch id above a chunk's sequence
    /// number).
    pub fn version_floor(&self) -> u64 {
        let entries = self.by_provider.values().flat_map(Plans::entries);
        entries.map(|e| e.packed.version >> 20).max().unwrap_or(0)
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
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    #[test]
    fn removals_keep_every_other_entry_across_blocks() {
        let mut p = Persisted::default();
        let state =
            |hash| PlanState { hash, event_date: NaiveDate::MIN, version: 1 << 20, ever_online: false };
        let n = 2 * BLOCK as u64 + 10;
        for id in 0..n {
            p.insert(&PlanKey::new("a", id % 7, id), state(id));
        }
        p.insert(&PlanKey::new("a", 4, 4), state(99));
        // Removing from the front moves the last entries into the holes; from the back shrinks.
        for id in (0..n).filter(|id| id % 3 == 0) {
            p.remove(&PlanKey::new("a", id % 7, id));
        }
        p.remove(&PlanKey::new("a", 0, 1)); // not a key: nothing happens
        for id in 0..n {
            let expected = match id {
                4 => Some(99),
                _ if id % 3 == 0 => None,
                _ => Some(id),
            };
            assert_eq!(p.get(&PlanKey::new("a", id % 7, id)).map(|s| s.hash), expected, "plan {id}");
        }
        assert_eq!(p.len(), (n - n.div_ceil(3)) as usize);
        for id in (0..n).filter(|id| id % 3 != 0) {
            p.remove(&PlanKey::new("a", id % 7, id));
        }
        assert!(p.is_empty());
        assert!(p.by_provider["a"].blocks.is_empty());
    }
}
