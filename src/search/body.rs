//! A `/search` answer's body: the answer type (its bytes, content hash and tags), the cached form
//! of a finished body (with its compressed form), the JSON envelope, and the assembly of a body
//! from day entries. The cache that keeps finished bodies by range is `bodies`.
//!
//! A body small enough to be cached is copied into one buffer. A larger one (above the body cache
//! limit, tens of thousands of plans) is never copied: it is kept as the list of the days' own
//! bytes it is made of (a whole day is one shared slice of the cached day, a day cut by the range
//! contributes its matching plans) and streamed to the socket from them, so building it costs the
//! cache it already is plus a list of slices, not a second copy of the answer. Its content hash is
//! computed in one pass over the same slices before the head is sent.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use warp::http::HeaderValue;

use super::day::DayEntry;
use super::encoding::{self, Coding};
use crate::cpu::answers;

/// A finished `/search` body for one exact range, as the body cache keeps it.
#[derive(Debug)]
pub(super) struct CachedBody {
    body: Bytes,
    /// The body's content hash (its ETag), computed once.
    hash: u128,
    /// The ETags of the plain and the gzip representation, made once (see [`encoding`]).
    tags: [HeaderValue; 2],
    /// The compressed form, made on the first request that accepts it; counted by the weigher
    /// (the entry is inserted again once it is made, so the cache weighs it).
    compressed: tokio::sync::OnceCell<Bytes>,
    /// The invalidation epoch the body was built under; any invalidation retires it.
    epoch: u64,
    /// Half a TTL after its oldest day was loaded: from then on its days are in their refresh
    /// window, so the body is rebuilt from them (and picks up what the refreshes bring).
    fresh_until: Instant,
}

impl CachedBody {
    pub(super) fn new(body: Bytes, epoch: u64, fresh_until: Instant) -> Self {
        let hash = encoding::content_hash(&body);
        let tags = [encoding::etag(hash, Coding::Identity), encoding::etag(hash, Coding::Gzip)];
        Self { body, hash, tags, compressed: tokio::sync::OnceCell::new(), epoch, fresh_until }
    }

    /// What the body costs the cache's byte budget (its compressed form included once made).
    pub(super) fn weight(&self) -> u32 {
        let compressed = self.compressed.get().map_or(0, |c| c.len());
        (self.body.len() + compressed + 64).min(u32::MAX as usize) as u32
    }

    /// The body's length in bytes.
    pub(super) fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the body was built under the invalidation epoch `epoch`.
    pub(super) fn built_under(&self, epoch: u64) -> bool {
        self.epoch == epoch
    }

    /// Whether the body may be served as fresh at `now`.
    pub(super) fn fresh_at(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// The compressed form, if it was made.
    pub(super) fn compressed(&self) -> Option<&Bytes> {
        self.compressed.get()
    }

    /// The compressed form, made by `compress` unless it was made already (one call makes it,
    /// concurrent ones wait for it); with whether this call made it.
    pub(super) async fn compress(&self, compress: fn(&[u8]) -> Bytes) -> (Bytes, bool) {
        let mut made = false;
        let packed = self
            .compressed
            .get_or_init(|| async {
                made = true;
                // Off the workers whatever its size: compressing costs a hundred times a copy.
                let body = self.body.clone();
                answers::run(move || compress(&body)).await
            })
            .await
            .clone();
        (packed, made)
    }
}

/// A `/search` answer, with what HTTP needs to validate and compress it (see [`encoding`]).
#[derive(Debug, Clone)]
pub struct Answer {
    body: Body,
    /// Content hash of the body (xxh3-128): equal bodies, equal hashes, in any process.
    pub hash: u128,
    /// Bytes this search built (copied and hashed) to answer: 0 for a cached body. What the
    /// client is charged for besides its request (see `http::rate_limit`).
    built: usize,
}

/// Where an answer's bytes are.
#[derive(Debug, Clone)]
enum Body {
    /// Its own bytes (not cached: too large, stale, or empty).
    Own(Content),
    /// The cached body of the range `key`, which also keeps its compressed form. Its bytes are
    /// taken only when sent: a `304` touches nothing but the tags.
    Cached((i64, i64), Arc<CachedBody>),
}

/// The bytes of an answer: one buffer, or (a large answer) the slices of cached days it is made
/// of, in order, to be written one after the other.
#[derive(Debug, Clone)]
pub enum Content {
    Whole(Bytes),
    Pieces(Arc<[Bytes]>),
}

impl Answer {
    pub(super) fn uncached(body: Bytes) -> Self {
        Self { hash: encoding::content_hash(&body), built: body.len(), body: Body::Own(Content::Whole(body)) }
    }

    pub(super) fn cached(key: (i64, i64), cached: Arc<CachedBody>) -> Self {
        Self { hash: cached.hash, body: Body::Cached(key, cached), built: 0 }
    }

    /// A body this search built and cached: it cost its bytes, later ones cost nothing.
    pub(super) fn built_and_cached(key: (i64, i64), cached: Arc<CachedBody>) -> Self {
        Self { built: cached.body.len(), ..Self::cached(key, cached) }
    }

    /// A body too large to cache, streamed from `pieces` (see the module doc).
    fn streamed(pieces: Vec<Bytes>, hash: u128) -> Self {
        let built = pieces.iter().map(Bytes::len).sum();
        Self { body: Body::Own(Content::Pieces(pieces.into())), hash, built }
    }

    /// Bytes this search built (copied and hashed) for the answer; 0 when a cached body served.
    pub fn built_bytes(&self) -> usize {
        self.built
    }

    /// The cached body it was served from or stored as, and its range.
    pub(super) fn cached_body(&self) -> Option<(&(i64, i64), &Arc<CachedBody>)> {
        match &self.body {
            Body::Cached(key, cached) => Some((key, cached)),
            Body::Own(_) => None,
        }
    }

    /// True when [`Searcher::compressed`] gives a compressed form (the answer is cached).
    ///
    /// [`Searcher::compressed`]: super::Searcher::compressed
    pub fn compressible(&self) -> bool {
        self.cached_body().is_some()
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Own(Content::Whole(body)) => body.len(),
            Body::Own(Content::Pieces(pieces)) => pieces.iter().map(Bytes::len).sum(),
            Body::Cached(_, cached) => cached.body.len(),
        }
    }

    /// Never true: an answer holds at least the JSON envelope.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strong ETag of `coding`'s representation (made once for a cached answer).
    pub fn etag(&self, coding: Coding) -> HeaderValue {
        match &self.body {
            Body::Cached(_, cached) => cached.tags[coding as usize].clone(),
            Body::Own(_) => encoding::etag(self.hash, coding),
        }
    }

    /// The body, as one buffer or as the slices to write in order (a handle: no copy).
    pub fn content(&self) -> Content {
        match &self.body {
            Body::Own(content) => content.clone(),
            Body::Cached(_, cached) => Content::Whole(cached.body.clone()),
        }
    }

    /// The body in one buffer (a large answer's pieces are copied together: for callers that
    /// need the bytes whole, such as tests; HTTP streams the pieces instead).
    pub fn into_bytes(self) -> Bytes {
        match self.content() {
            Content::Whole(body) => body,
            Content::Pieces(pieces) => pieces.concat().into(),
        }
    }
}

const PREFIX: &[u8] = br#"{"data":{"events":["#;
const SUFFIX: &[u8] = br#"]},"error":null}"#;
pub(super) const EMPTY: &[u8] = br#"{"data":{"events":[]},"error":null}"#;

/// Assembles a body from day entries, in answer order: copied into one buffer when the answer is
/// expected to fit the body cache, else kept as slices of the entries (see the module doc).
pub(super) struct BodyBuilder {
    /// Small bytes not yet in `pieces` (the envelope, commas, the plans of cut days), or the
    /// whole body when it is copied.
    out: BytesMut,
    /// `None` while copying into `out`.
    pieces: Option<Vec<Bytes>>,
    first: bool,
    /// Bodies up to this size are copied into one buffer and may be cached.
    limit: usize,
}

/// What [`BodyBuilder::finish`] gives: a body to cache (or not) as before, or a streamed answer.
pub(super) enum Built {
    Whole(Bytes),
    Streamed(Answer),
}

impl BodyBuilder {
    /// `estimate`: the expected bytes of the plans (from the directory); `limit`: the largest body
    /// the body cache keeps.
    pub(super) fn new(estimate: usize, limit: usize) -> Self {
        let whole = PREFIX.len() + SUFFIX.len() + estimate;
        let (out, pieces) = if whole <= limit {
            (BytesMut::with_capacity(whole), None)
        } else {
            (BytesMut::with_capacity(4096), Some(Vec::with_capacity(estimate / (64 << 10) + 16)))
        };
        let mut builder = Self { out, pieces, first: true, limit };
        builder.out.put_slice(PREFIX);
        builder
    }

    /// Appends the plans of `entry` inside `[starts, ends]` (unix microseconds).
    pub(super) fn push(&mut self, entry: &DayEntry, starts: i64, ends: i64) {
        let Some(pieces) = self.pieces.as_mut() else {
            entry.write_matching(starts, ends, &mut self.out, &mut self.first);
            return;
        };
        if !entry.within(starts, ends) || entry.joined().len() < 1024 {
            // A cut (or small) day: its matching plans are copied, a day's worth at most.
            entry.write_matching(starts, ends, &mut self.out, &mut self.first);
            return;
        }
        if !self.first {
            self.out.put_u8(b',');
        }
        self.first = false;
        pieces.push(self.out.split().freeze());
        pieces.push(entry.joined().clone());
    }

    /// The finished body: whole when copied (or when a streamed one turned out small enough to
    /// cache), else a streamed answer with its content hash. Work on every byte of a large body:
    /// run it on an answer thread (`cpu::answers::run_sized`).
    pub(super) fn finish(mut self) -> Built {
        self.out.put_slice(SUFFIX);
        let Some(mut pieces) = self.pieces else { return Built::Whole(self.out.freeze()) };
        pieces.push(self.out.freeze());
        pieces.retain(|p| !p.is_empty());
        let len: usize = pieces.iter().map(Bytes::len).sum();
        if len <= self.limit {
            return Built::Whole(pieces.concat().into());
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        pieces.iter().for_each(|p| hasher.update(p));
        let hash = hasher.digest128();
        Built::Streamed(Answer::streamed(pieces, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventRow;
    use chrono::NaiveDateTime;

    /// A day of `n` plans an hour apart from 00:00 UTC on 2021-07-`day`.
    fn day(day: u32, n: u32) -> DayEntry {
        let rows: Vec<EventRow> = (0..n)
            .map(|i| {
                let at = |h: u32| {
                    NaiveDateTime::parse_from_str(
                        &format!("2021-07-{day:02}T{h:02}:00:00"),
                        "%Y-%m-%dT%H:%M:%S",
                    )
                    .unwrap()
                };
                EventRow {
                    id: uuid::Uuid::from_u128((day * 100 + i) as u128),
                    title: format!("plan {i} of day {day}, a title long enough"),
                    start_local: at(i),
                    end_local: at(i + 1),
                    start_utc: at(i).and_utc(),
                    end_utc: at(i + 1).and_utc(),
                    min_price: None,
                    max_price: None,
                }
            })
            .collect();
        DayEntry::new(&rows)
    }

    fn build(days: &[DayEntry], starts: i64, ends: i64, estimate: usize, limit: usize) -> Built {
        let mut builder = BodyBuilder::new(estimate, limit);
        days.iter().for_each(|d| builder.push(d, starts, ends));
        builder.finish()
    }

    #[test]
    fn a_large_body_is_streamed_from_the_days_and_equals_the_copied_one() {
        let days = [day(1, 20), day(2, 2), day(3, 20), day(4, 20)];
        let size: usize = days.iter().map(|d| d.joined().len()).sum();
        // Cut: the first day from its 6th plan, the last up to the end of its 11th.
        let (starts, ends) = (days[0].instants(5).0, days[3].instants(10).1);
        for (starts, ends) in [(i64::MIN, i64::MAX), (starts, ends)] {
            let Built::Whole(copied) = build(&days, starts, ends, size, usize::MAX) else {
                panic!("below the limit: copied")
            };
            let Built::Streamed(answer) = build(&days, starts, ends, size, 1024) else {
                panic!("above the limit: streamed")
            };
            let Content::Pieces(pieces) = answer.content().clone() else { panic!("pieces") };
            // Whole large days are the cached bytes themselves, not copies.
            let shared =
                pieces.iter().filter(|p| days.iter().any(|d| d.joined().as_ptr() == p.as_ptr())).count();
            assert!(shared >= 1, "{shared} shared pieces");
            assert_eq!(answer.len(), copied.len());
            assert_eq!(answer.hash, encoding::content_hash(&copied));
            assert_eq!(answer.etag(Coding::Identity), encoding::etag(answer.hash, Coding::Identity));
            assert!(!answer.compressible());
            assert_eq!(answer.into_bytes(), copied);
        }
        // Expected large, found small: copied after all (and cacheable).
        let (starts, ends) = days[1].bounds();
        let Built::Whole(small) = build(&days, starts, ends, size, 4096) else { panic!("small: copied") };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&small).unwrap()["data"]["events"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
