//! Finished `/search` bodies: the answer type, its JSON envelope and the cache of whole bodies.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// A finished `/search` body for one exact range.
#[derive(Debug)]
pub(super) struct CachedBody {
    pub(super) body: Bytes,
    /// The body's content hash (its ETag), computed once.
    pub(super) hash: u128,
    /// The compressed form, made on the first request that accepts it; counted by the weigher
    /// (the entry is inserted again once it is made, so the cache weighs it).
    pub(super) compressed: tokio::sync::OnceCell<Bytes>,
    /// The invalidation epoch the body was built under; any invalidation retires it.
    pub(super) epoch: u64,
    /// Half a TTL after its oldest day was loaded: from then on its days are in their refresh
    /// window, so the body is rebuilt from them (and picks up what the refreshes bring).
    pub(super) fresh_until: Instant,
}

impl CachedBody {
    pub(super) fn weight(&self) -> u32 {
        let compressed = self.compressed.get().map_or(0, |c| c.len());
        (self.body.len() + compressed + 64).min(u32::MAX as usize) as u32
    }
}

/// A `/search` answer, with what HTTP needs to validate and compress it (see `http::encoding`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Bytes,
    /// Content hash of `body` (xxh3-128): equal bodies, equal hashes, in any process.
    pub hash: u128,
    /// The cached body it was served from or stored as, which keeps its compressed form.
    pub(super) cached: Option<((i64, i64), Arc<CachedBody>)>,
}

impl Answer {
    pub(super) fn uncached(body: Bytes) -> Self {
        Self { hash: crate::http::encoding::content_hash(&body), body, cached: None }
    }

    pub(super) fn cached(key: (i64, i64), cached: Arc<CachedBody>) -> Self {
        Self { body: cached.body.clone(), hash: cached.hash, cached: Some((key, cached)) }
    }

    /// True when [`Searcher::compressed`] gives a compressed form (the answer is cached).
    pub fn compressible(&self) -> bool {
        self.cached.is_some()
    }
}

pub(super) const PREFIX: &[u8] = br#"{"data":{"events":["#;
pub(super) const SUFFIX: &[u8] = br#"]},"error":null}"#;
pub(super) const EMPTY: &[u8] = br#"{"data":{"events":[]},"error":null}"#;
