//! `Fetcher`: downloads the provider's feed as a stream and cuts it into chunks of whole base plans
//! for the parser pool. The body is never held whole: at most one chunk plus the permits' worth of
//! chunks in flight. A failed, truncated or malformed fetch never removes anything: what was cut
//! before the failure is kept, and the failure is recorded with its reason.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use super::batch_writer::{FetchEnd, WriterMsg};
use super::parser::{ChunkJob, FetchContext, ParserMsg};
use super::scheduler::SchedulerMsg;
use super::{ParserPool, Slot};
use crate::config::{PipelineSettings, ProviderSettings};
use crate::domain::FetchRecord;
use crate::feed::Chunker;

pub enum FetcherMsg {
    /// Fetch once and tell the scheduler when done.
    Fetch { reply_to: ActorRef<SchedulerMsg> },
    /// Configuration reload: new URL, time zone or timeouts from the next fetch on.
    SetProvider(ProviderSettings),
}

#[derive(Clone)]
pub struct FetcherArgs {
    pub provider: ProviderSettings,
    pub pipeline: PipelineSettings,
    pub parsers: ParserPool,
    pub writer: Slot<WriterMsg>,
    /// Chunks in flight between download and writer.
    pub permits: Arc<Semaphore>,
}

pub struct FetcherState {
    args: FetcherArgs,
    client: reqwest::Client,
    last_fetch_id: u64,
}

pub struct Fetcher;

impl Actor for Fetcher {
    type Msg = FetcherMsg;
    type State = FetcherState;
    type Arguments = FetcherArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<FetcherMsg>,
        args: FetcherArgs,
    ) -> Result<FetcherState, ActorProcessingErr> {
        let client = build_client(&args.provider)?;
        Ok(FetcherState { args, client, last_fetch_id: 0 })
    }

    async fn handle(
        &self,
        _me: ActorRef<FetcherMsg>,
        msg: FetcherMsg,
        state: &mut FetcherState,
    ) -> Result<(), ActorProcessingErr> {
        let reply_to = match msg {
            FetcherMsg::Fetch { reply_to } => reply_to,
            FetcherMsg::SetProvider(provider) => {
                state.client = build_client(&provider)?;
                state.args.provider = provider;
                return Ok(());
            }
        };
        let started_at = Utc::now();
        // Fetch ids order observations: strictly increasing even if the clock stalls.
        let fetch_id = (started_at.timestamp_millis().max(0) as u64).max(state.last_fetch_id + 1);
        state.last_fetch_id = fetch_id;
        let ctx = Arc::new(FetchContext {
            fetch_id,
            provider: Arc::from(state.args.provider.name.as_str()),
            tz: state.args.provider.tz(),
        });
        let mut record =
            FetchRecord { provider: state.args.provider.name.clone(), started_at, ..Default::default() };
        let mut chunks = 0u32;
        let outcome =
            tokio::time::timeout(state.args.provider.timeout, state.download(&ctx, &mut record, &mut chunks))
                .await;
        record.error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("fetch timed out after {:?}", state.args.provider.timeout)),
        };
        let failed = record.error.is_some();
        if state.args.writer.cast(WriterMsg::FetchEnd(FetchEnd { fetch_id, chunks, record })).is_err() {
            tracing::error!("batch writer is not running: fetch result dropped");
        }
        let _ = reply_to.cast(SchedulerMsg::FetchFinished { failed });
        Ok(())
    }
}

impl FetcherState {
    async fn download(
        &self,
        ctx: &Arc<FetchContext>,
        record: &mut FetchRecord,
        chunks: &mut u32,
    ) -> Result<(), String> {
        let url = &self.args.provider.url;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("request to {url} failed: {}", error_chain(&e)))?;
        let status = response.status();
        record.http_status = Some(status.as_u16());
        if !status.is_success() {
            return Err(format!("provider answered HTTP {status}"));
        }
        let pl = &self.args.pipeline;
        let mut chunker = Chunker::new(pl.chunk_bytes, pl.max_base_plan_bytes);
        let mut body = response.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece
                .map_err(|e| format!("body read failed after {} bytes: {}", record.bytes, error_chain(&e)))?;
            record.bytes += piece.len() as u64;
            let ready = chunker.push(&piece).map_err(|e| e.to_string())?;
            for bytes in ready {
                self.send_chunk(ctx, chunks, bytes).await?;
            }
        }
        // Complete base plans still below the chunk target go on even when the body was cut short.
        if let Some(rest) = chunker.flush() {
            self.send_chunk(ctx, chunks, rest).await?;
        }
        if let Some(last) = chunker.finish().map_err(|e| e.to_string())? {
            self.send_chunk(ctx, chunks, last).await?;
        }
        Ok(())
    }

    async fn send_chunk(
        &self,
        ctx: &Arc<FetchContext>,
        seq: &mut u32,
        bytes: bytes::Bytes,
    ) -> Result<(), String> {
        let permit = self
            .args
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "pipeline is shutting down".to_string())?;
        let job = ChunkJob { fetch: ctx.clone(), seq: *seq, bytes, permit };
        self.args.parsers.dispatch(ParserMsg::Parse(job)).map_err(|_| "no parser is running".to_string())?;
        *seq += 1;
        Ok(())
    }
}

pub fn build_client(p: &ProviderSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(p.connect_timeout)
        .read_timeout(p.timeout.min(Duration::from_secs(60)))
        .user_agent(concat!("planfeed/", env!("CARGO_PKG_VERSION")))
        .gzip(true)
        .build()
}

/// `reqwest` errors hide their cause (connection refused, DNS, TLS) in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
