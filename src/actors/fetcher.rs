//! `Fetcher`: downloads the provider's feed as a stream and cuts it into chunks of whole base plans
//! for the parser pool. The body is never held whole: a chunk goes on with a permit of
//! `pipeline.queue_chunks` and its share of `pipeline.queue_bytes` (twice its bytes: its XML and
//! as much for its parsed plans, see [`super::parser`]; a chunk larger than the budget takes all of
//! it), and the download reads on only while the budget has room for what the chunker holds, so
//! a base plan of 60 MB is not downloaded while the one before it is still being parsed. A failed, truncated or malformed fetch never removes anything: what was cut
//! before the failure is kept, and the failure is recorded with its reason.
//!
//! The provider is slow and fails often, so the fetcher is its own resilient client:
//! - one deadline (`provider.timeout`) bounds the whole fetch, retries and body included;
//! - transient failures before the body starts (connect error, no response in time, 5xx, 429) are
//!   retried within the fetch with capped, jittered exponential backoff. Once the body is being
//!   read nothing is retried: a second download would hand the same base plans on twice;
//! - a circuit breaker stops sending requests after `breaker_failures` consecutive failed
//!   fetches; while it is open each scheduled fetch is recorded as skipped ("circuit open: …"),
//!   and after `breaker_cooldown` a single probe (no retries) decides whether it closes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::messages::{ChunkJob, FetchContext, FetchEnd, FetcherMsg, ParserMsg, SchedulerMsg, WriterMsg};
use super::slot::{ParserPool, Slot};
use crate::config::{PipelineSettings, ProviderSettings, MAX_RETRY_BACKOFF};
use crate::domain::FetchRecord;
use crate::feed::Chunker;
use crate::fetch::breaker::{Admission, SharedBreaker};
use crate::fetch::{FetchError, RequestError};
use crate::retry::RetryPolicy;

/// A body being read: pieces, or a failure's error chain and whether it was a timeout.
type Body = futures::stream::BoxStream<'static, Result<bytes::Bytes, (String, bool)>>;

/// How long the complete base plans buffered when a download fails may wait for a pipeline
/// permit past the fetch's deadline: they are already downloaded, dropping them would waste them.
const SALVAGE_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct FetcherArgs {
    pub provider: ProviderSettings,
    pub pipeline: PipelineSettings,
    pub parsers: ParserPool,
    pub writer: Slot<WriterMsg>,
    /// Chunks in flight between download and writer.
    pub permits: Arc<Semaphore>,
    /// Bytes in flight between download and writer (`pipeline.queue_bytes` permits).
    pub memory: Arc<Semaphore>,
    /// This provider's breaker. The supervisor keeps it, so a restarted fetcher goes on with the
    /// state its predecessor left (an open circuit stays open).
    pub breaker: SharedBreaker,
    /// Cancelled by the supervisor when the service stops: a fetch in progress stops reading where
    /// it stands, hands on the complete base plans it holds and is recorded as `shutdown`, instead
    /// of vanishing with the actor.
    pub shutdown: CancellationToken,
}

pub struct FetcherState {
    args: FetcherArgs,
    client: reqwest::Client,
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
        // The settings may have changed while no fetcher was running.
        args.breaker.lock().configure(args.provider.breaker_failures, args.provider.breaker_cooldown);
        Ok(FetcherState { args, client })
    }

    async fn handle(
        &self,
        _me: ActorRef<FetcherMsg>,
        msg: FetcherMsg,
        state: &mut FetcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FetcherMsg::Fetch { reply_to } => {
                let failed = state.fetch().await;
                let _ = reply_to.cast(SchedulerMsg::FetchFinished { failed });
            }
            FetcherMsg::SetProvider(provider) => {
                // The supervisor reconfigures the breaker it keeps.
                state.client = build_client(&provider)?;
                state.args.provider = provider;
            }
        }
        Ok(())
    }
}

impl FetcherState {
    /// One fetch, from the breaker's admission to the [`FetchEnd`] handed to the writer. Returns
    /// whether it failed.
    async fn fetch(&mut self) -> bool {
        if self.args.shutdown.is_cancelled() {
            // Asked between the stop and the actor's end: nothing was fetched, nothing to record.
            return false;
        }
        let started_at = Utc::now();
        let fetch_id = crate::clock::next_fetch_id();
        let provider = &self.args.provider;
        let record = FetchRecord { provider: provider.name.clone(), started_at, ..Default::default() };
        let mut end = FetchEnd { fetch_id, chunks: 0, retries: 0, record, error: None };
        let (admission, failures) = {
            let breaker = self.args.breaker.lock();
            (breaker.admit(Instant::now()), breaker.failures())
        };
        let max_retries = match admission {
            Admission::Skip { remaining } => {
                end.error = Some(FetchError::CircuitOpen { failures, remaining });
                self.end_fetch(end);
                return true;
            }
            Admission::Probe => {
                tracing::info!(provider = %provider.name, failures, "circuit half-open: probing the provider");
                0
            }
            Admission::Fetch => provider.retries,
        };
        let ctx = Arc::new(FetchContext {
            fetch_id,
            provider: Arc::from(provider.name.as_str()),
            tz: provider.tz(),
            skips: Default::default(),
        });
        let deadline = Instant::now() + provider.timeout;
        end.error = self.download(&ctx, deadline, max_retries, &mut end).await.err();
        let failed = end.error.is_some();
        self.count_in_breaker(end.error.as_ref());
        self.end_fetch(end);
        failed
    }

    /// Records the fetch's outcome in the breaker and says when the circuit opens.
    fn count_in_breaker(&self, error: Option<&FetchError>) {
        if matches!(error, Some(FetchError::Interrupted { .. })) {
            // Our own stop says nothing about the provider.
            return;
        }
        let (opened, failed_before, failures) = {
            let mut breaker = self.args.breaker.lock();
            let before = breaker.failures();
            (breaker.record(error.is_none(), Instant::now()), before, breaker.failures())
        };
        self.report_reachability(failed_before, error);
        if opened {
            tracing::warn!(
                provider = %self.args.provider.name,
                failures,
                cooldown_ms = self.args.provider.breaker_cooldown.as_millis() as u64,
                "circuit opened: no request will be sent until the cooldown ends"
            );
        }
    }

    /// Says plainly, once per outage, that the provider cannot be fetched and what is served
    /// meanwhile, and once that it answers again (the per-fetch lines say the rest).
    fn report_reachability(&self, failed_before: u32, error: Option<&FetchError>) {
        let p = &self.args.provider;
        match error {
            Some(error) if failed_before == 0 => tracing::warn!(
                provider = %p.name, url = %p.url, error = %error, outcome = error.outcome().label(),
                retry_every = ?p.interval,
                "provider unreachable or failing: /search keeps serving the plans already stored \
                 (none before a first successful fetch); fetching again every interval"
            ),
            None if failed_before > 0 => tracing::info!(
                provider = %p.name, failed_fetches = failed_before, "provider answers again"
            ),
            _ => {}
        }
    }

    fn end_fetch(&self, end: FetchEnd) {
        if self.args.writer.cast(WriterMsg::FetchEnd(end)).is_err() {
            tracing::error!("batch writer is not running: fetch result dropped");
        }
    }

    /// Streams the body through the chunker to the parsers. What was cut before a failure is kept.
    async fn download(
        &self,
        ctx: &Arc<FetchContext>,
        deadline: Instant,
        max_retries: u32,
        end: &mut FetchEnd,
    ) -> Result<(), FetchError> {
        let mut body = tokio::select! {
            body = self.body(deadline, max_retries, end) => body?,
            () = self.args.shutdown.cancelled() => return Err(FetchError::Interrupted { bytes: 0 }),
        };
        let pl = &self.args.pipeline;
        let max_body = self.args.provider.max_body_bytes;
        let mut chunker = Chunker::new(pl.chunk_bytes, pl.max_base_plan_bytes);
        // Past half its time limit the download is no longer slowed for searches (ingestion's
        // rests, `pipeline.min_ingest_share`) until it ends: it must finish within the limit.
        let halfway = deadline - self.args.provider.timeout / 2;
        let mut hurry = None;
        let failure = loop {
            if hurry.is_none() && Instant::now() >= halfway {
                tracing::info!(provider = %ctx.provider, "fetch past half its time limit: ingestion no longer rests for searches until it ends");
                hurry = Some(crate::cpu::pace::Hurry::start());
            }
            if let Err(e) = self.wait_for_room(chunker.buffered(), deadline, end.record.bytes).await {
                break Some(e);
            }
            let piece = match self.next_piece(&mut body, deadline, end.record.bytes).await {
                Ok(Some(piece)) => piece,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            let room = max_body.saturating_sub(end.record.bytes);
            let over = piece.len() as u64 > room;
            let piece = if over { piece.slice(..room as usize) } else { piece };
            end.record.bytes += piece.len() as u64;
            for bytes in chunker.push(&piece)? {
                self.send_chunk(ctx, &mut end.chunks, bytes, deadline).await?;
            }
            if over {
                break Some(FetchError::TooLarge { limit: max_body });
            }
        };
        // Complete base plans still below the chunk target go on even when the body was cut short.
        if let Some(rest) = chunker.flush() {
            let grace =
                if failure.is_some() { deadline.max(Instant::now()) + SALVAGE_GRACE } else { deadline };
            self.send_chunk(ctx, &mut end.chunks, rest, grace).await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(last) = chunker.finish()? {
            self.send_chunk(ctx, &mut end.chunks, last, deadline).await?;
        }
        Ok(())
    }

    /// The body's next piece (`None` at its end), waiting no longer than the fetch's deadline or
    /// the service's stop; `read`: the bytes read so far, for the error.
    async fn next_piece(
        &self,
        body: &mut Body,
        deadline: Instant,
        read: u64,
    ) -> Result<Option<bytes::Bytes>, FetchError> {
        let idle = read_idle(&self.args.provider);
        let until = deadline.min(Instant::now() + idle);
        let next = tokio::select! {
            biased;
            () = self.args.shutdown.cancelled() => return Err(FetchError::Interrupted { bytes: read }),
            next = tokio::time::timeout_at(until, body.next()) => next,
        };
        match next {
            Ok(Some(Ok(piece))) => Ok(Some(piece)),
            Ok(None) => Ok(None),
            Ok(Some(Err((chain, timed_out)))) => Err(FetchError::BodyRead { bytes: read, chain, timed_out }),
            Err(_) if until < deadline => Err(FetchError::BodyRead {
                bytes: read,
                chain: format!("no body bytes from the provider for {idle:?}"),
                timed_out: true,
            }),
            Err(_) => Err(FetchError::BodyTimeout { timeout: self.args.provider.timeout, bytes: read }),
        }
    }

    /// The body as a stream of pieces; a failed piece carries its error chain and whether it was
    /// a timeout.
    async fn body(
        &self,
        deadline: Instant,
        max_retries: u32,
        end: &mut FetchEnd,
    ) -> Result<Body, FetchError> {
        if let Some(path) = self.args.provider.url.strip_prefix("file://") {
            // Local files (`planfeed ingest --file`) take the same path as downloads.
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|source| FetchError::OpenFile { path: path.to_string(), source })?;
            return Ok(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                .map(|r| r.map_err(|e| (e.to_string(), e.kind() == std::io::ErrorKind::TimedOut)))
                .boxed());
        }
        let response = self.open(deadline, max_retries, end).await?;
        Ok(response.bytes_stream().map(|r| r.map_err(|e| (error_chain(&e), e.is_timeout()))).boxed())
    }

    /// Sends the request until a successful response starts, retrying transient failures. This is
    /// the fetch's one retry loop; it is not [`crate::retry::retry`] because the fetch's deadline
    /// and the provider's `Retry-After` decide each wait, on the same [`RetryPolicy`].
    async fn open(
        &self,
        deadline: Instant,
        max_retries: u32,
        end: &mut FetchEnd,
    ) -> Result<reqwest::Response, FetchError> {
        let p = &self.args.provider;
        loop {
            let (cause, retry_after) =
                match tokio::time::timeout_at(deadline, self.client.get(&p.url).send()).await {
                    // The whole fetch's time is spent: there is nothing left to retry with.
                    Err(_) => (RequestError::NoResponse(p.timeout), None),
                    Ok(Ok(res)) if res.status().is_success() => {
                        end.record.http_status = Some(res.status().as_u16());
                        return Ok(res);
                    }
                    Ok(Ok(res)) => (RequestError::Status(res.status()), retry_after(&res)),
                    Ok(Err(e)) => {
                        let transient = e.is_connect() || e.is_timeout() || e.is_request();
                        let chain = error_chain(&e);
                        (
                            RequestError::Send {
                                url: p.url.clone(),
                                chain,
                                timed_out: e.is_timeout(),
                                transient,
                            },
                            None,
                        )
                    }
                };
            end.record.http_status = match &cause {
                RequestError::Status(s) => Some(s.as_u16()),
                _ => None,
            };
            let retries = end.retries;
            if !cause.is_transient() || retries >= max_retries {
                return Err(FetchError::Request { cause, retries, out_of_time: None });
            }
            let delay = backoff(p.retry_backoff, retries, retry_after);
            if Instant::now() + delay >= deadline {
                return Err(FetchError::Request { cause, retries, out_of_time: Some(p.timeout) });
            }
            end.retries += 1;
            crate::metrics::record_retry("fetch");
            tracing::warn!(
                provider = %p.name, error = %cause, retry = end.retries, max_retries,
                delay_ms = delay.as_millis() as u64, "fetch attempt failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Waits, up to the deadline or the service's stop, until the budget has room for the share
    /// of `held` bytes of body (the chunker's): reading on before would hold the next base plan
    /// while the pipeline is full. Nothing is taken: the room is only looked at.
    async fn wait_for_room(&self, held: usize, deadline: Instant, read: u64) -> Result<(), FetchError> {
        let share = self.share(held);
        let room = match self.args.memory.try_acquire_many(share) {
            Ok(_) => return Ok(()),
            Err(_) => tokio::select! {
                biased;
                () = self.args.shutdown.cancelled() => return Err(FetchError::Interrupted { bytes: read }),
                room = tokio::time::timeout_at(deadline, self.args.memory.acquire_many(share)) => room,
            },
        };
        match room {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(FetchError::ShuttingDown),
            Err(_) => Err(FetchError::Backpressure { timeout: self.args.provider.timeout }),
        }
    }

    /// The permits a chunk of `bytes` takes of `pipeline.queue_bytes`: its bytes and as much again
    /// for its parsed plans in flight (their estimated memory is about that of their XML), all of
    /// them when that is more.
    fn share(&self, bytes: usize) -> u32 {
        bytes.saturating_mul(2).min(self.args.pipeline.queue_bytes).min(u32::MAX as usize) as u32
    }

    async fn send_chunk(
        &self,
        ctx: &Arc<FetchContext>,
        seq: &mut u32,
        bytes: bytes::Bytes,
        deadline: Instant,
    ) -> Result<(), FetchError> {
        let backpressure = |_| FetchError::Backpressure { timeout: self.args.provider.timeout };
        let permit = tokio::time::timeout_at(deadline, self.args.permits.clone().acquire_owned())
            .await
            .map_err(backpressure)?
            .map_err(|_| FetchError::ShuttingDown)?;
        let share = self.share(bytes.len());
        let memory = tokio::time::timeout_at(deadline, self.args.memory.clone().acquire_many_owned(share))
            .await
            .map_err(backpressure)?
            .map_err(|_| FetchError::ShuttingDown)?;
        let job = ChunkJob { fetch: ctx.clone(), seq: *seq, bytes, permit, memory };
        self.args.parsers.dispatch(ParserMsg::Parse(job)).map_err(|_| FetchError::NoParser)?;
        *seq += 1;
        Ok(())
    }
}

/// Delay before retry `done + 1` of a request: the provider's policy (`retry_backoff` doubling,
/// jittered to 50–100 %, capped at [`MAX_RETRY_BACKOFF`]); a `Retry-After` from the provider wins
/// when longer, within the same cap.
pub fn backoff(base: Duration, done: u32, retry_after: Option<Duration>) -> Duration {
    let jittered = RetryPolicy::new(base, MAX_RETRY_BACKOFF).jittered(0.5).delay(done);
    retry_after.map_or(jittered, |r| r.min(MAX_RETRY_BACKOFF).max(jittered))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from feeds and ignored).
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    let v = res.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Longest wait for the body's next bytes. Counted here, while the fetcher waits for the provider,
/// not by the client's read timeout: that one also counts the time the pipeline holds the download
/// (a store writing a 60 MB base plan's plans for a minute), and ended such fetches.
fn read_idle(p: &ProviderSettings) -> Duration {
    p.timeout.min(Duration::from_secs(60))
}

pub fn build_client(p: &ProviderSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(p.connect_timeout)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_retry_after_wins_within_the_cap() {
        let base = Duration::from_millis(500);
        for (done, full) in [(0, 500), (3, 4000), (40, 10_000)] {
            let d = backoff(base, done, None).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "retry {done}: {d} ms not in [{}, {full}]", full / 2);
        }
        assert_eq!(backoff(base, 0, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(backoff(base, 0, Some(Duration::from_secs(3600))), MAX_RETRY_BACKOFF);
    }
}
