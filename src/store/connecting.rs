//! A store that connects in the background: the service starts at once whether its store answers
//! or not, and every call fails fast with [`StoreError::Unavailable`] until the store is reached
//! (and migrated). Connection attempts repeat with capped backoff, so the service is ready within
//! about a second of the store appearing.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use parking_lot::Mutex;

use super::{DayChange, DaySize, SharedStore, Store, StoreError, StoreResult};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};

/// Delay before the second attempt; it doubles up to [`CONNECT_BACKOFF_CAP`].
const CONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts: bounds how late the service notices its store.
const CONNECT_BACKOFF_CAP: Duration = Duration::from_secs(1);

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
            let mut delay = CONNECT_BACKOFF_FIRST;
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                match connect().await {
                    Ok(inner) => {
                        tracing::info!(store = me.name, location = %me.location, attempts, "store connected");
                        let _ = me.inner.set(inner);
                        return;
                    }
                    Err(e) => {
                        // The first failure and then one in 30, not one line a second. A permanent
                        // error (a migration the server refuses) needs an operator: say so louder.
                        if attempts % 30 == 1 && e.is_transient() {
                            tracing::warn!(store = me.name, location = %me.location, error = %e, attempts, "store not reachable yet; retrying");
                        } else if attempts % 30 == 1 {
                            tracing::error!(store = me.name, location = %me.location, error = %e, attempts, "store refuses to open; retrying");
                        }
                        *me.last_error.lock() = e.to_string();
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(CONNECT_BACKOFF_CAP);
            }
        });
        store
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

    /// The store appears later (its folder is blocked by a file at first): calls fail fast as
    /// unavailable meanwhile, and the store is used as soon as it opens.
    #[tokio::test]
    async fn fails_fast_until_the_store_opens_then_delegates() {
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
        let started = std::time::Instant::now();
        let err = store.ping().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(err.is_transient() && err.to_string().contains("not connected yet"), "{err}");
        assert_eq!(store.location(), path.display().to_string());

        std::fs::remove_file(&blocker).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.connected() {
            assert!(std::time::Instant::now() < deadline, "not connected 10 s after the store could open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.ping().await.unwrap();
        assert_eq!(store.day_bounds().await.unwrap(), None);
    }
}
