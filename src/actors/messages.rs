//! Messages that cross actors, and what they carry. Every actor file imports its neighbours'
//! messages from here, never from the neighbour itself, so no two actor files import each other.
//! The supervisor's messages stay with it: only the service and reload send them.
//!
//! `FetchContext`, which every chunk of a fetch shares, lives in `fetch_context.rs` and is
//! re-exported here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::OwnedSemaphorePermit;

pub use super::fetch_context::FetchContext;
use super::persisted::Persisted;
use crate::config::ProviderSettings;
use crate::domain::{FetchRecord, Plan, PlanKey};
use crate::fetch::FetchError;

/// To the [`Fetcher`](super::Fetcher), from its scheduler and the supervisor.
pub enum FetcherMsg {
    /// Fetch once and tell the scheduler when done.
    Fetch { reply_to: ActorRef<SchedulerMsg> },
    /// Configuration reload: new URL, time zone or timeouts from the next fetch on.
    SetProvider(ProviderSettings),
}

/// To the [`Scheduler`](super::Scheduler), from the fetcher and the supervisor.
pub enum SchedulerMsg {
    /// `generation` lets a superseded timer be ignored.
    Tick {
        generation: u64,
    },
    /// Fetch now unless a fetch is running (operators, tests).
    FetchNow,
    FetchFinished {
        failed: bool,
    },
    /// The fetcher was restarted: any fetch in flight is gone.
    FetcherRestarted,
    SetInterval {
        interval: Duration,
        jitter: Duration,
    },
}

/// The plans of one parsed chunk.
pub struct ChunkPlans {
    pub fetch: Arc<FetchContext>,
    pub seq: u32,
    pub plans: Vec<Plan>,
    /// `plans[i].content_hash()`, computed by the parser; empty means "compute them here".
    pub hashes: Vec<u64>,
    pub skipped: u64,
    pub error: Option<String>,
    /// Whether this is the chunk's last part: a parser may hand one chunk's plans on in several
    /// parts (bounded in plans and bytes); the writer counts the chunk in once its last part is in.
    pub last: bool,
    /// Released once the plans are in the batch: the pipeline's backpressure.
    pub permit: OwnedSemaphorePermit,
}

/// Sent by the fetcher when the download ended (well or not).
pub struct FetchEnd {
    pub fetch_id: u64,
    /// Number of chunks handed to the parsers.
    pub chunks: u32,
    /// Attempts repeated within the fetch after transient failures (for the log line).
    pub retries: u32,
    /// The record to complete; its `error` is written here from `error` and the writer's notes.
    pub record: FetchRecord,
    /// Why the download failed, if it did.
    pub error: Option<FetchError>,
}

/// To the [`BatchWriter`](super::BatchWriter), from the parsers, the fetcher, the supervisor and
/// the writer's own write task, timers and spool replayer.
pub enum WriterMsg {
    Plans(ChunkPlans),
    FetchEnd(FetchEnd),
    FlushTimer {
        batch_id: u64,
    },
    /// Flush now and answer when done (shutdown, tests).
    Flush(RpcReplyPort<()>),
    /// The in-flight batch write `write_id` completed (sent by the write task itself).
    WriteDone {
        write_id: u64,
    },
    /// Configuration reload: new flush thresholds, from the next plan on.
    SetBatching {
        batch_size: usize,
        flush_age: Duration,
    },
    /// The bookkeeping, read in the background when the store was not reachable at start.
    Loaded(Persisted),
    /// Spooled plans the store rejected for good on replay: forget them (the next fetch offers them
    /// again), unless a newer version was taken since.
    Forget(Vec<(PlanKey, u64)>),
}

/// A chunk of whole base plans for a parser.
pub struct ChunkJob {
    pub fetch: Arc<FetchContext>,
    pub seq: u32,
    pub bytes: Bytes,
    /// One of `pipeline.queue_chunks`.
    pub permit: OwnedSemaphorePermit,
    /// The chunk's share of `pipeline.queue_bytes`: its bytes and room for its parsed plans.
    pub memory: OwnedSemaphorePermit,
}

pub enum ParserMsg {
    Parse(ChunkJob),
}
