//! `Parser`: turns one chunk of whole base plans into domain plans and hands them to the writer.
//! Parsing is CPU work, so it runs on tokio's blocking pool, never on the async worker threads; a
//! panic while parsing is caught and reported as that chunk's error.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::OwnedSemaphorePermit;

use super::messages::{ChunkPlans, WriterMsg};
use super::slot::Slot;
use crate::feed::{self, SkipKind, Skipped};

/// Invalid plans logged one by one per fetch; the rest are counted by kind in one summary line
/// when the fetch is done, so a feed of a million bad plans writes a few kilobytes of log.
pub const LOGGED_SKIPS_PER_FETCH: u64 = 20;

/// Where a chunk comes from; shared by every chunk of one fetch. Dropped when the fetch and its
/// last chunk are done, which writes the fetch's summary of skipped plans.
#[derive(Debug)]
pub struct FetchContext {
    pub fetch_id: u64,
    pub provider: Arc<str>,
    pub tz: chrono_tz::Tz,
    pub skips: SkipLog,
}

/// The invalid plans of one fetch, as far as the log is concerned.
#[derive(Debug, Default)]
pub struct SkipLog {
    by_kind: parking_lot::Mutex<BTreeMap<SkipKind, u64>>,
}

impl SkipLog {
    /// Logs `skipped` while the fetch is under [`LOGGED_SKIPS_PER_FETCH`]; counts them all.
    fn record(&self, fetch: &FetchContext, skipped: &[Skipped]) {
        if skipped.is_empty() {
            return;
        }
        let before: u64 = {
            let mut by_kind = self.by_kind.lock();
            let before = by_kind.values().sum();
            for s in skipped {
                *by_kind.entry(s.kind).or_default() += 1;
            }
            before
        };
        let room = LOGGED_SKIPS_PER_FETCH.saturating_sub(before) as usize;
        for s in skipped.iter().take(room) {
            tracing::warn!(
                provider = %fetch.provider,
                fetch_id = fetch.fetch_id,
                base_plan_id = s.base_plan_id.as_deref().unwrap_or("?"),
                plan_id = s.plan_id.as_deref().unwrap_or("?"),
                kind = s.kind.label(),
                reason = %s.reason,
                "invalid plan skipped"
            );
        }
    }

    /// Skipped plans by kind label (`invalid_id=1000 negative_price=1`) and their total.
    pub fn summary(&self) -> (String, u64) {
        let by_kind = self.by_kind.lock();
        let text = by_kind.iter().map(|(k, n)| format!("{}={n}", k.label())).collect::<Vec<_>>().join(" ");
        (text, by_kind.values().sum())
    }
}

impl Drop for FetchContext {
    fn drop(&mut self) {
        let (by_kind, total) = self.skips.summary();
        if total > LOGGED_SKIPS_PER_FETCH {
            tracing::warn!(
                provider = %self.provider,
                fetch_id = self.fetch_id,
                skipped = total,
                not_logged = total - LOGGED_SKIPS_PER_FETCH,
                by_kind = %by_kind,
                "more invalid plans skipped than logged one by one"
            );
        }
    }
}

pub struct ChunkJob {
    pub fetch: Arc<FetchContext>,
    pub seq: u32,
    pub bytes: Bytes,
    pub permit: OwnedSemaphorePermit,
}

pub enum ParserMsg {
    Parse(ChunkJob),
}

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
        let parsed = tokio::task::spawn_blocking(move || {
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
