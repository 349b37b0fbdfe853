//! `Parser`: turns one chunk of whole base plans into domain plans and hands them to the writer.
//! Parsing is CPU work, so it runs on the lower-priority ingestion threads ([`crate::cpu`]), never
//! on the async worker threads that answer searches; a panic while parsing is caught and reported
//! as that chunk's error.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{ChunkPlans, ParserMsg, WriterMsg};
use super::slot::Slot;
use crate::feed;

pub struct Parser;

pub struct ParserState {
    writer: Slot<WriterMsg>,
}

impl Actor for Parser {
    type Msg = ParserMsg;
    type State = ParserState;
    type Arguments = Slot<WriterMsg>;

    async fn pre_start(
        &self,
        _me: ActorRef<ParserMsg>,
        writer: Slot<WriterMsg>,
    ) -> Result<ParserState, ActorProcessingErr> {
        Ok(ParserState { writer })
    }

    async fn handle(
        &self,
        _me: ActorRef<ParserMsg>,
        msg: ParserMsg,
        state: &mut ParserState,
    ) -> Result<(), ActorProcessingErr> {
        let ParserMsg::Parse(job) = msg;
        let provider = job.fetch.provider.clone();
        let bytes = job.bytes.clone();
        // Content hashes are computed here, on the parsers' threads, so the single writer does not.
        let parsed = crate::cpu::pool()
            .run(move || {
                let p = feed::parse_chunk(&provider, &bytes);
                let hashes: Vec<u64> = p.plans.iter().map(|plan| plan.content_hash()).collect();
                (p, hashes)
            })
            .await;
        let out = match parsed {
            Ok((p, hashes)) => {
                job.fetch.skips.record(&job.fetch, &p.skipped);
                ChunkPlans {
                    fetch: job.fetch,
                    seq: job.seq,
                    plans: p.plans,
                    hashes,
                    skipped: p.skipped.len() as u64,
                    error: p.error.map(|e| e.to_string()),
                    last: true,
                    permit: job.permit,
                }
            }
            Err(e) => {
                tracing::error!(fetch_id = job.fetch.fetch_id, seq = job.seq, error = %e, "parser panicked on a chunk");
                ChunkPlans {
                    fetch: job.fetch,
                    seq: job.seq,
                    plans: Vec::new(),
                    hashes: Vec::new(),
                    skipped: 0,
                    error: Some(format!("parser failed on chunk {}: {e}", job.seq)),
                    last: true,
                    permit: job.permit,
                }
            }
        };
        if state.writer.cast(WriterMsg::Plans(out)).is_err() {
            tracing::error!("batch writer is not running: chunk dropped");
        }
        Ok(())
    }
}
