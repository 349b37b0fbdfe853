//! Wires the store, the search cache, the ingestion pipeline and the HTTP server together for
//! `planfeed serve`, according to the configured role.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::actors::supervisor::PipelineHandles;
use crate::actors::{BatchWriterArgs, PipelineArgs, SchedulerMsg, Supervisor, SupervisorMsg};
use crate::config::{Backend, Role, Settings};
use crate::delivery::{Delivery, Spool, SpoolError, WriterCounters};
use crate::domain::FetchRecord;
use crate::http::probes::ProbeLimiter;
use crate::http::rate_limit::{Limiter, SharedRateLimiter};
use crate::http::server::ConnectionLimits;
use crate::http::{self, ApiState, Endpoints};
use crate::metrics::MetricsSource;
use crate::readiness::{Readiness, WriterLoaded};
use crate::reload::Reloader;
use crate::search::Searcher;
use crate::store::clickhouse::ClickHouseStore;
use crate::store::connecting::ConnectingStore;
use crate::store::sqlite::SqliteStore;
use crate::store::SharedStore;

mod once;

pub use once::ingest_once;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the ingestion pipeline: {0}")]
    Pipeline(String),
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Opens the configured store. ClickHouse is connected (and migrated) in the background: the
/// service starts whether it answers or not, and uses it from the moment it does.
pub async fn open_store(settings: &Settings) -> Result<SharedStore, ServiceError> {
    match settings.store.backend {
        Backend::Embedded => Ok(Arc::new(SqliteStore::open(&settings.store.path)?)),
        Backend::Clickhouse => {
            let cfg = settings.store.clickhouse.clone();
            let ch = cfg.settings();
            let location = format!("{}/{}", ch.url.trim_end_matches('/'), ch.database);
            let store = ConnectingStore::spawn("clickhouse", location, move || {
                let (ch, migrate) = (ch.clone(), cfg.migrate_on_start);
                async move {
                    let store = ClickHouseStore::connect(ch).await?;
                    if migrate {
                        let applied = store.migrate().await?;
                        if !applied.is_empty() {
                            tracing::info!(?applied, "clickhouse migrations applied");
                        }
                    }
                    Ok(Arc::new(store) as SharedStore)
                }
            });
            Ok(store)
        }
    }
}

/// The store the writer uses. With ClickHouse in the `both` role, a client of its own: a pooled
/// HTTP connection is driven by a task on the runtime that opened it, so a search reusing one the
/// writer opened would have its answer read by a lowered ingestion thread (ADR 12). It connects
/// once the searches' store answers (connected and migrated), so only that one migrates.
fn writer_store(settings: &Settings, store: &SharedStore) -> SharedStore {
    if settings.store.backend != Backend::Clickhouse || !settings.role.runs_api() {
        return store.clone();
    }
    let ch = settings.store.clickhouse.settings();
    let searches = store.clone();
    ConnectingStore::spawn("clickhouse", store.location(), move || {
        let (ch, searches) = (ch.clone(), searches.clone());
        async move {
            searches.ping().await?;
            Ok(Arc::new(ClickHouseStore::connect(ch).await?) as SharedStore)
        }
    })
}

/// Opens the spool that feeds `store` (`[spool]`), reading what an earlier run left in it.
pub fn open_spool(settings: &Settings, store: &SharedStore) -> Result<Arc<Spool>, ServiceError> {
    let path = Spool::file_for(&settings.spool.path, store.name(), &store.location());
    Ok(Arc::new(Spool::open(path, settings.spool.max_bytes)?))
}

/// Delay between two warm-up attempts while the store does not answer.
const WARM_RETRY: Duration = Duration::from_millis(250);

/// A running planfeed: what `serve` starts and what the tests drive.
pub struct Service {
    /// Where the HTTP endpoints listen (every role; none for `ingest --once`).
    pub addr: Option<SocketAddr>,
    pub store: SharedStore,
    pub searcher: Arc<Searcher>,
    pub counters: Arc<WriterCounters>,
    /// The writes of the ingestion role (with its spool).
    delivery: Option<Delivery>,
    pipeline: Option<(ActorRef<SupervisorMsg>, PipelineHandles)>,
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    reloader: Arc<Reloader>,
}

impl Service {
    /// Starts with the store from `settings`, listening on `settings.server.listen` (every role
    /// serves `/health`, `/ready` and `/metrics`; `api` and `both` also `/search`).
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        let store = open_store(&settings).await?;
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ServiceError::Bind { addr, source })?;
        Self::start_with(settings, store, Some(listener)).await
    }

    /// Starts on an already opened store and bound listener (tests bind `127.0.0.1:0`).
    pub async fn start_with(
        settings: Settings,
        store: SharedStore,
        listener: Option<TcpListener>,
    ) -> Result<Self, ServiceError> {
        Self::launch(settings, store, listener, None).await
    }

    /// `recorded`: a one-shot run (`ingest --once`), announcing each recorded fetch there.
    async fn launch(
        settings: Settings,
        store: SharedStore,
        listener: Option<TcpListener>,
        recorded: Option<mpsc::UnboundedSender<FetchRecord>>,
    ) -> Result<Self, ServiceError> {
        // Install the recorder before anything counts: counts made before it are lost.
        register_metrics(&settings);
        let searcher = Arc::new(Searcher::new(store.clone(), &settings.search));
        let counters = Arc::new(WriterCounters::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let delivery = match settings.role.runs_ingest() {
            true => Some(start_delivery(&settings, &store, &counters, &searcher)?),
            false => None,
        };
        let pipeline = match &delivery {
            Some(delivery) => {
                let writer = BatchWriterArgs {
                    delivery: delivery.clone(),
                    batch_size: settings.pipeline.batch_size,
                    flush_age: settings.pipeline.flush_age,
                    recorded,
                };
                Some(spawn_pipeline(&settings, writer).await?)
            }
            None => None,
        };
        let parts = Parts { store: &store, searcher: &searcher, counters: &counters, delivery: &delivery };
        let http = listener.map(|l| start_http(&settings, l, &parts, pipeline.as_ref(), shutdown_rx.clone()));
        if settings.role == Role::Api {
            follow_other_writers(&settings, &searcher, shutdown_rx.clone());
        }
        let supervisor = pipeline.as_ref().map(|(sup, _)| sup.clone());
        let limiter = http.as_ref().and_then(|h| h.limiter.clone());
        let reloader = Arc::new(Reloader::new(settings, limiter, searcher.clone(), supervisor));
        let (addr, server) = match http {
            Some(h) => {
                reloader.set_connection_limits(h.connections);
                reloader.set_probe_limits(h.probes);
                (h.addr, Some(h.server))
            }
            None => (None, None),
        };
        warm(searcher.clone());
        Ok(Self { addr, store, searcher, counters, delivery, pipeline, shutdown_tx, server, reloader })
    }

    /// Applies configuration changes to this service (see [`crate::reload`]).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Writes whatever the writer holds now; returns when the store has it.
    pub async fn flush(&self) {
        if let Some((sup, _)) = &self.pipeline {
            let _ = ractor::call!(sup, SupervisorMsg::FlushWriter);
        }
    }

    /// The running pipeline's actors (none in the `api` role).
    pub fn pipeline(&self) -> Option<&PipelineHandles> {
        self.pipeline.as_ref().map(|(_, h)| h)
    }

    /// Parser actors in the pool now (0 without ingestion); follows `pipeline.parsers` on reload.
    pub fn parsers(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |(_, h)| h.parsers.len())
    }

    /// Starts a fetch now unless one is running.
    pub fn fetch_now(&self) {
        if let Some((_, h)) = &self.pipeline {
            for s in &h.schedulers {
                let _ = s.cast(SchedulerMsg::FetchNow);
            }
        }
    }

    /// Graceful stop: no new fetches, the writer flushes what it holds, in-flight requests finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some((sup, handles)) = self.pipeline.take() {
            drop(handles);
            let _ = ractor::call!(sup, SupervisorMsg::Shutdown);
            let _ = sup.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await;
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }

    /// [`Service::shutdown`] within `deadline` in all. Past it the pipeline is stopped at once,
    /// without its flush, and what is left is logged: what the spool keeps for the next start
    /// (and where), and what was still on its way to the store (the next fetch offers those
    /// plans again). Returns whether the stop completed.
    pub async fn shutdown_within(self, deadline: Duration) -> bool {
        let left = Leftover {
            spool: self.delivery.as_ref().and_then(|d| d.spool().cloned()),
            permits: self.pipeline.as_ref().map(|(_, h)| h.permits.clone()),
            queue_chunks: self.reloader.current().pipeline.queue_chunks,
            counters: self.counters.clone(),
            refusal: self.delivery.as_ref().and_then(Delivery::refusal),
        };
        match tokio::time::timeout(deadline, self.shutdown()).await {
            Ok(()) => true,
            Err(_) => {
                left.log(deadline);
                false
            }
        }
    }
}

/// What a stop cut short by its deadline leaves behind, for the log line that says so.
struct Leftover {
    spool: Option<Arc<Spool>>,
    permits: Option<Arc<tokio::sync::Semaphore>>,
    queue_chunks: usize,
    counters: Arc<WriterCounters>,
    refusal: Option<String>,
}

impl Leftover {
    fn log(&self, deadline: Duration) {
        let in_flight = self
            .permits
            .as_ref()
            .map_or(0, |p| self.queue_chunks - p.available_permits().min(self.queue_chunks));
        let c = &self.counters;
        let spool = self.spool.as_deref();
        tracing::error!(
            deadline_ms = deadline.as_millis() as u64,
            chunks_in_flight = in_flight,
            plans_seen = c.plans_seen.load(Ordering::Relaxed),
            plans_written = c.plans_written.load(Ordering::Relaxed),
            plans_spooled = c.plans_spooled.load(Ordering::Relaxed),
            spool_entries = spool.map_or(0, Spool::entries),
            spool_plans = spool.map_or(0, Spool::plans),
            spool_bytes = spool.map_or(0, Spool::bytes),
            spool_path = %spool.map_or_else(String::new, |s| s.path().display().to_string()),
            store_refuses_writes = self.refusal.as_deref().unwrap_or(""),
            "shutdown deadline passed: exiting with work left; the spool keeps its batches for the next \
             start, plans not yet in the store or the spool come again with the next fetch"
        );
    }
}

/// A service dropped without [`Service::shutdown`] stops its pipeline at once (no flush): the
/// pipeline lives on the process-wide ingestion runtime, which outlives the caller's runtime, so
/// without this the actors would go on fetching after their caller is gone.
impl Drop for Service {
    fn drop(&mut self) {
        if let Some((sup, _)) = self.pipeline.take() {
            sup.stop_children(Some("service dropped".into()));
            sup.stop(Some("service dropped".into()));
        }
    }
}

/// The delivery layer of the ingestion role: the writer's store, the spool beside it, and the
/// search cache following what it writes.
fn start_delivery(
    settings: &Settings,
    store: &SharedStore,
    counters: &Arc<WriterCounters>,
    searcher: &Arc<Searcher>,
) -> Result<Delivery, ServiceError> {
    for provider in settings.effective_providers() {
        crate::metrics::start_provider(&provider.name);
    }
    let spool = open_spool(settings, store)?;
    let writes = writer_store(settings, store);
    let delivery = Delivery::new(writes, Some(spool), counters.clone(), settings.spool.write_timeout);
    follow_writes(delivery.events(), searcher.clone());
    Ok(delivery)
}

/// An api replica learns the days another process (the ingest) wrote from the store's change feed,
/// announced as the delivery layer announces its own.
fn follow_other_writers(settings: &Settings, searcher: &Arc<Searcher>, shutdown: watch::Receiver<bool>) {
    let written = crate::delivery::Events::default();
    follow_writes(&written, searcher.clone());
    searcher.spawn_change_feed(settings.search.change_poll, shutdown, written);
}

/// The search cache follows the days written (announced by the delivery layer, or by the change
/// feed's poller in an `api` process): each announcement is handled on
/// this (the searches') runtime, so the store reads that reload changed days run at the searches'
/// priority, and the writer goes on once searches see the write (ADR 12).
fn follow_writes(events: &crate::delivery::Events, searcher: Arc<Searcher>) {
    let mut written = events.subscribe();
    tokio::spawn(async move {
        while let Some(event) = written.recv().await {
            searcher.invalidate(&event.days).await;
            event.handled();
        }
    });
}

/// Spawns the supervisor, which spawns the pipeline (one scheduler and fetcher per provider).
async fn spawn_pipeline(
    settings: &Settings,
    writer: BatchWriterArgs,
) -> Result<(ActorRef<SupervisorMsg>, PipelineHandles), ServiceError> {
    let providers = settings.effective_providers();
    let pl = &settings.pipeline;
    crate::cpu::configure(pl.cpu_pool());
    crate::cpu::pace::set_min_share(pl.min_ingest_share);
    let handles = PipelineHandles::new(providers.len(), pl.parsers, pl.queue_chunks);
    let once = writer.recorded.is_some();
    let args = PipelineArgs { providers, pipeline: pl.clone(), writer, once };
    // Spawned from a task of the ingestion runtime, the supervisor and every actor it spawns (and
    // what they spawn) run there, off the threads that answer searches (ADR 12).
    let (sup, _) = crate::cpu::ingest_runtime()
        .spawn(Actor::spawn(None, Supervisor, (args, handles.clone())))
        .await
        .map_err(|e| ServiceError::Pipeline(e.to_string()))?
        .map_err(|e| ServiceError::Pipeline(e.to_string()))?;
    Ok((sup, handles))
}

/// Registers the metrics of the roles `settings` runs, at zero, so each is exported from the start.
fn register_metrics(settings: &Settings) {
    crate::metrics::register_common(settings.store.backend == Backend::Clickhouse);
    if settings.role.runs_api() {
        crate::metrics::register_api();
    }
    if settings.role.runs_ingest() {
        crate::metrics::register_ingest();
    }
}

/// What the HTTP endpoints report on.
struct Parts<'a> {
    store: &'a SharedStore,
    searcher: &'a Arc<Searcher>,
    counters: &'a Arc<WriterCounters>,
    delivery: &'a Option<Delivery>,
}

/// The running HTTP server and the limits a reload changes.
struct Http {
    addr: Option<SocketAddr>,
    server: JoinHandle<()>,
    /// `/search`'s limiter, where searches are answered.
    limiter: Option<SharedRateLimiter>,
    probes: Arc<ProbeLimiter>,
    connections: Arc<ConnectionLimits>,
}

/// Serves the role's endpoints on `listener` until `shutdown` turns true: `/health`, `/ready`,
/// `/metrics` in every role, `/search` where the API runs; the limiters forget idle clients every
/// minute meanwhile.
fn start_http(
    settings: &Settings,
    listener: TcpListener,
    parts: &Parts<'_>,
    pipeline: Option<&(ActorRef<SupervisorMsg>, PipelineHandles)>,
    mut shutdown: watch::Receiver<bool>,
) -> Http {
    let search = settings.role.runs_api();
    let mut sources: Vec<Arc<dyn crate::metrics::Collect>> = Vec::new();
    if search {
        sources.push(parts.searcher.clone());
    }
    if pipeline.is_some() {
        sources.push(parts.counters.clone());
    }
    let permits = pipeline.map(|(_, h)| (h.permits.clone(), settings.pipeline.queue_chunks));
    let metrics = MetricsSource { parts: sources, permits };
    let readiness = Arc::new(readiness(search, parts, pipeline));
    let limiter = Limiter::new(&settings.server.rate_limit);
    let cache_control = http::cache_control(settings.http.cache_max_age);
    let state = ApiState {
        searcher: parts.searcher.clone(),
        limiter: limiter.clone(),
        metrics,
        readiness,
        cache_control,
    };
    let probes = ProbeLimiter::new(&settings.server.probe_limit);
    let connections = ConnectionLimits::new(&settings.server.connections);
    connections.set_ipv6_prefix(settings.server.rate_limit.ipv6_prefix);
    let addr = listener.local_addr().ok();
    let (pruned, pruned_probes) = (limiter.clone(), probes.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            pruned.shrink();
            pruned_probes.shrink();
        }
    });
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let endpoints = Endpoints { search, probes: probes.clone() };
    tracing::info!(addr = ?addr, role = ?settings.role, search, "api listening");
    let server = tokio::spawn(http::run_with(listener, state, endpoints, connections.clone(), stop));
    Http { addr, server, limiter: search.then_some(limiter), probes, connections }
}

/// What `/ready` checks: the searches' needs where they are answered, else the writer's.
fn readiness(
    search: bool,
    parts: &Parts<'_>,
    pipeline: Option<&(ActorRef<SupervisorMsg>, PipelineHandles)>,
) -> Readiness {
    // Set by the writer once its bookkeeping is loaded (at once, or in the background when the
    // store could not be read at start).
    let counters = parts.counters.clone();
    let loaded: WriterLoaded = Arc::new(move || counters.states_loaded.load(Ordering::Acquire));
    match (search, parts.delivery, pipeline) {
        (false, Some(delivery), Some(_)) => Readiness::ingest(parts.store.clone(), delivery.clone(), loaded),
        (true, Some(delivery), Some(_)) => {
            Readiness::both(parts.searcher.clone(), parts.store.clone(), delivery.clone(), loaded)
        }
        _ => Readiness::new(parts.searcher.clone(), parts.store.clone(), parts.delivery.clone()),
    }
}

/// Warms the day directory so /ready turns true without waiting for the first search; a store not
/// reachable yet fails this at once, so it is tried again until it answers.
fn warm(searcher: Arc<Searcher>) {
    tokio::spawn(async move {
        while searcher.load_directory().await.is_err() && !searcher.warmed() {
            tokio::time::sleep(WARM_RETRY).await;
        }
    });
}
