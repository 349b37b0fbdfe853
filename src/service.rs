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
use crate::http::rate_limit::Limiter;
use crate::http::server::ConnectionLimits;
use crate::http::{self, ApiState};
use crate::metrics::MetricsSource;
use crate::readiness::Readiness;
use crate::reload::Reloader;
use crate::search::Searcher;
use crate::store::clickhouse::ClickHouseStore;
use crate::store::connecting::ConnectingStore;
use crate::store::sqlite::SqliteStore;
use crate::store::SharedStore;

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

/// How long `ingest --once` waits for its store to answer before giving up.
const INGEST_ONCE_STORE_WAIT: Duration = Duration::from_secs(30);

/// Delay between two warm-up attempts while the store does not answer.
const WARM_RETRY: Duration = Duration::from_millis(250);

/// A running planfeed: what `serve` starts and what the tests drive.
pub struct Service {
    /// Where the API listens, when this process runs the API role.
    pub addr: Option<SocketAddr>,
    pub store: SharedStore,
    pub searcher: Arc<Searcher>,
    pub counters: Arc<WriterCounters>,
    pipeline: Option<(ActorRef<SupervisorMsg>, PipelineHandles)>,
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    reloader: Arc<Reloader>,
}

impl Service {
    /// Starts with the store from `settings`, listening on `settings.server.listen`.
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        let store = open_store(&settings).await?;
        let listener = if settings.role.runs_api() {
            let addr = settings.server.listen;
            Some(TcpListener::bind(addr).await.map_err(|source| ServiceError::Bind { addr, source })?)
        } else {
            None
        };
        Self::start_with(settings, store, listener).await
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
        crate::metrics::handle();
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
        let limiter = listener.as_ref().map(|_| Limiter::new(&settings.server.rate_limit));
        // Read by the accept loop, changed by reloads.
        let connections = ConnectionLimits::new(&settings.server.connections);
        let (addr, server) = match (listener, limiter.clone()) {
            (Some(listener), Some(limiter)) => {
                let mut parts: Vec<Arc<dyn crate::metrics::Collect>> = vec![searcher.clone()];
                if pipeline.is_some() {
                    parts.push(counters.clone());
                }
                let metrics = MetricsSource {
                    parts,
                    permits: pipeline
                        .as_ref()
                        .map(|(_, h)| (h.permits.clone(), settings.pipeline.queue_chunks)),
                };
                let readiness = Arc::new(Readiness::new(searcher.clone(), store.clone(), delivery.clone()));
                let cache_control = http::cache_control(settings.http.cache_max_age);
                let state =
                    ApiState { searcher: searcher.clone(), limiter, metrics, readiness, cache_control };
                serve_api(listener, state, connections.clone(), shutdown_rx.clone())
            }
            _ => (None, None),
        };
        if settings.role == Role::Api {
            follow_other_writers(&settings, &searcher, shutdown_rx.clone());
        }
        let supervisor = pipeline.as_ref().map(|(sup, _)| sup.clone());
        let reloader = Arc::new(Reloader::new(settings, limiter, searcher.clone(), supervisor));
        reloader.set_connection_limits(connections);
        warm(searcher.clone());
        Ok(Self { addr, store, searcher, counters, pipeline, shutdown_tx, server, reloader })
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
    crate::cpu::pace::set_share(pl.ingest_share);
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

/// Serves the API on `listener` until `shutdown` turns true; the rate limiter forgets idle
/// clients every minute meanwhile.
fn serve_api(
    listener: TcpListener,
    state: ApiState,
    connections: Arc<ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
) -> (Option<SocketAddr>, Option<JoinHandle<()>>) {
    let addr = listener.local_addr().ok();
    // Ingestion in this process rests while searches are answered (`pipeline.ingest_share`).
    crate::cpu::pace::watch_searches(crate::metrics::searches_answered);
    let limiter = state.limiter.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            limiter.shrink();
        }
    });
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tracing::info!(addr = ?addr, "api listening");
    (addr, Some(tokio::spawn(http::run(listener, state, connections, stop))))
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

/// `planfeed ingest --once`: runs the pipeline (no API) for one fetch of `url` (or the configured
/// provider): the scheduler asks for that one fetch, and the run ends when the writer announces
/// its record (every plan written, spooled or dropped). Returns that record.
pub async fn ingest_once(
    mut settings: Settings,
    url: Option<String>,
    provider: Option<String>,
    progress: bool,
) -> Result<FetchRecord, ServiceError> {
    let mut p = settings.effective_providers().remove(0);
    if let Some(url) = url {
        p.url = url;
    }
    if let Some(name) = provider {
        p.name = name;
    }
    p.validate().map_err(ServiceError::Invalid)?;
    settings.provider = p;
    settings.providers.clear();
    settings.role = crate::config::Role::Ingest;
    let store = open_store(&settings).await?;
    // A one-shot run has nothing to serve meanwhile: wait a while for the store, then say why not.
    let deadline = tokio::time::Instant::now() + INGEST_ONCE_STORE_WAIT;
    while let Err(e) = store.ping().await {
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::Store(e));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Service::launch(settings, store, None, Some(tx)).await?;
    let bar = progress.then(|| Progress::new(service.counters.clone()));
    let record = loop {
        tokio::select! {
            record = rx.recv() => break record,
            _ = tokio::time::sleep(Duration::from_millis(200)), if bar.is_some() => {
                bar.iter().for_each(Progress::update);
            }
        }
    };
    service.shutdown().await;
    let record =
        record.ok_or_else(|| ServiceError::Pipeline("the pipeline stopped before the fetch ended".into()))?;
    if let Some(bar) = bar {
        bar.finish(&record);
    }
    Ok(record)
}

/// The spinner `ingest --once` shows on a terminal.
struct Progress {
    bar: indicatif::ProgressBar,
    counters: Arc<WriterCounters>,
}

impl Progress {
    fn new(counters: Arc<WriterCounters>) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar, counters }
    }

    fn update(&self) {
        let c = &self.counters;
        self.bar.set_message(format!(
            "{} plans read, {} written, {} unchanged, {} skipped",
            c.plans_seen.load(Ordering::Relaxed),
            c.plans_written.load(Ordering::Relaxed),
            c.plans_unchanged.load(Ordering::Relaxed),
            c.plans_skipped.load(Ordering::Relaxed)
        ));
    }

    fn finish(self, record: &FetchRecord) {
        self.bar.finish_with_message(format!(
            "{} plans read, {} written, {} unchanged, {} skipped, {} bytes in {} ms",
            record.plans_seen,
            record.plans_written,
            record.plans_unchanged,
            record.plans_skipped,
            record.bytes,
            record.duration_ms
        ));
    }
}
