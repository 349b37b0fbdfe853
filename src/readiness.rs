//! `GET /ready`: ready only while the store answers a ping, and once the day bounds were read from
//! it. Load balancers probe often, so a ping result is reused for a short while instead of hitting
//! the store on every probe. A service started before its store reads the bounds as soon as the
//! store answers (here, on a probe, as well as in the service's own warm-up loop).
//!
//! While the store refuses this process's writes (credentials, space, a missing table, …), the
//! body names the refusal and what to fix (`store_refuses_writes`): searches are still answered
//! (reads may work, and the cache serves), so the status stays what the reads make it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::delivery::Delivery;
use crate::search::Searcher;
use crate::store::SharedStore;

/// How long a ping result is reused.
const PING_CACHE: Duration = Duration::from_secs(1);
/// A store slower than this to answer a ping counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Readiness {
    searcher: Arc<Searcher>,
    store: SharedStore,
    /// This process's writes, when it ingests.
    delivery: Option<Delivery>,
    last_ping: Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    pub fn new(searcher: Arc<Searcher>, store: SharedStore, delivery: Option<Delivery>) -> Self {
        Self { searcher, store, delivery, last_ping: Mutex::new(None) }
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
        if !self.searcher.warmed() {
            let _ = tokio::time::timeout(PING_TIMEOUT, self.searcher.load_directory()).await;
            if !self.searcher.warmed() {
                return Err("loading");
            }
        }
        Ok(())
    }

    async fn store_reachable(&self) -> bool {
        let cached = *self.last_ping.lock();
        if let Some((at, ok)) = cached {
            if at.elapsed() < PING_CACHE {
                return ok;
            }
        }
        let ok = match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(store = self.store.name(), error = %e, "store ping failed: not ready");
                false
            }
            Err(_) => {
                tracing::warn!(store = self.store.name(), "store ping timed out: not ready");
                false
            }
        };
        *self.last_ping.lock() = Some((Instant::now(), ok));
        ok
    }
}
