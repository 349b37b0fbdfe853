//! `BatchWriter`: the only actor that writes plans. It keeps, per plan key, what the store holds
//! or will hold (hash, event day, version, ever-online), loaded from the spool and the store at
//! start, so an unchanged plan is never written again and a plan whose start moved to another day
//! supersedes its old row.
//!
//! A batch is flushed when it holds `batch_size` plans, when its estimated memory reaches
//! [`BATCH_BYTES`], when its oldest plan is `flush_age` old (a timer message carries the batch id
//! so a stale timer flushes nothing), or when a fetch ends. Parsers hand a chunk's plans on in
//! bounded parts, and the bounds are checked after each part, so no feed's shape makes a batch
//! larger. What becomes of a flushed batch is the delivery layer's ([`crate::delivery`]): the
//! store, else the spool, retried and replayed there; a spooled plan counts as pending in the
//! bookkeeping, so an unchanged re-observation is neither written twice nor lost.
//!
//! Versions: a plan's version is its fetch's id (the hybrid logical clock of [`crate::clock`])
//! above the chunk's sequence number. At load the clock is told the highest version the store and
//! the spool hold, so every later fetch is newer whatever the wall clock did; a fetch whose id is
//! not above that (one started before the load finished) gets a fresh id from the clock.
//!
//! A flushed batch is delivered by a spawned task while the writer keeps absorbing plans into the
//! next batch, so parsing and writing overlap. At most one delivery is in flight: the next flush
//! first awaits it. Its plans count as stored for the unchanged/moved checks at once; `persisted`,
//! the counters and the announcement of the written days follow when it completes (the task
//! reports back with [`WriterMsg::WriteDone`]). A fetch end, a `Flush` request and stopping await
//! every delivery. A fetch is recorded once all its plans are written, spooled or dropped, with
//! those counts, on the same durable path as plans.
//!
//! When the store cannot be read at start (not reachable yet), the writer loads in the background
//! and holds the chunks it receives meanwhile, with their permits: ingestion waits.
//!
//! Files: this one holds the actor and its bookkeeping (what is stored, batched, in flight); the
//! bookkeeping's loading is in `load`, what a delivered batch changes in the bookkeeping in
//! `settle`, and a fetch's tally and record in `fetch_log`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use ractor::{Actor, ActorProcessingErr, ActorRef};

mod fetch_log;
mod load;
mod settle;

use fetch_log::FetchTally;
pub use fetch_log::{SPOOL_REFUSED, STORE_REJECTED};

use super::messages::{ChunkPlans, FetchContext, WriterMsg};
use super::persisted::Persisted;
use crate::delivery::{Delivery, WriteOutcome};
use crate::domain::{FetchRecord, Plan, PlanKey, StoredPlan};

/// Estimated memory of a batch that triggers a flush. Plans vary a hundredfold in size (a plan
/// with 200 zones weighs ~16 KiB in memory), so a plan count alone lets a batch of big plans
/// (and the store's copy of it while writing) dominate the process's memory; this keeps the
/// writer's share bounded whatever the feed looks like.
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct BatchWriterArgs {
    /// Where flushed batches and fetch records go (the store, else the spool).
    pub delivery: Delivery,
    pub batch_size: usize,
    pub flush_age: Duration,
    /// Where each recorded fetch is announced once its plans are written, spooled or dropped
    /// (`ingest --once` ends on it); `None`: nobody waits.
    pub recorded: Option<tokio::sync::mpsc::UnboundedSender<FetchRecord>>,
}

/// Why a batch was flushed (logged with its delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Size,
    /// The batch's estimated memory reached [`BATCH_BYTES`].
    Bytes,
    Age,
    FetchEnd,
    Requested,
    Stop,
}

pub struct BatchWriterState {
    args: BatchWriterArgs,
    /// What the store holds or the spool will deliver, per plan key.
    persisted: Persisted,
    /// Messages held while the bookkeeping loads (`Some` until [`WriterMsg::Loaded`]).
    loading: Option<Vec<WriterMsg>>,
    /// Replays the spool; aborted when the writer stops.
    replayer: Option<AbortOnDrop>,
    batch: Vec<StoredPlan>,
    /// The fetch of each observation taken into `batch` (replaced ones included), by batch slot.
    origins: Vec<(usize, u64)>,
    /// Estimated memory held by `batch` (see [`BATCH_BYTES`]).
    batch_bytes: usize,
    in_batch: HashMap<PlanKey, usize>,
    batch_id: u64,
    batch_started: Option<Instant>,
    fetches: HashMap<u64, FetchTally>,
    /// The highest fetch id among the versions loaded at start: fetches not above it get a fresh
    /// id from the clock ([`BatchWriterState::version_base`]).
    version_floor: u64,
    /// Fresh ids given to such fetches, by fetch id.
    renumbered: HashMap<u64, u64>,
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
    origins: Vec<(usize, u64)>,
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
        me: ActorRef<WriterMsg>,
        args: BatchWriterArgs,
    ) -> Result<BatchWriterState, ActorProcessingErr> {
        let (store, spool) = (args.delivery.store(), args.delivery.spool());
        let (persisted, loading) = match load::load_states(store, spool).await {
            Ok(persisted) => (persisted, None),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "store not readable yet: ingestion waits for it");
                let (args, me) = (args.clone(), me.clone());
                tokio::spawn(async move {
                    let (store, spool) = (args.delivery.store(), args.delivery.spool());
                    let persisted = load::load_until_done(store, spool).await;
                    let _ = me.cast(WriterMsg::Loaded(persisted));
                });
                (Persisted::default(), Some(Vec::new()))
            }
            Err(e) => return Err(e.into()),
        };
        let forget = me.clone();
        let on_dropped = Box::new(move |keys| {
            let _ = forget.cast(WriterMsg::Forget(keys));
        });
        let replayer = Some(AbortOnDrop(tokio::spawn(args.delivery.replay(on_dropped))));
        let version_floor = persisted.version_floor();
        if loading.is_none() {
            args.delivery.counters().states_loaded.store(true, Ordering::Release);
        }
        Ok(BatchWriterState {
            args,
            persisted,
            loading,
            replayer,
            batch: Vec::new(),
            origins: Vec::new(),
            batch_bytes: 0,
            in_batch: HashMap::new(),
            batch_id: 0,
            batch_started: None,
            fetches: HashMap::new(),
            version_floor,
            renumbered: HashMap::new(),
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
        let msg = match (msg, state.loading.as_mut()) {
            (WriterMsg::Loaded(persisted), Some(_)) => {
                state.args.delivery.counters().states_loaded.store(true, Ordering::Release);
                state.version_floor = persisted.version_floor();
                state.persisted = persisted;
                for held in state.loading.take().unwrap_or_default() {
                    state.dispatch(&me, held).await;
                }
                return Ok(());
            }
            // Nothing to flush yet; held chunks keep their permits, which holds the download.
            (WriterMsg::Flush(reply), Some(_)) => {
                let _ = reply.send(());
                return Ok(());
            }
            (msg @ (WriterMsg::Plans(_) | WriterMsg::FetchEnd(_)), Some(held)) => {
                held.push(msg);
                return Ok(());
            }
            (msg, _) => msg,
        };
        state.dispatch(&me, msg).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<WriterMsg>,
        state: &mut BatchWriterState,
    ) -> Result<(), ActorProcessingErr> {
        state.flush_all(&me, FlushTrigger::Stop).await;
        state.replayer.take();
        Ok(())
    }
}

impl BatchWriterState {
    /// One message, once the bookkeeping is loaded.
    async fn dispatch(&mut self, me: &ActorRef<WriterMsg>, msg: WriterMsg) {
        let state = self;
        match msg {
            WriterMsg::Plans(chunk) => {
                let fetch_id = chunk.fetch.fetch_id;
                state.absorb(me, chunk);
                if state.batch.len() >= state.args.batch_size {
                    state.flush(me, FlushTrigger::Size).await;
                } else if state.batch_bytes >= BATCH_BYTES {
                    state.flush(me, FlushTrigger::Bytes).await;
                }
                state.maybe_finish_fetch(me, fetch_id).await;
            }
            WriterMsg::FetchEnd(end) => {
                let fetch_id = end.fetch_id;
                state.fetches.entry(fetch_id).or_default().end = Some(end);
                state.maybe_finish_fetch(me, fetch_id).await;
            }
            WriterMsg::FlushTimer { batch_id } => {
                if batch_id == state.batch_id && !(state.batch.is_empty() && state.marks.is_empty()) {
                    state.flush(me, FlushTrigger::Age).await;
                }
            }
            WriterMsg::Flush(reply) => {
                state.flush_all(me, FlushTrigger::Requested).await;
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
                    state.flush(me, FlushTrigger::Size).await;
                }
            }
            WriterMsg::Loaded(_) => {}
            WriterMsg::Forget(keys) => state.forget(keys),
        }
    }

    /// Drops the bookkeeping of plans the store rejected for good, unless a newer version was
    /// taken since (that one is on its way).
    fn forget(&mut self, keys: Vec<(PlanKey, u64)>) {
        for (key, version) in keys {
            if self.persisted.get(&key).is_some_and(|s| s.version == version) {
                self.persisted.remove(&key);
            }
        }
    }

    /// Takes a chunk's plans into the batch, skipping unchanged and out-of-date observations.
    fn absorb(&mut self, me: &ActorRef<WriterMsg>, chunk: ChunkPlans) {
        let ChunkPlans { fetch, seq, plans, hashes, skipped, error, last, permit } = chunk;
        let version = (self.version_base(fetch.fetch_id) << 20) | u64::from(seq.min((1 << 20) - 1));
        let (seen, hashes_given) = (plans.len() as u64, hashes.len() == plans.len());
        let mut unchanged = 0u64;
        for (i, plan) in plans.into_iter().enumerate() {
            let hash = if hashes_given { hashes[i] } else { plan.content_hash() };
            if !self.take(plan, hash, version, &fetch) {
                unchanged += 1;
            }
        }
        drop(permit);
        let counters = self.args.delivery.counters();
        counters.plans_seen.fetch_add(seen, Ordering::Relaxed);
        counters.plans_unchanged.fetch_add(unchanged, Ordering::Relaxed);
        counters.plans_skipped.fetch_add(skipped, Ordering::Relaxed);
        let tally = self.fetches.entry(fetch.fetch_id).or_default();
        tally.chunks_received += u32::from(last);
        tally.seen += seen;
        tally.unchanged += unchanged;
        tally.skipped += skipped;
        tally.errors.extend(error);
        if !(self.batch.is_empty() && self.marks.is_empty()) && self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
            let batch_id = self.batch_id;
            me.send_after(self.args.flush_age, move || WriterMsg::FlushTimer { batch_id });
        }
    }

    /// The fetch id a version of fetch `fetch_id` is made of: itself when it is above every
    /// version loaded at start, else a fresh id from the clock (the same for the whole fetch).
    fn version_base(&mut self, fetch_id: u64) -> u64 {
        if fetch_id > self.version_floor {
            return fetch_id;
        }
        if self.renumbered.len() > 64 {
            self.renumbered.clear();
        }
        *self.renumbered.entry(fetch_id).or_insert_with(crate::clock::next_fetch_id)
    }

    /// Takes one observation into the batch; false when it changes nothing (same content as the
    /// latest version, or older than it).
    fn take(&mut self, plan: Plan, hash: u64, version: u64, fetch: &FetchContext) -> bool {
        let writing = self.in_flight.as_ref().and_then(|f| f.index.get(&plan.key).map(|&i| &f.batch[i]));
        let pending = self.in_batch.get(&plan.key).map(|&i| &self.batch[i]).or(writing);
        let latest = pending
            .map(|p| (p.hash, p.version, p.ever_online))
            .or_else(|| self.persisted.get(&plan.key).map(|s| (s.hash, s.version, s.ever_online)));
        // The day of the row the store holds once the in-flight write lands.
        let stored_day =
            writing.map(|p| p.event_date).or_else(|| self.persisted.get(&plan.key).map(|s| s.event_date));
        let ever_online = match latest {
            Some((h, _, _)) if h == hash => return false,
            Some((_, v, ever)) if v > version => {
                // A newer observation was already taken; this one arrived late. Its values are
                // stale, but if it was on sale online, the plan was: that must stick.
                if plan.online && !ever && !is_marked(&self.marks, &self.in_flight, &plan.key) {
                    self.mark_ever_online(&plan.key);
                }
                return false;
            }
            // A newer observation of a marked key carries the flag itself: the mark may find
            // nothing to mark once this version moved the plan to another day.
            Some((_, _, ever)) => ever || is_marked(&self.marks, &self.in_flight, &plan.key),
            None => false,
        };
        let mut stored = StoredPlan::with_hash(plan, fetch.tz, ever_online, version, hash);
        stored.previous_event_date = stored_day.filter(|d| *d != stored.event_date);
        self.batch_bytes += estimated_bytes(&stored.plan);
        let slot = match self.in_batch.get(&stored.plan.key) {
            Some(&i) => {
                self.batch[i] = stored;
                i
            }
            None => {
                self.in_batch.insert(stored.plan.key.clone(), self.batch.len());
                self.batch.push(stored);
                self.batch.len() - 1
            }
        };
        // Counted written, spooled or dropped when the batch's write completes.
        self.origins.push((slot, fetch.fetch_id));
        true
    }

    /// Marks `key` ever-online: in its batched row if it has one, else with a mark applied after
    /// the next write, on the day of the row the store holds (or will, once the write in flight
    /// lands).
    fn mark_ever_online(&mut self, key: &PlanKey) {
        if let Some(&i) = self.in_batch.get(key) {
            self.batch[i].ever_online = true;
            return;
        }
        let day = self
            .in_flight
            .as_ref()
            .and_then(|f| f.index.get(key).map(|&i| f.batch[i].event_date))
            .or_else(|| self.persisted.get(key).map(|s| s.event_date));
        if let Some(day) = day {
            self.marks.insert(key.clone(), day);
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
        let origins = std::mem::take(&mut self.origins);
        let mut marks = std::mem::take(&mut self.marks);
        // A key in the batch carries the flag in its row (see `absorb`): no mark needed.
        marks.retain(|key, _| !index.contains_key(key));
        let task_marks: Vec<(PlanKey, NaiveDate)> = marks.iter().map(|(k, d)| (k.clone(), *d)).collect();
        self.batch_bytes = 0;
        self.write_seq += 1;
        let write_id = self.write_seq;
        let delivery = self.args.delivery.clone();
        let me = me.clone();
        let task_batch = batch.clone();
        let handle = tokio::spawn(async move {
            // Marks after the batch: each is for a version written before it (maybe by the write
            // this one waited for).
            let outcome = delivery.deliver(task_batch, task_marks).await;
            let _ = me.cast(WriterMsg::WriteDone { write_id });
            outcome
        });
        self.in_flight = Some(InFlight {
            write_id,
            batch,
            marks,
            index,
            origins,
            trigger,
            started: Instant::now(),
            handle,
        });
    }

    /// Flushes the batch and awaits every write.
    async fn flush_all(&mut self, me: &ActorRef<WriterMsg>, trigger: FlushTrigger) {
        self.flush(me, trigger).await;
        self.finish_write().await;
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
        let mut tally = self.fetches.remove(&fetch_id).unwrap_or_default();
        let Some(end) = tally.end.take() else { return };
        let record = tally.complete(end);
        crate::metrics::record_fetch(
            &record.provider,
            record.outcome,
            Duration::from_millis(record.duration_ms),
        );
        let announced = self.args.recorded.as_ref().map(|tx| (tx, record.clone()));
        self.args.delivery.record_fetch(record).await;
        if let Some((tx, record)) = announced {
            let _ = tx.send(record);
        }
        self.args.delivery.counters().fetches_recorded.fetch_add(1, Ordering::Relaxed);
        // Tallies of fetches whose end never came (a crashed fetcher) must not pile up.
        if self.fetches.len() > 64 {
            let oldest = *self.fetches.keys().min().unwrap_or(&0);
            self.fetches.remove(&oldest);
        }
    }
}

/// The replayer's task, aborted when the writer's state goes, whether it stopped or failed: a
/// restarted writer starts its own, and two must never replay the same spool.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether an ever-online mark of `key` waits (`marks`) or is being applied (`in_flight`).
fn is_marked(marks: &HashMap<PlanKey, NaiveDate>, in_flight: &Option<InFlight>, key: &PlanKey) -> bool {
    marks.contains_key(key) || in_flight.as_ref().is_some_and(|f| f.marks.contains_key(key))
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
