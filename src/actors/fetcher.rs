//! `Fetcher`: downloads the provider's feed as a stream and cuts it into chunks of whole base plans
//! for the parser pool. The body is never held whole: at most one chunk plus the permits' worth of
//! chunks in flight. A failed, truncated or malformed fetch never removes anything: what was cut
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
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::batch_writer::{FetchEnd, WriterMsg};
use super::parser::{ChunkJob, FetchContext, ParserMsg};
use super::scheduler::SchedulerMsg;
use super::{ParserPool, Slot};
use crate::config::{PipelineSettings, ProviderSettings, MAX_RETRY_BACKOFF};
use crate::domain::FetchRecord;
use crate::feed::Chunker;

/// How long the complete base plans buffered when a download fails may wait for a pipeline
/// permit past the fetch's deadline: they are already downloaded, dropping them would waste them.
const SALVAGE_GRACE: Duration = Duration::from_secs(10);

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
    /// This provider's breaker. The supervisor keeps it, so a restarted fetcher goes on with the
    /// state its predecessor left (an open circuit stays open).
    pub breaker: SharedBreaker,
}

pub struct FetcherState {
    args: FetcherArgs,
    client: reqwest::Client,
    last_fetch_id: u64,
}

/// What the breaker allows for the next fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: a normal fetch, with retries.
    Fetch,
    /// The cooldown is over: one request, no retries; its outcome closes or reopens the breaker.
    Probe,
    /// Open: send nothing.
    Skip { remaining: Duration },
}

/// Circuit breaker over consecutive failed fetches of one provider. Shared ([`SharedBreaker`])
/// between the supervisor and the provider's fetcher, so it outlives a fetcher's restart.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// `threshold == 0` never opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold, cooldown, failures: 0, open_until: None }
    }

    pub fn admit(&self, now: Instant) -> Admission {
        match self.open_until {
            Some(until) if now < until => Admission::Skip { remaining: until - now },
            Some(_) => Admission::Probe,
            None => Admission::Fetch,
        }
    }

    /// Records a fetch's outcome; returns true when this opened (or reopened) the breaker.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        if ok {
            self.failures = 0;
            self.open_until = None;
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        if self.threshold > 0 && self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// New thresholds (configuration reload); the count and an open circuit are kept.
    pub fn configure(&mut self, threshold: u32, cooldown: Duration) {
        self.threshold = threshold;
        self.cooldown = cooldown;
    }

    /// Whether the circuit is open at `now` (no request would be sent).
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.admit(now), Admission::Skip { .. })
    }
}

/// A provider's breaker, as the supervisor and the fetcher hold it.
pub type SharedBreaker = Arc<parking_lot::Mutex<Breaker>>;

/// A closed breaker for a provider's settings.
pub fn shared_breaker(provider: &ProviderSettings) -> SharedBreaker {
    Arc::new(parking_lot::Mutex::new(Breaker::new(provider.breaker_failures, provider.breaker_cooldown)))
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
                // The supervisor reconfigures the breaker it keeps.
                state.client = build_client(&provider)?;
                state.args.provider = provider;
                return Ok(());
            }
        };
        let started_at = Utc::now();
        // Fetch ids order observations: strictly increasing even if the clock stalls.
        let fetch_id = (started_at.timestamp_millis().max(0) as u64).max(state.last_fetch_id + 1);
        state.last_fetch_id = fetch_id;
        let provider = &state.args.provider;
        let mut record = FetchRecord { provider: provider.name.clone(), started_at, ..Default::default() };
        let mut chunks = 0u32;
        let mut retries = 0u32;
        let (admission, failures) = {
            let breaker = state.args.breaker.lock();
            (breaker.admit(Instant::now()), breaker.failures())
        };
        let max_retries = match admission {
            Admission::Skip { remaining } => {
                record.error = Some(format!(
                    "circuit open: {failures} consecutive failed fetches, no request sent; next probe in {} ms",
                    remaining.as_millis()
                ));
                state.end_fetch(fetch_id, 0, 0, record);
                let _ = reply_to.cast(SchedulerMsg::FetchFinished { failed: true });
                return Ok(());
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
        let outcome =
            state.download(&ctx, deadline, max_retries, &mut record, &mut chunks, &mut retries).await;
        record.error = outcome.err();
        let failed = record.error.is_some();
        let (opened, failed_before, failures) = {
            let mut breaker = state.args.breaker.lock();
            let before = breaker.failures();
            (breaker.record(!failed, Instant::now()), before, breaker.failures())
        };
        state.report_reachability(failed_before, record.error.as_deref());
        if opened {
            tracing::warn!(
                provider = %state.args.provider.name,
                failures,
                cooldown_ms = state.args.provider.breaker_cooldown.as_millis() as u64,
                "circuit opened: no request will be sent until the cooldown ends"
            );
        }
        state.end_fetch(fetch_id, chunks, retries, record);
        let _ = reply_to.cast(SchedulerMsg::FetchFinished { failed });
        Ok(())
    }
}

impl FetcherState {
    /// Says plainly, once per outage, that the provider cannot be fetched and what is served
    /// meanwhile, and once that it answers again (the per-fetch lines say the rest).
    fn report_reachability(&self, failed_before: u32, error: Option<&str>) {
        let p = &self.args.provider;
        match error {
            Some(error) if failed_before == 0 => tracing::warn!(
                provider = %p.name, url = %p.url, error = %error, retry_every = ?p.interval,
                "provider unreachable or failing: /search keeps serving the plans already stored \
                 (none before a first successful fetch); fetching again every interval"
            ),
            None if failed_before > 0 => tracing::info!(
                provider = %p.name, failed_fetches = failed_before, "provider answers again"
            ),
            _ => {}
        }
    }

    fn end_fetch(&self, fetch_id: u64, chunks: u32, retries: u32, record: FetchRecord) {
        let end = FetchEnd { fetch_id, chunks, retries, record };
        if self.args.writer.cast(WriterMsg::FetchEnd(end)).is_err() {
            tracing::error!("batch writer is not running: fetch result dropped");
        }
    }

    async fn download(
        &self,
        ctx: &Arc<FetchContext>,
        deadline: Instant,
        max_retries: u32,
        record: &mut FetchRecord,
        chunks: &mut u32,
        retries: &mut u32,
    ) -> Result<(), String> {
        let mut body = if let Some(path) = self.args.provider.url.strip_prefix("file://") {
            // Local files (`planfeed ingest --file`) take the same path as downloads.
            let file = tokio::fs::File::open(path).await.map_err(|e| format!("cannot open {path}: {e}"))?;
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                .map(|r| r.map_err(|e| e.to_string()))
                .boxed()
        } else {
            let response = self.open(deadline, max_retries, record, retries).await?;
            response.bytes_stream().map(|r| r.map_err(|e| error_chain(&e))).boxed()
        };
        let pl = &self.args.pipeline;
        let max_body = self.args.provider.max_body_bytes;
        let mut chunker = Chunker::new(pl.chunk_bytes, pl.max_base_plan_bytes);
        let failure = loop {
            let piece = match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(piece))) => piece,
                Ok(None) => break None,
                Ok(Some(Err(e))) => {
                    break Some(format!("body read failed after {} bytes: {e}", record.bytes))
                }
                Err(_) => {
                    break Some(format!(
                        "fetch timed out after {:?} while reading the body ({} bytes read)",
                        self.args.provider.timeout, record.bytes
                    ))
                }
            };
            let room = max_body.saturating_sub(record.bytes);
            let over = piece.len() as u64 > room;
            let piece = if over { piece.slice(..room as usize) } else { piece };
            record.bytes += piece.len() as u64;
            match chunker.push(&piece) {
                Ok(ready) => {
                    for bytes in ready {
                        self.send_chunk(ctx, chunks, bytes, deadline).await?;
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
            if over {
                break Some(format!(
                    "body exceeds provider.max_body_bytes ({max_body} bytes); the base plans before the limit were kept"
                ));
            }
        };
        // Complete base plans still below the chunk target go on even when the body was cut short.
        if let Some(rest) = chunker.flush() {
            let grace =
                if failure.is_some() { deadline.max(Instant::now()) + SALVAGE_GRACE } else { deadline };
            self.send_chunk(ctx, chunks, rest, grace).await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(last) = chunker.finish().map_err(|e| e.to_string())? {
            self.send_chunk(ctx, chunks, last, deadline).await?;
        }
        Ok(())
    }

    /// Sends the request until a successful response starts, retrying transient failures.
    async fn open(
        &self,
        deadline: Instant,
        max_retries: u32,
        record: &mut FetchRecord,
        retries: &mut u32,
    ) -> Result<reqwest::Response, String> {
        let p = &self.args.provider;
        let url = &p.url;
        loop {
            let (error, transient, retry_after) =
                match tokio::time::timeout_at(deadline, self.client.get(url).send()).await {
                    Err(_) => {
                        record.http_status = None;
                        let e = format!("fetch timed out after {:?} waiting for a response", p.timeout);
                        // The whole fetch's time is spent: there is nothing left to retry with.
                        return Err(with_retries(e, *retries));
                    }
                    Ok(Ok(res)) if res.status().is_success() => {
                        record.http_status = Some(res.status().as_u16());
                        return Ok(res);
                    }
                    Ok(Ok(res)) => {
                        let status = res.status();
                        record.http_status = Some(status.as_u16());
                        let transient = status.is_server_error() || status.as_u16() == 429;
                        (format!("provider answered HTTP {status}"), transient, retry_after(&res))
                    }
                    Ok(Err(e)) => {
                        record.http_status = None;
                        let transient = e.is_connect() || e.is_timeout() || e.is_request();
                        (format!("request to {url} failed: {}", error_chain(&e)), transient, None)
                    }
                };
            if !transient || *retries >= max_retries {
                return Err(with_retries(error, *retries));
            }
            let delay = backoff(p.retry_backoff, *retries, retry_after);
            if Instant::now() + delay >= deadline {
                return Err(with_retries(
                    format!("{error}; no time left for a retry within {:?}", p.timeout),
                    *retries,
                ));
            }
            *retries += 1;
            tracing::warn!(
                provider = %p.name, error = %error, retry = *retries, max_retries,
                delay_ms = delay.as_millis() as u64, "fetch attempt failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_chunk(
        &self,
        ctx: &Arc<FetchContext>,
        seq: &mut u32,
        bytes: bytes::Bytes,
        deadline: Instant,
    ) -> Result<(), String> {
        let permit = tokio::time::timeout_at(deadline, self.args.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "fetch timed out after {:?} waiting for the pipeline (store too slow?)",
                    self.args.provider.timeout
                )
            })?
            .map_err(|_| "pipeline is shutting down".to_string())?;
        let job = ChunkJob { fetch: ctx.clone(), seq: *seq, bytes, permit };
        self.args.parsers.dispatch(ParserMsg::Parse(job)).map_err(|_| "no parser is running".to_string())?;
        *seq += 1;
        Ok(())
    }
}

/// Delay before retry `done + 1`: `base × 2^done`, jittered to 50–100 % so providers and replicas
/// don't retry in step, capped at [`MAX_RETRY_BACKOFF`]. A `Retry-After` from the provider wins
/// when longer, within the same cap.
pub fn backoff(base: Duration, done: u32, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(done.min(16))).min(MAX_RETRY_BACKOFF);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    retry_after.map_or(jittered, |r| r.min(MAX_RETRY_BACKOFF).max(jittered))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from feeds and ignored).
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    let v = res.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn with_retries(error: String, retries: u32) -> String {
    match retries {
        0 => error,
        1 => format!("{error} (after 1 retry)"),
        n => format!("{error} (after {n} retries)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(60));
        assert!(!b.record(false, t0));
        assert!(!b.record(false, t0));
        assert!(!b.record(true, t0), "a success resets the count");
        assert!(!b.record(false, t0));
        assert!(!b.record(false, t0));
        assert_eq!(b.admit(t0), Admission::Fetch);
        assert!(b.record(false, t0), "third consecutive failure opens");
        assert_eq!(
            b.admit(t0 + Duration::from_secs(59)),
            Admission::Skip { remaining: Duration::from_secs(1) }
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(b.record(false, later), "a failed probe reopens");
        assert_eq!(
            b.admit(later + Duration::from_secs(1)),
            Admission::Skip { remaining: Duration::from_secs(59) }
        );
        assert_eq!(b.admit(later + Duration::from_secs(60)), Admission::Probe);
        assert!(!b.record(true, later + Duration::from_secs(60)));
        assert_eq!(b.admit(later + Duration::from_secs(60)), Admission::Fetch);
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(!b.record(false, t0));
        }
        assert_eq!(b.admit(t0), Admission::Fetch);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(500);
        for (done, full) in [(0, 500), (1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 10_000), (40, 10_000)]
        {
            let d = backoff(base, done, None).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "retry {done}: {d} ms not in [{}, {full}]", full / 2);
        }
        assert_eq!(backoff(base, 0, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(backoff(base, 0, Some(Duration::from_secs(3600))), MAX_RETRY_BACKOFF);
    }
}
