//! `GET /ready`: whether this process can do its role's work now.
//!
//! - `api` (searches are routed on it): the store answers a ping, and the day bounds were read
//!   from it (`loading` until then). A service started before its store reads the bounds as soon as
//!   the store answers (on a probe, as well as in the service's own warm-up loop).
//! - `ingest`: the store answers a ping, and the writer has loaded its bookkeeping (what the store
//!   and the spool hold per plan); until then it holds every plan it is handed.
//! - `both`: what each of the two needs.
//!
//! While the store refuses this process's writes (credentials, space, a missing table, …), the
//! body names the refusal and what to fix (`store_refuses_writes`), in every role that writes.
//! The status stays what the pings make it: searches are still answered (reads may work, and the
//! cache serves), and an ingest process goes on spooling; restarting either would not help.
//!
//! Load balancers and orchestrators probe often, and while the store is slow every caller used to
//! send its own ping: the ping is single-flight and its result reused for [`PING_CACHE`], so any
//! number of callers cause at most one ping per interval (each ping tries each replica at most
//! once). A caller arriving while a ping is in flight gets the previous result at once instead
//! of waiting for it; only the very first callers wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::delivery::Delivery;
use crate::search::Searcher;
use crate::store::SharedStore;

/// How long a ping result is reused.
pub const PING_CACHE: Duration = Duration::from_secs(1);
/// A store slower than this to answer a ping counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the ingestion writer has loaded its bookkeeping (given by the service that runs it).
pub type WriterLoaded = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the role needs besides a store that answers.
enum Needs {
    /// The day directory, read from the store (searches).
    Directory(Arc<Searcher>),
    /// The writer's bookkeeping (ingestion).
    Bookkeeping(WriterLoaded),
    /// Both (a process that searches and ingests).
    Both(Arc<Searcher>, WriterLoaded),
}

pub struct Readiness {
    needs: Needs,
    store: SharedStore,
    /// This process's writes, when it ingests.
    delivery: Option<Delivery>,
    /// The last ping's time and outcome.
    last_ping: Mutex<Option<(Instant, bool)>>,
    /// Held by the one caller pinging; the others read `last_ping`.
    pinging: tokio::sync::Mutex<()>,
}

impl Readiness {
    /// Readiness of a process that answers searches (`api`, `both`).
    pub fn new(searcher: Arc<Searcher>, store: SharedStore, delivery: Option<Delivery>) -> Self {
        Self::with_needs(Needs::Directory(searcher), store, delivery)
    }

    /// Readiness of an `ingest` process.
    pub fn ingest(store: SharedStore, delivery: Delivery, writer_loaded: WriterLoaded) -> Self {
        Self::with_needs(Needs::Bookkeeping(writer_loaded), store, Some(delivery))
    }

    /// For a process that searches and ingests: ready once both could start.
    pub fn both(
        searcher: Arc<Searcher>,
        store: SharedStore,
        delivery: Delivery,
        writer_loaded: WriterLoaded,
    ) -> Self {
        Self::with_needs(Needs::Both(searcher, writer_loaded), store, Some(delivery))
    }

    fn with_needs(needs: Needs, store: SharedStore, delivery: Option<Delivery>) -> Self {
        Self { needs, store, delivery, last_ping: Mutex::new(None), pinging: tokio::sync::Mutex::new(()) }
    }

    /// The body of a `/ready` answer: the status word, the store's refusal of writes if any, and,
    /// when the process talks to several ClickHouse replicas, the state of each (`up`: answered
    /// its last statement or probe). Ready means at least one replica answers.
    pub fn describe(&self, status: &str) -> String {
        let mut body = serde_json::json!({ "status": status });
        if let Some(refusal) = self.delivery.as_ref().and_then(Delivery::refusal) {
            body["store_refuses_writes"] = refusal.into();
        }
        let endpoints = crate::store::clickhouse::endpoint_health();
        if endpoints.len() >= 2 {
            let states: serde_json::Map<String, serde_json::Value> = endpoints
                .into_iter()
                .map(|(url, up)| (url, (if up { "up" } else { "down" }).into()))
                .collect();
            body["store_endpoints"] = states.into();
        }
        body.to_string()
    }

    /// `Ok` when ready, else the status word for the body (`loading`, `store_unreachable`).
    pub async fn check(&self) -> Result<(), &'static str> {
        if !self.store_reachable().await {
            return Err("store_unreachable");
        }
        let loaded = match &self.needs {
            Needs::Directory(searcher) => searcher.warmed(),
            Needs::Bookkeeping(loaded) => loaded(),
            Needs::Both(searcher, loaded) => searcher.warmed() && loaded(),
        };
        if loaded {
            Ok(())
        } else {
            Err("loading")
        }
    }

    /// The last ping's outcome while it is fresh; else one caller pings, and the others get the
    /// previous outcome (or wait for this one when there is none yet).
    async fn store_reachable(&self) -> bool {
        let previous = *self.last_ping.lock();
        if let Some((at, ok)) = previous {
            if at.elapsed() < PING_CACHE {
                return ok;
            }
        }
        let _pinging = match (self.pinging.try_lock(), previous) {
            (Ok(guard), _) => guard,
            (Err(_), Some((_, ok))) => return ok,
            (Err(_), None) => self.pinging.lock().await,
        };
        // Another caller may have pinged while this one waited for the lock.
        if let Some((at, ok)) = *self.last_ping.lock() {
            if at.elapsed() < PING_CACHE {
                return ok;
            }
        }
        let ok = self.ping().await;
        if let (true, Needs::Directory(searcher)) = (ok, &self.needs) {
            if !searcher.warmed() {
                let _ = tokio::time::timeout(PING_TIMEOUT, searcher.load_directory()).await;
            }
        }
        *self.last_ping.lock() = Some((Instant::now(), ok));
        ok
    }

    async fn ping(&self) -> bool {
        crate::metrics::record_readiness_ping();
        match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(store = self.store.name(), error = %e, "store ping failed: not ready");
                false
            }
            Err(_) => {
                tracing::warn!(store = self.store.name(), "store ping timed out: not ready");
                false
            }
        }
    }
}
