//! `Parser`: turns one chunk of whole base plans into domain plans and hands them to the writer in
//! parts. Parsing is CPU work, so it runs on the lower-priority ingestion threads ([`crate::cpu`]),
//! never on the async worker threads that answer searches; a panic while parsing is caught and
//! reported as that chunk's error.
//!
//! Memory: a chunk is parsed one part at a time (at most `pipeline.batch_size` plans and
//! [`PART_BYTES`] of estimated memory, [`ChunkParse`]), each part a job of its own on the
//! ingestion threads, so a chunk holding one base plan of 350,000 plans is never 350,000 plans at
//! once. The chunk arrives with its share of `pipeline.queue_bytes` (its bytes and as much again,
//! taken by the fetcher); what its share holds beyond its bytes is the room for its parts not yet
//! in the writer's batch. Each part takes permits of a semaphore of that room for its estimated
//! memory, and the writer drops them when it takes the part into its batch; when the room is used
//! up, the next part waits here, between two jobs, without holding an ingestion thread (the store's
//! writes run on those threads too). Parts thus never pile up in the writer's unbounded mailbox.
//! Once the writer holds every part, the chunk's own permits go back, which lets the fetcher
//! download more.

use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::messages::{ChunkJob, ChunkPlans, FetchContext, ParserMsg, WriterMsg};
use super::slot::Slot;
use crate::feed::{self, ChunkParse, PartBounds};

/// Largest estimated memory of one part: a quarter of the writer's batch bytes (16 MiB), so parts
/// fill a batch in a few steps and the room for them stays small.
pub const PART_BYTES: usize = 4 << 20;

pub struct Parser;

#[derive(Clone)]
pub struct ParserArgs {
    pub writer: Slot<WriterMsg>,
    /// A part's most plans: the writer's `batch_size` when the parser started.
    pub part_plans: usize,
}

pub struct ParserState {
    writer: Slot<WriterMsg>,
    bounds: PartBounds,
}

impl Actor for Parser {
    type Msg = ParserMsg;
    type State = ParserState;
    type Arguments = ParserArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ParserMsg>,
        args: ParserArgs,
    ) -> Result<ParserState, ActorProcessingErr> {
        let bounds = PartBounds { plans: args.part_plans.max(1), bytes: PART_BYTES };
        Ok(ParserState { writer: args.writer, bounds })
    }

    async fn handle(
        &self,
        _me: ActorRef<ParserMsg>,
        msg: ParserMsg,
        state: &mut ParserState,
    ) -> Result<(), ActorProcessingErr> {
        let ParserMsg::Parse(job) = msg;
        state.parse(job).await;
        Ok(())
    }
}

/// One part as parsed on an ingestion thread, with its content hashes and the parse to go on with.
type ParsedPart = (ChunkParse, feed::ParsedChunk, Vec<u64>);

impl ParserState {
    /// Parses `job` part by part and hands each part to the writer, waiting for room between them.
    async fn parse(&self, job: ChunkJob) {
        let ChunkJob { fetch, seq, bytes, permit, memory } = job;
        let room = parts_room(memory.num_permits(), bytes.len());
        let parts = Arc::new(Semaphore::new(room));
        let mut parse = Some(ChunkParse::new(fetch.provider.clone()));
        while let Some(current) = parse.take() {
            let out = match self.next_part(current, bytes.clone()).await {
                Ok((next, part, hashes)) => {
                    fetch.skips.record(&fetch, &part.skipped);
                    let last = next.done();
                    if !last {
                        parse = Some(next);
                    }
                    let share = part.bytes.min(room) as u32;
                    let Ok(permit) = parts.clone().acquire_many_owned(share).await else { return };
                    ChunkPlans {
                        fetch: fetch.clone(),
                        seq,
                        skipped: part.skipped.len() as u64,
                        error: part.error.map(|e| e.to_string()),
                        plans: part.plans,
                        hashes,
                        last,
                        permit,
                    }
                }
                Err(e) => {
                    tracing::error!(fetch_id = fetch.fetch_id, seq, error = %e, "parser panicked on a chunk");
                    let Ok(permit) = parts.clone().acquire_many_owned(0).await else { return };
                    failed_part(&fetch, seq, format!("parser failed on chunk {seq}: {e}"), permit)
                }
            };
            if self.writer.cast(WriterMsg::Plans(out)).is_err() {
                tracing::error!(fetch_id = fetch.fetch_id, seq, "batch writer is not running: part dropped");
            }
        }
        release_when_written(parts, room, permit, memory);
    }

    /// The next part of `bytes`, parsed and hashed on an ingestion thread (hashes there, so the
    /// single writer does not compute them).
    async fn next_part(
        &self,
        mut parse: ChunkParse,
        bytes: Bytes,
    ) -> Result<ParsedPart, crate::cpu::CpuError> {
        let bounds = self.bounds;
        crate::cpu::pool()
            .run(move || {
                let part = parse.next_part(&bytes, bounds);
                let hashes = part.plans.iter().map(|plan| plan.content_hash()).collect();
                (parse, part, hashes)
            })
            .await
    }
}

/// The room a chunk's parts have: what its share of the budget holds beyond its bytes; a chunk
/// that took the whole budget (it is larger) gets one part's worth beyond it, so it still moves.
fn parts_room(share: usize, chunk_bytes: usize) -> usize {
    match share.saturating_sub(chunk_bytes) {
        0 => PART_BYTES,
        room => room,
    }
    .min(u32::MAX as usize)
}

/// The chunk's last part when parsing it failed: no plans, the error.
fn failed_part(
    fetch: &Arc<FetchContext>,
    seq: u32,
    error: String,
    permit: OwnedSemaphorePermit,
) -> ChunkPlans {
    ChunkPlans {
        fetch: fetch.clone(),
        seq,
        plans: Vec::new(),
        hashes: Vec::new(),
        skipped: 0,
        error: Some(error),
        last: true,
        permit,
    }
}

/// Gives the chunk's permits back once the writer dropped every part's (it took them into its
/// batch, or they were dropped with its mailbox), without holding the parser meanwhile.
fn release_when_written(
    parts: Arc<Semaphore>,
    room: usize,
    chunk: OwnedSemaphorePermit,
    memory: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let _ = parts.acquire_many(room as u32).await;
        drop((chunk, memory));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_in_the_writers_batch() {
        const { assert!(PART_BYTES <= crate::actors::batch_writer::BATCH_BYTES) };
    }

    #[test]
    fn a_chunk_over_the_budget_still_has_room_for_a_part() {
        assert_eq!(parts_room(2 << 20, 1 << 20), 1 << 20);
        assert_eq!(parts_room(64 << 20, 64 << 20), PART_BYTES);
        assert_eq!(parts_room(64 << 20, 100 << 20), PART_BYTES);
    }
}
