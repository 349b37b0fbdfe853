//! The cache of finished bodies: the complete `/search` body of a range, keyed by its exact
//! instants, in a moka cache of a quarter of `search.cache_bytes`, so a hot query costs one lookup
//! however many days it spans. A body is served while it was built under the current invalidation
//! epoch and is fresh (or stale while the store is down); each thread also remembers the bodies it
//! used lately, so a repeated query skips the cache's own lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::body::{Answer, CachedBody};
use super::counters::SearchCounters;
use super::health::StoreHealth;
use crate::cpu::answers;

/// A finished body larger than the cache budget divided by this is not kept (it would evict many
/// days to save one concatenation).
const BODY_FRACTION: u64 = 64;

pub(super) struct Bodies {
    /// Unique in the process: names this cache's bodies in each thread's recent ones.
    id: u64,
    cache: moka::future::Cache<(i64, i64), Arc<CachedBody>>,
    /// Bodies up to this size are cached.
    limit: usize,
    counters: Arc<SearchCounters>,
}

impl Bodies {
    /// The body cache of a search cache of `cache_bytes`.
    pub(super) fn new(cache_bytes: u64, counters: Arc<SearchCounters>) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        // Finished bodies duplicate day bytes: a quarter of the budget on top of the days.
        let cache = moka::future::Cache::builder()
            .max_capacity((cache_bytes / 4).max(1))
            .weigher(|_k: &(i64, i64), v: &Arc<CachedBody>| v.weight())
            .build();
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            cache,
            limit: (cache_bytes / BODY_FRACTION) as usize,
            counters,
        }
    }

    /// The largest body kept.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// The finished body of the range `key` if it was built under `epoch` and is fresh at `now`
    /// (or stale while the store is down).
    pub(super) async fn get(
        &self,
        key: (i64, i64),
        epoch: u64,
        now: Instant,
        health: &StoreHealth,
    ) -> Option<Answer> {
        let recent = recent_body(self.id, key).filter(|c| c.built_under(epoch) && c.fresh_at(now));
        if let Some(cached) = recent {
            self.counters.body_hits.add(1);
            return Some(Answer::cached(key, cached));
        }
        let cached = self.cache.get(&key).await.filter(|c| c.built_under(epoch))?;
        remember_body(self.id, key, &cached);
        if cached.fresh_at(now) {
            self.counters.body_hits.add(1);
            return Some(Answer::cached(key, cached));
        }
        if health.down() {
            self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
            return Some(Answer::cached(key, cached));
        }
        None
    }

    /// Caches a finished `body` for the range `key`, built under `epoch` from days fresh until
    /// `fresh_until`.
    pub(super) async fn keep(
        &self,
        key: (i64, i64),
        body: Bytes,
        epoch: u64,
        fresh_until: Instant,
    ) -> Answer {
        let len = body.len();
        // Its content hash is computed over every byte.
        let make = move || Arc::new(CachedBody::new(body, epoch, fresh_until));
        let cached = answers::run_sized(len, make).await;
        self.cache.insert(key, cached.clone()).await;
        remember_body(self.id, key, &cached);
        Answer::built_and_cached(key, cached)
    }

    /// The compressed form of a cached `answer` (see [`super::Searcher::compressed`]), with the
    /// bytes this call compressed.
    pub(super) async fn compressed(
        &self,
        answer: &Answer,
        compress: fn(&[u8]) -> Bytes,
    ) -> Option<(Bytes, usize)> {
        let (key, cached) = answer.cached_body()?;
        if let Some(done) = cached.compressed() {
            return Some((done.clone(), 0));
        }
        let (packed, made) = cached.compress(compress).await;
        let current = self.cache.get(key).await;
        if made && current.is_some_and(|c| Arc::ptr_eq(&c, cached)) {
            // Inserted again so the weigher counts the compressed bytes too.
            self.cache.insert(*key, cached.clone()).await;
        }
        Some((packed, if made { cached.len() } else { 0 }))
    }
}

/// Cached bodies this thread found or made lately, per thread at most.
const RECENT_BODIES: usize = 16;
/// One hit in this many on a recent body still goes through the cache, so its eviction policy
/// sees the body in use.
const RECENT_REFRESH: u32 = 64;

/// Bodies this thread found in the cache or put there lately, by searcher and range, held weakly:
/// a hit here skips the cache's own lookup (a concurrent map, the access recorded for its
/// eviction policy, a clock read: together a visible share of a `304`) and never keeps a body
/// the cache has let go (its bytes go with the last strong handle).
#[derive(Default)]
struct Recent {
    entries: Vec<RecentBody>,
    /// The entry replaced next once all are taken.
    next: usize,
}

struct RecentBody {
    searcher: u64,
    key: (i64, i64),
    body: std::sync::Weak<CachedBody>,
    hits: u32,
}

impl Recent {
    fn entry(&mut self, searcher: u64, key: (i64, i64)) -> Option<&mut RecentBody> {
        self.entries.iter_mut().find(|e| e.searcher == searcher && e.key == key)
    }
}

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = std::cell::RefCell::default();
}

/// The body of `searcher`'s range `key` this thread saw lately, if it is still held; `None` on
/// every [`RECENT_REFRESH`]th hit.
fn recent_body(searcher: u64, key: (i64, i64)) -> Option<Arc<CachedBody>> {
    RECENT.with_borrow_mut(|recent| {
        let entry = recent.entry(searcher, key)?;
        entry.hits = entry.hits.wrapping_add(1);
        if entry.hits % RECENT_REFRESH == 0 {
            return None;
        }
        entry.body.upgrade()
    })
}

/// Notes `body` as the body of `searcher`'s range `key` on this thread.
fn remember_body(searcher: u64, key: (i64, i64), body: &Arc<CachedBody>) {
    RECENT.with_borrow_mut(|recent| {
        let body = Arc::downgrade(body);
        if let Some(entry) = recent.entry(searcher, key) {
            entry.body = body;
            return;
        }
        let entry = RecentBody { searcher, key, body, hits: 0 };
        if recent.entries.len() < RECENT_BODIES {
            recent.entries.push(entry);
        } else {
            let at = recent.next;
            recent.entries[at] = entry;
            recent.next = (at + 1) % RECENT_BODIES;
        }
    })
}
