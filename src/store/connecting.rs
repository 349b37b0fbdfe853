//! A store that connects in the background: the service starts at once whether its store answers
//! or not, and every call fails fast with [`StoreError::Unavailable`] until the store is reached
//! (and migrated). Connection attempts repeat on the shared retry loop (`src/retry.rs`, counted in
//! `planfeed_retries_total{operation="store_connect"}`) with capped backoff, so the service is
//! ready within about a second of the store appearing.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use parking_lot::Mutex;

use super::{DayChange, DaySize, ReadSize, SharedStore, Store, StoreError, StoreResult};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};
use crate::retry::{retry, RetryPolicy};

/// 100 ms before the second attempt, doubling up to 1 s: the cap bounds how late the service
/// notices its store. No jitter: one process connects to one store.
const CONNECT_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));

pub struct ConnectingStore {
    name: &'static str,
    location: String,
    inner: OnceLock<SharedStore>,
    /// Why the last attempt failed (for the errors callers get meanwhile).
    last_error: Mutex<String>,
}

impl ConnectingStore {
    /// Starts connecting with `connect` (which opens, and migrates if asked, the real store) and
    /// returns at once.
    pub fn spawn<F, Fut>(name: &'static str, location: String, connect: F) -> Arc<Self>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<SharedStore>> + Send,
    {
        let store = Arc::new(Self {
            name,
            location,
            inner: OnceLock::new(),
            last_error: Mutex::new("not tried yet".into()),
        });
        let me = store.clone();
        tokio::spawn(async move {
            let retryable = |_: &StoreError| true;
            let mut failures = 0;
            let log = |e: &StoreError, retries: u32, _: Duration| {
                failures = retries;
                me.failed(e, retries)
            };
            // Never gives up: the service keeps answering (from caches, with 503s) meanwhile.
            if let Ok(inner) = retry(&CONNECT_RETRY, u32::MAX, "store_connect", connect, retryable, log).await
            {
                tracing::info!(store = me.name, location = %me.location, attempts = failures + 1, "store connected");
                let _ = me.inner.set(inner);
            }
        });
        store
    }

    /// Keeps why attempt `retries` (from 1: the first failure) failed, and logs the first failure
    /// and then one in 30, not one line a second. A permanent error (a migration the server
    /// refuses) needs an operator: said louder.
    fn failed(&self, e: &StoreError, retries: u32) {
        if retries % 30 == 1 && e.is_transient() {
            tracing::warn!(store = self.name, location = %self.location, error = %e, attempts = retries, "store not reachable yet; retrying");
        } else if retries % 30 == 1 {
            tracing::error!(store = self.name, location = %self.location, error = %e, attempts = retries, "store refuses to open; retrying");
        }
        *self.last_error.lock() = e.to_string();
    }

    /// True once the store was reached.
    pub fn connected(&self) -> bool {
        self.inner.get().is_some()
    }

    fn get(&self) -> StoreResult<&SharedStore> {
        self.inner.get().ok_or_else(|| {
            StoreError::Unavailable(format!("{} not connected yet: {}", self.name, self.last_error.lock()))
        })
    }
}

#[async_trait]
impl Store for ConnectingStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        self.get()?.write_plans(plans).await
    }

    async fn write_plans_shared(&self, plans: Arc<Vec<StoredPlan>>) -> StoreResult<()> {
        self.get()?.write_plans_shared(plans).await
    }

    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
        self.get()?.mark_ever_online(keys).await
    }

    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        self.get()?.load_plan_states().await
    }

    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        self.get()?.plans_by_day(from, to).await
    }

    async fn plans_by_day_sized(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        size: ReadSize,
    ) -> StoreResult<Vec<EventRow>> {
        self.get()?.plans_by_day_sized(from, to, size).await
    }

    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        self.get()?.day_bounds().await
    }

    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        self.get()?.day_directory().await
    }

    async fn change_marker(&self) -> StoreResult<i64> {
        self.get()?.change_marker().await
    }

    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        self.get()?.days_changed_since(since).await
    }

    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        self.get()?.record_fetch(fetch).await
    }

    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        self.get()?.recent_fetches(limit).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.get()?.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// `planfeed_retries_total{operation="store_connect"}` as the exporter renders it.
    fn connect_retries() -> u64 {
        let text = crate::metrics::handle().render();
        let line = "planfeed_retries_total{operation=\"store_connect\"} ";
        text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits (10 s at most) until `done` holds, checking every 20 ms.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "10 s without {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The store appears later (its folder is blocked by a file at first): calls fail fast as
    /// unavailable meanwhile, naming why, each failed attempt is counted as a retry, and the store
    /// is used as soon as it opens.
    #[tokio::test]
    async fn fails_fast_until_the_store_opens_then_delegates() {
        let retries_before = connect_retries();
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("db");
        std::fs::write(&blocker, b"not a folder").unwrap();
        let path = blocker.join("store.db");
        let store = ConnectingStore::spawn("embedded", path.display().to_string(), {
            let path = path.clone();
            move || {
                let path = path.clone();
                async move { Ok(Arc::new(SqliteStore::open(&path)?) as SharedStore) }
            }
        });
        assert_eq!(store.location(), path.display().to_string());
        wait_until("a failed attempt counted", || connect_retries() > retries_before).await;
        let started = std::time::Instant::now();
        let err = store.ping().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().starts_with("store unavailable: embedded not connected yet: "), "{err}");
        assert!(err.to_string().contains(&format!("creating folder {}", blocker.display())), "{err}");

        std::fs::remove_file(&blocker).unwrap();
        wait_until("a connection once the store could open", || store.connected()).await;
        store.ping().await.unwrap();
        assert_eq!(store.day_bounds().await.unwrap(), None);
    }
}
