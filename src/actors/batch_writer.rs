//! `BatchWriter`: the only actor that writes plans. It keeps, per plan key, what the store holds
//! (hash, event day, version, ever-online), loaded from the store at start, so an unchanged plan is
//! never written again and a plan whose start moved to another day supersedes its old row.
//!
//! A batch is flushed when it holds `batch_size` plans, when its oldest plan is `flush_age` old (a
//! timer message carries the batch id so a stale timer flushes nothing), or when a fetch ends.
//! Transient store errors are retried with capped, jittered backoff; a permanent error drops the
//! batch (the plans stay unknown to the writer, so the next fetch offers them again).
//!
//! A flushed batch is written by a spawned task while the writer keeps absorbing plans into the
//! next batch, so parsing and writing overlap. At most one write is in flight: the next flush
//! first awaits it. Its plans count as stored for the unchanged/moved checks at once; `persisted`,
//! the counters and the search cache are updated when the write completes (the task reports back
//! with [`WriterMsg::WriteDone`]). A fetch end, a `Flush` request and stopping await every write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tokio::sync::OwnedSemaphorePermit;

use super::parser::FetchContext;
use crate::domain::{FetchRecord, Plan, PlanKey, PlanState, StoredPlan};
use crate::search::Searcher;
use crate::store::{SharedStore, StoreResult};

/// The plans of one parsed chunk.
pub struct ChunkPlans {
    pub fetch: Arc<FetchContext>,
    pub seq: u32,
    pub plans: Vec<Plan>,
    /// `plans[i].content_hash()`, computed by the parser; empty means "compute them here".
    pub hashes: Vec<u64>,
    pub skipped: u64,
    pub error: Option<String>,
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
    pub record: FetchRecord,
}

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
}

/// Estimated memory of a batch that triggers a flush. Plans vary a hundredfold in size (a plan
/// with 200 zones weighs ~16 KiB in memory), so a plan count alone lets a batch of big plans
/// (and the store's copy of it while writing) dominate the process's memory; this keeps the
/// writer's share bounded whatever the feed looks like.
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Size,
    /// [`BATCH_BYTES`] reached.
    Bytes,
    Age,
    FetchEnd,
    Requested,
    Stop,
}

/// Outcome counters, shared with metrics and tests.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub plans_seen: AtomicU64,
    pub plans_written: AtomicU64,
    pub plans_unchanged: AtomicU64,
    pub plans_skipped: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub fetches_recorded: AtomicU64,
}

#[derive(Clone)]
pub struct BatchWriterArgs {
    pub store: SharedStore,
    pub searcher: Option<Arc<Searcher>>,
    pub batch_size: usize,
    pub flush_age: Duration,
    pub counters: Arc<WriterCounters>,
}

#[derive(Default)]
struct FetchTally {
    chunks_received: u32,
    end: Option<FetchEnd>,
    seen: u64,
    written: u64,
    unchanged: u64,
    skipped: u64,
    errors: Vec<String>,
}

pub struct BatchWriterState {
    args: BatchWriterArgs,
    /// What the store holds, per plan key.
    persisted: HashMap<PlanKey, PlanState>,
    batch: Vec<StoredPlan>,
    /// Estimated memory held by `batch` (see [`BATCH_BYTES`]).
    batch_bytes: usize,
    in_batch: HashMap<PlanKey, usize>,
    batch_id: u64,
    batch_started: Option<Instant>,
    fetches: HashMap<u64, FetchTally>,
    /// The batch being written, if any (at most one).
    in_flight: Option<InFlight>,
    write_seq: u64,
    /// Keys whose latest version is written or being written, to be marked ever-online because an
    /// older observation of them, arriving late, was online; with the day of that version. Kept
    /// until a write applies them (a failed one hands them back).
    marks: HashMap<PlanKey, NaiveDate>,
}

/// A batch handed to the store, not yet known to be written.
struct InFlight {
    write_id: u64,
    batch: Arc<Vec<StoredPlan>>,
    /// Ever-online marks applied after the batch.
    marks: HashMap<PlanKey, NaiveDate>,
    /// Position of each key in `batch`.
    index: HashMap<PlanKey, usize>,
    trigger: FlushTrigger,
    started: Instant,
    handle: tokio::task::JoinHandle<WriteOutcome>,
}

pub struct BatchWriter;

impl Actor for BatchWriter {
    type Msg = WriterMsg;
    type State = BatchWriterState;
    type Arguments = BatchWriterArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WriterMsg>,
        args: BatchWriterArgs,
    ) -> Result<BatchWriterState, ActorProcessingErr> {
        let started = Instant::now();
        let persisted: HashMap<_, _> = args.store.load_plan_states().await?.into_iter().collect();
        tracing::info!(
            plans = persisted.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "writer loaded plan states"
        );
        Ok(BatchWriterState {
            args,
            persisted,
            batch: Vec::new(),
            batch_bytes: 0,
            in_batch: HashMap::new(),
            batch_id: 0,
            batch_started: None,
            fetches: HashMap::new(),
            in_flight: None,
            write_seq: 0,
            marks: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut BatchWriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Plans(chunk) => {
                let fetch_id = chunk.fetch.fetch_id;
                state.absorb(&me, chunk);
                if state.batch.len() >= state.args.batch_size {
                    state.flush(&me, FlushTrigger::Size).await;
                } else if state.batch_bytes >= BATCH_BYTES {
                    state.flush(&me, FlushTrigger::Bytes).await;
                }
                state.maybe_finish_fetch(&me, fetch_id).await;
            }
            WriterMsg::FetchEnd(end) => {
                let fetch_id = end.fetch_id;
                state.fetches.entry(fetch_id).or_default().end = Some(end);
                state.maybe_finish_fetch(&me, fetch_id).await;
            }
            WriterMsg::FlushTimer { batch_id } => {
                if batch_id == state.batch_id && !(state.batch.is_empty() && state.marks.is_empty()) {
                    state.flush(&me, FlushTrigger::Age).await;
                }
            }
            WriterMsg::Flush(reply) => {
                state.flush_all(&me, FlushTrigger::Requested).await;
                let _ = reply.send(());
            }
            WriterMsg::WriteDone { write_id } => {
                if state.in_flight.as_ref().is_some_and(|f| f.write_id == write_id) {
                    state.finish_write().await;
                }
            }
            WriterMsg::SetBatching { batch_size, flush_age } => {
                state.args.batch_size = batch_size;
                state.args.flush_age = flush_age;
                if state.batch.len() >= batch_size {
                    state.flush(&me, FlushTrigger::Size).await;
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<WriterMsg>,
        state: &mut BatchWriterState,
    ) -> Result<(), ActorProcessingErr> {
        state.flush_all(&me, FlushTrigger::Stop).await;
        Ok(())
    }
}

impl BatchWriterState {
    /// Takes a chunk's plans into the batch, skipping unchanged and out-of-date observations.
    fn absorb(&mut self, me: &ActorRef<WriterMsg>, chunk: ChunkPlans) {
        let ChunkPlans { fetch, seq, plans, hashes, skipped, error, permit } = chunk;
        let version = (fetch.fetch_id << 20) | u64::from(seq.min((1 << 20) - 1));
        let counters = &self.args.counters;
        let tally = self.fetches.entry(fetch.fetch_id).or_default();
        tally.chunks_received += 1;
        tally.skipped += skipped;
        counters.plans_skipped.fetch_add(skipped, Ordering::Relaxed);
        if let Some(e) = error {
            tally.errors.push(e);
        }
        let hashes_given = hashes.len() == plans.len();
        for (i, plan) in plans.into_iter().enumerate() {
            tally.seen += 1;
            counters.plans_seen.fetch_add(1, Ordering::Relaxed);
            let hash = if hashes_given { hashes[i] } else { plan.content_hash() };
            let writing = self.in_flight.as_ref().and_then(|f| f.index.get(&plan.key).map(|&i| &f.batch[i]));
            let pending = self.in_batch.get(&plan.key).map(|&i| &self.batch[i]).or(writing);
            let latest = pending
                .map(|p| (p.hash, p.version, p.ever_online))
                .or_else(|| self.persisted.get(&plan.key).map(|s| (s.hash, s.version, s.ever_online)));
            // The day of the row the store holds once the in-flight write lands.
            let stored_day =
                writing.map(|p| p.event_date).or_else(|| self.persisted.get(&plan.key).map(|s| s.event_date));
            let ever_online = match latest {
                Some((h, _, _)) if h == hash => {
                    tally.unchanged += 1;
                    counters.plans_unchanged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some((_, v, ever)) if v > version => {
                    // A newer observation was already taken; this one arrived late. Its values are
                    // stale, but if it was on sale online, the plan was: that must stick.
                    if plan.online && !ever && !is_marked(&self.marks, &self.in_flight, &plan.key) {
                        match self.in_batch.get(&plan.key) {
                            Some(&i) => self.batch[i].ever_online = true,
                            None => {
                                let day = self
                                    .in_flight
                                    .as_ref()
                                    .and_then(|f| f.index.get(&plan.key).map(|&i| f.batch[i].event_date))
                                    .or_else(|| self.persisted.get(&plan.key).map(|s| s.event_date));
                                if let Some(day) = day {
                                    self.marks.insert(plan.key.clone(), day);
                                }
                            }
                        }
                    }
                    tally.unchanged += 1;
                    counters.plans_unchanged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // A newer observation of a marked key carries the flag itself: the mark may find
                // nothing to mark once this version moved the plan to another day.
                Some((_, _, ever)) => ever || is_marked(&self.marks, &self.in_flight, &plan.key),
                None => false,
            };
            let mut stored = StoredPlan::with_hash(plan, fetch.tz, ever_online, version, hash);
            stored.previous_event_date = stored_day.filter(|d| *d != stored.event_date);
            tally.written += 1;
            counters.plans_written.fetch_add(1, Ordering::Relaxed);
            self.batch_bytes += estimated_bytes(&stored.plan);
            match self.in_batch.get(&stored.plan.key) {
                Some(&i) => self.batch[i] = stored,
                None => {
                    self.in_batch.insert(stored.plan.key.clone(), self.batch.len());
                    self.batch.push(stored);
                }
            }
        }
        drop(permit);
        if !(self.batch.is_empty() && self.marks.is_empty()) && self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
            let batch_id = self.batch_id;
            me.send_after(self.args.flush_age, move || WriterMsg::FlushTimer { batch_id });
        }
    }

    /// Hands the batch to a write task (after awaiting the one in flight, if any).
    async fn flush(&mut self, me: &ActorRef<WriterMsg>, trigger: FlushTrigger) {
        self.batch_id += 1;
        self.batch_started = None;
        if self.batch.is_empty() && self.marks.is_empty() {
            return;
        }
        self.finish_write().await;
        let batch = Arc::new(std::mem::take(&mut self.batch));
        let index = std::mem::take(&mut self.in_batch);
        let mut marks = std::mem::take(&mut self.marks);
        // A key in the batch carries the flag in its row (see `absorb`): no mark needed.
        marks.retain(|key, _| !index.contains_key(key));
        let task_marks: Vec<(PlanKey, NaiveDate)> = marks.iter().map(|(k, d)| (k.clone(), *d)).collect();
        self.batch_bytes = 0;
        self.write_seq += 1;
        let write_id = self.write_seq;
        let store = self.args.store.clone();
        let counters = self.args.counters.clone();
        let me = me.clone();
        let task_batch = batch.clone();
        let handle = tokio::spawn(async move {
            // Marks after the batch: each is for a version written before it (maybe by the write
            // this one waited for).
            let outcome = write_with_retries(store, counters, task_batch, task_marks, trigger).await;
            let _ = me.cast(WriterMsg::WriteDone { write_id });
            outcome
        });
        self.in_flight =
            Some(InFlight { write_id, batch, marks, index, trigger, started: Instant::now(), handle });
    }

    /// Flushes the batch and awaits every write.
    async fn flush_all(&mut self, me: &ActorRef<WriterMsg>, trigger: FlushTrigger) {
        self.flush(me, trigger).await;
        self.finish_write().await;
    }

    /// Awaits the write in flight, if any, and records its outcome.
    async fn finish_write(&mut self) {
        let Some(f) = self.in_flight.take() else { return };
        let outcome = match f.handle.await {
            Ok(outcome) => outcome,
            Err(e) => {
                self.args.counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, plans = f.batch.len(), "store write task failed: batch dropped");
                WriteOutcome { written: false, marked: false }
            }
        };
        let mut days = HashSet::<NaiveDate>::new();
        if outcome.written && !f.batch.is_empty() {
            self.args.counters.batches.fetch_add(1, Ordering::Relaxed);
            for p in f.batch.iter() {
                days.insert(p.event_date);
                days.extend(p.previous_event_date);
                self.persisted.insert(
                    p.plan.key.clone(),
                    PlanState {
                        hash: p.hash,
                        event_date: p.event_date,
                        version: p.version,
                        ever_online: p.ever_online,
                    },
                );
            }
            tracing::debug!(
                plans = f.batch.len(),
                trigger = ?f.trigger,
                elapsed_ms = f.started.elapsed().as_millis() as u64,
                "batch written"
            );
        }
        if outcome.marked {
            for (key, day) in &f.marks {
                if let Some(state) = self.persisted.get_mut(key) {
                    state.ever_online = true;
                }
                days.insert(*day);
            }
        } else if !f.marks.is_empty() {
            // Not applied: back in line for the next write (or into the row of a newer version).
            tracing::warn!(
                marks = f.marks.len(),
                "ever-online marks not applied; retrying with the next write"
            );
            for (key, day) in f.marks {
                match self.in_batch.get(&key) {
                    Some(&i) => self.batch[i].ever_online = true,
                    None => {
                        self.marks.entry(key).or_insert(day);
                    }
                }
            }
        }
        if let Some(searcher) = self.args.searcher.as_ref().filter(|_| !days.is_empty()) {
            let days: Vec<_> = days.into_iter().collect();
            searcher.invalidate(&days).await;
        }
    }

    /// Once every chunk of an ended fetch is in, flushes and records the fetch in the store's log.
    async fn maybe_finish_fetch(&mut self, me: &ActorRef<WriterMsg>, fetch_id: u64) {
        let done = self
            .fetches
            .get(&fetch_id)
            .is_some_and(|t| t.end.as_ref().is_some_and(|e| e.chunks == t.chunks_received));
        if !done {
            return;
        }
        self.flush_all(me, FlushTrigger::FetchEnd).await;
        let tally = self.fetches.remove(&fetch_id).unwrap_or_default();
        let Some(end) = tally.end else { return };
        let retries = end.retries;
        let mut record = end.record;
        record.plans_seen = tally.seen;
        record.plans_written = tally.written;
        record.plans_unchanged = tally.unchanged;
        record.plans_skipped = tally.skipped;
        if record.error.is_none() && !tally.errors.is_empty() {
            record.error = Some(tally.errors.join("; "));
        }
        record.duration_ms = (Utc::now() - record.started_at).num_milliseconds().max(0) as u64;
        match &record.error {
            None => tracing::info!(
                provider = %record.provider, seen = record.plans_seen, written = record.plans_written,
                unchanged = record.plans_unchanged, skipped = record.plans_skipped, bytes = record.bytes,
                retries, duration_ms = record.duration_ms, "fetch ingested"
            ),
            Some(e) => tracing::warn!(
                provider = %record.provider, error = %e, http_status = ?record.http_status, seen = record.plans_seen,
                written = record.plans_written, bytes = record.bytes, retries,
                outcome = fetch_outcome(&record), "fetch failed"
            ),
        }
        crate::metrics::record_fetch(&record.provider, fetch_outcome(&record));
        if let Err(e) = self.args.store.record_fetch(&record).await {
            tracing::warn!(error = %e, "could not record the fetch in the store's log");
        }
        self.args.counters.fetches_recorded.fetch_add(1, Ordering::Relaxed);
        // Tallies of fetches whose end never came (a crashed fetcher) must not pile up.
        if self.fetches.len() > 64 {
            let oldest = *self.fetches.keys().min().unwrap_or(&0);
            self.fetches.remove(&oldest);
        }
    }
}

/// Whether an ever-online mark of `key` waits (`marks`) or is being applied (`in_flight`).
fn is_marked(marks: &HashMap<PlanKey, NaiveDate>, in_flight: &Option<InFlight>, key: &PlanKey) -> bool {
    marks.contains_key(key) || in_flight.as_ref().is_some_and(|f| f.marks.contains_key(key))
}

/// What a write task did.
struct WriteOutcome {
    /// The batch is stored (false: dropped after a permanent error or too many attempts).
    written: bool,
    /// The ever-online marks are applied (only tried once the batch is written).
    marked: bool,
}

/// Writes a batch, then applies the marks, each retried on transient errors with capped,
/// jittered backoff.
async fn write_with_retries(
    store: SharedStore,
    counters: Arc<WriterCounters>,
    batch: Arc<Vec<StoredPlan>>,
    marks: Vec<(PlanKey, NaiveDate)>,
    trigger: FlushTrigger,
) -> WriteOutcome {
    let plans = batch.len();
    let written = retrying(&counters, "store write", || store.write_plans_shared(batch.clone())).await;
    if let Err(e) = written {
        counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, plans, ?trigger, "store write failed for good: batch dropped, its plans will be offered again by the next fetch");
        return WriteOutcome { written: false, marked: false };
    }
    if marks.is_empty() {
        return WriteOutcome { written: true, marked: true };
    }
    let marked = retrying(&counters, "ever-online marks", || store.mark_ever_online(&marks)).await;
    if let Err(e) = &marked {
        tracing::warn!(error = %e, marks = marks.len(), "could not mark plans ever-online");
    }
    WriteOutcome { written: true, marked: marked.is_ok() }
}

/// Runs `op` until it succeeds, fails permanently or has failed transiently 9 times.
async fn retrying<F, Fut>(counters: &WriterCounters, what: &str, mut op: F) -> StoreResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<()>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < 8 => {
                attempt += 1;
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let base = Duration::from_millis(100 * 2u64.pow(attempt.min(6))).min(Duration::from_secs(5));
                let delay = base.mul_f64(rand::rng().random_range(0.5..1.0));
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
                tokio::time::sleep(delay).await;
            }
            result => return result,
        }
    }
}

/// Rough memory of a plan in a batch: the struct, its zones and their strings.
fn estimated_bytes(plan: &Plan) -> usize {
    std::mem::size_of::<StoredPlan>()
        + plan.title.len()
        + plan
            .zones
            .iter()
            .map(|z| std::mem::size_of::<crate::domain::Zone>() + z.name.len() + 16)
            .sum::<usize>()
}

/// The reason label of a fetch outcome, for metrics.
pub fn fetch_outcome(record: &FetchRecord) -> &'static str {
    let Some(error) = record.error.as_deref() else { return "ok" };
    if error.starts_with("circuit open") {
        return "skipped";
    }
    match record.http_status {
        Some(s) if !(200..300).contains(&s) => "http_error",
        None if error.contains("timed out") => "timeout",
        None => "connect",
        Some(_) if error.contains("timed out") => "timeout",
        Some(_) if error.contains("truncated") => "truncated",
        Some(_) if error.contains("max_body_bytes") => "too_large",
        Some(_) if error.contains("body read failed") => "body_error",
        Some(_) => "bad_feed",
    }
}
