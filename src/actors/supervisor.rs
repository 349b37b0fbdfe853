//! `Supervisor`: spawns the pipeline downstream first (writer, parsers, fetcher, scheduler), each
//! linked to it, and restarts a child that fails or stops unexpectedly. Restarts back off
//! exponentially per child (100 ms doubling, capped at 30 s); a child that ran for a minute
//! without failing starts again from the shortest delay. The supervisor itself never stops because
//! of a child.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::batch_writer::{BatchWriter, BatchWriterArgs};
use super::fetcher::{Fetcher, FetcherArgs};
use super::messages::{FetcherMsg, SchedulerMsg, WriterMsg};
use super::parser::{Parser, ParserArgs};
use super::scheduler::{Scheduler, SchedulerArgs};
use super::slot::{ParserPool, Slot};
use crate::config::{PipelineSettings, ProviderSettings};
use crate::fetch::breaker::{shared_breaker, SharedBreaker};
use crate::retry::RetryPolicy;

/// Restart delays per child: 100 ms doubling to 30 s; no jitter, nobody else shares the wait.
const RESTART_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(30));

/// How long a stopping fetch may take to hand on the base plans it holds (it waits for pipeline
/// permits, which the draining parsers give back).
const FETCH_STOP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Writer,
    Parser(usize),
    /// The fetcher of provider `i`.
    Fetcher(usize),
    /// The scheduler of provider `i`.
    Scheduler(usize),
}

pub enum SupervisorMsg {
    Restart(Child),
    /// Flush the writer and answer (tests).
    FlushWriter(ractor::RpcReplyPort<()>),
    /// Graceful stop: no new fetch, the download in progress is cut short and recorded
    /// (`shutdown`), every complete base plan it read is parsed and written, then the children
    /// stop. Answers when done.
    Shutdown(ractor::RpcReplyPort<()>),
    /// Configuration reload: provider `index` gets new settings (same name). Kept in the
    /// supervisor's arguments too, so a restarted fetcher or scheduler starts with them.
    SetProvider {
        index: usize,
        settings: ProviderSettings,
    },
    /// Configuration reload: grow or shrink the parser pool. A removed parser finishes the chunks
    /// already in its mailbox (drain), so no chunk of a running fetch is lost.
    SetParsers(usize),
    /// Configuration reload: the writer's flush thresholds.
    SetBatching {
        batch_size: usize,
        flush_age: Duration,
    },
}

#[derive(Clone)]
pub struct PipelineArgs {
    /// One scheduler and one fetcher each; they share the parsers and the writer.
    pub providers: Vec<ProviderSettings>,
    pub pipeline: PipelineSettings,
    pub writer: BatchWriterArgs,
    /// One fetch per provider, then no more (`ingest --once`).
    pub once: bool,
}

/// Handles to the running pipeline, shared with the service (reload, shutdown, tests).
#[derive(Clone)]
pub struct PipelineHandles {
    pub writer: Slot<WriterMsg>,
    /// Chunks in flight between the download and the writer (`pipeline.queue_chunks` permits).
    pub permits: Arc<Semaphore>,
    pub parsers: ParserPool,
    /// Per provider, in configuration order.
    pub fetchers: Vec<Slot<FetcherMsg>>,
    pub schedulers: Vec<Slot<SchedulerMsg>>,
}

impl PipelineHandles {
    pub fn new(providers: usize, parsers: usize, queue_chunks: usize) -> Self {
        Self {
            writer: Slot::default(),
            permits: Arc::new(Semaphore::new(queue_chunks)),
            parsers: ParserPool::with_size(parsers),
            fetchers: (0..providers).map(|_| Slot::default()).collect(),
            schedulers: (0..providers).map(|_| Slot::default()).collect(),
        }
    }
}

pub struct SupervisorState {
    args: PipelineArgs,
    handles: PipelineHandles,
    /// Per provider: kept across fetcher restarts.
    breakers: Vec<SharedBreaker>,
    children: HashMap<ActorId, Child>,
    restarts: HashMap<Child, (u32, Instant)>,
    /// Memory in flight between the download and the writer's batch (`pipeline.queue_bytes`
    /// permits, one per byte): the fetchers take a chunk's share, the parsers give it back once
    /// the writer holds the chunk's plans. Beside `handles.permits`, which counts the chunks.
    memory: Arc<Semaphore>,
    stopping: bool,
    /// Cancelled on shutdown: the running fetches end, recorded as `shutdown`.
    fetches_stop: CancellationToken,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (PipelineArgs, PipelineHandles);

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        (args, handles): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let breakers = args.providers.iter().map(shared_breaker).collect();
        let memory = Arc::new(Semaphore::new(args.pipeline.queue_bytes));
        let mut state = SupervisorState {
            args,
            handles,
            breakers,
            children: HashMap::new(),
            restarts: HashMap::new(),
            memory,
            stopping: false,
            fetches_stop: CancellationToken::new(),
        };
        // Downstream first, so every actor's next stage exists when it starts.
        let mut order = vec![Child::Writer];
        order.extend((0..state.handles.parsers.len()).map(Child::Parser));
        let providers = state.args.providers.len();
        order.extend((0..providers).map(Child::Fetcher));
        order.extend((0..providers).map(Child::Scheduler));
        for child in order {
            state.spawn_or_retry(&me, child).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(child) => state.restart(&me, child).await,
            SupervisorMsg::SetProvider { index, settings } => state.set_provider(index, settings),
            SupervisorMsg::SetParsers(n) => state.set_parsers(&me, n).await,
            SupervisorMsg::SetBatching { batch_size, flush_age } => state.set_batching(batch_size, flush_age),
            SupervisorMsg::FlushWriter(reply) => {
                state.flush_writer().await;
                let _ = reply.send(());
            }
            SupervisorMsg::Shutdown(reply) => {
                state.shutdown(&me).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        if let Some(child) = state.children.remove(&cell.get_id()) {
            if state.stopping {
                return Ok(());
            }
            tracing::error!(?child, reason = %why, "pipeline actor died; restarting");
            state.schedule_restart(&me, child);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.children.clear();
        Ok(())
    }
}

impl SupervisorState {
    async fn restart(&mut self, me: &ActorRef<SupervisorMsg>, child: Child) {
        match child {
            _ if self.stopping => {}
            // A restart planned before the pool shrank below it.
            Child::Parser(i) if i >= self.handles.parsers.len() => {}
            child => {
                if self.spawn_or_retry(me, child).await {
                    if let Child::Fetcher(i) = child {
                        let _ = self.handles.schedulers[i].cast(SchedulerMsg::FetcherRestarted);
                    }
                }
            }
        }
    }

    /// Spawns `child`; if it fails to start, plans another attempt. Returns whether it started.
    async fn spawn_or_retry(&mut self, me: &ActorRef<SupervisorMsg>, child: Child) -> bool {
        match self.spawn(child, me.get_cell()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(?child, error = %e, "pipeline actor failed to start; retrying");
                self.schedule_restart(me, child);
                false
            }
        }
    }

    fn set_provider(&mut self, index: usize, settings: ProviderSettings) {
        let Some(slot) = self.args.providers.get_mut(index) else {
            tracing::warn!(index, "no such provider: settings ignored");
            return;
        };
        *slot = settings.clone();
        // Here, not (only) in the fetcher: a fetcher being restarted would miss the message.
        self.breakers[index].lock().configure(settings.breaker_failures, settings.breaker_cooldown);
        let (interval, jitter) = (settings.interval, settings.jitter);
        let _ = self.handles.fetchers[index].cast(FetcherMsg::SetProvider(settings));
        let _ = self.handles.schedulers[index].cast(SchedulerMsg::SetInterval { interval, jitter });
    }

    async fn set_parsers(&mut self, me: &ActorRef<SupervisorMsg>, n: usize) {
        let before = self.handles.parsers.len();
        for slot in self.handles.parsers.resize(n) {
            if let Some(parser) = slot.get() {
                // Forget it first: its termination is no reason to restart anything.
                self.children.remove(&parser.get_id());
                let _ = parser.get_cell().drain();
            }
        }
        for i in before..n {
            self.spawn_or_retry(me, Child::Parser(i)).await;
        }
        self.args.pipeline.parsers = n;
        tracing::info!(before, parsers = n, "parser pool resized");
    }

    fn set_batching(&mut self, batch_size: usize, flush_age: Duration) {
        self.args.writer.batch_size = batch_size;
        self.args.writer.flush_age = flush_age;
        let _ = self.handles.writer.cast(WriterMsg::SetBatching { batch_size, flush_age });
    }

    async fn flush_writer(&self) {
        if let Some(w) = self.handles.writer.get() {
            let _ = ractor::call!(w, WriterMsg::Flush);
        }
    }

    /// No new fetch, the download in progress cut short and recorded, every complete base plan it
    /// read parsed and written, then the children stopped.
    async fn shutdown(&mut self, me: &ActorRef<SupervisorMsg>) {
        self.stopping = true;
        for s in self.handles.schedulers.iter().filter_map(Slot::get) {
            s.stop(Some("shutdown".into()));
        }
        // A fetch in progress stops reading, hands on what it holds and sends its end to the
        // writer (recorded as `shutdown`); the stop waits for that.
        self.fetches_stop.cancel();
        for f in self.handles.fetchers.iter().filter_map(Slot::get) {
            if f.stop_and_wait(Some("shutdown".into()), Some(FETCH_STOP_WAIT)).await.is_err() {
                tracing::warn!("a fetch did not end within {FETCH_STOP_WAIT:?} of the stop; abandoning it");
                f.kill();
            }
        }
        // Every permit back means every chunk cut so far reached the writer's batch.
        let capacity = self.args.pipeline.queue_chunks;
        let permits = &self.handles.permits;
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while permits.available_permits() < capacity {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("pipeline did not drain within 30 s; stopping anyway");
        }
        self.flush_writer().await;
        me.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10))).await;
    }

    async fn spawn(&mut self, child: Child, sup: ActorCell) -> Result<(), ActorProcessingErr> {
        let h = &self.handles;
        let cell = match child {
            Child::Writer => {
                let (a, _) = Actor::spawn_linked(None, BatchWriter, self.args.writer.clone(), sup).await?;
                h.writer.set(a.clone());
                a.get_cell()
            }
            Child::Parser(i) => {
                let args = ParserArgs { writer: h.writer.clone(), part_plans: self.args.writer.batch_size };
                let (a, _) = Actor::spawn_linked(None, Parser, args, sup).await?;
                h.parsers.slot(i).set(a.clone());
                a.get_cell()
            }
            Child::Fetcher(i) => {
                let args = FetcherArgs {
                    provider: self.args.providers[i].clone(),
                    pipeline: self.args.pipeline.clone(),
                    parsers: h.parsers.clone(),
                    writer: h.writer.clone(),
                    permits: h.permits.clone(),
                    memory: self.memory.clone(),
                    breaker: self.breakers[i].clone(),
                    shutdown: self.fetches_stop.clone(),
                };
                let (a, _) = Actor::spawn_linked(None, Fetcher, args, sup).await?;
                h.fetchers[i].set(a.clone());
                a.get_cell()
            }
            Child::Scheduler(i) => {
                let args = SchedulerArgs {
                    fetcher: h.fetchers[i].clone(),
                    interval: self.args.providers[i].interval,
                    jitter: self.args.providers[i].jitter,
                    once: self.args.once,
                };
                let (a, _) = Actor::spawn_linked(None, Scheduler, args, sup).await?;
                h.schedulers[i].set(a.clone());
                a.get_cell()
            }
        };
        self.children.insert(cell.get_id(), child);
        Ok(())
    }

    fn schedule_restart(&mut self, me: &ActorRef<SupervisorMsg>, child: Child) {
        let entry = self.restarts.entry(child).or_insert((0, Instant::now()));
        if entry.1.elapsed() > Duration::from_secs(60) {
            entry.0 = 0;
        }
        let delay = RESTART_RETRY.delay(entry.0);
        entry.0 += 1;
        crate::metrics::record_retry("restart");
        entry.1 = Instant::now();
        tracing::info!(?child, delay_ms = delay.as_millis() as u64, restarts = entry.0, "restart planned");
        me.send_after(delay, move || SupervisorMsg::Restart(child));
    }
}
