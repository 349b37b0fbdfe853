//! Storage behind one trait. Every implementation passes the same conformance suite
//! (`tests/common/conformance.rs`, run by `tests/store_<name>.rs`).
//!
//! - [`sqlite::SqliteStore`]: the embedded default, one local file, no server needed.
//! - [`clickhouse::ClickHouseStore`]: the system of record and analytics store (schema and
//!   migrations in `clickhouse/`).
//!
//! A store keeps, per plan key, the latest written version of the plan (offline observations
//! included) and the sticky ever-online flag; search reads only the requested event days.

pub mod clickhouse;
pub mod connecting;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: connection refused, timeout, server overloaded.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Retrying the same request will fail again: bad data, schema mismatch.
    #[error("store rejected the request: {0}")]
    Permanent(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and metrics (`embedded`, `clickhouse`).
    fn name(&self) -> &'static str;

    /// Which store this is (a file path, a server URL and database): names the spool that feeds it,
    /// so a spool is never replayed into another store.
    fn location(&self) -> String {
        self.name().to_string()
    }

    /// Writes a batch of plan versions. Each plan replaces the stored one with the same key when its
    /// `version` is not older; a plan with `previous_event_date` stops matching on that day. Atomic
    /// per batch where the backend allows it; always idempotent, so a failed batch can be retried.
    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()>;

    /// [`Store::write_plans`] for a batch the caller shares (the writer keeps it for retries and
    /// its bookkeeping): a store that must move the rows to another thread overrides this to skip
    /// copying them.
    async fn write_plans_shared(&self, plans: Arc<Vec<StoredPlan>>) -> StoreResult<()> {
        self.write_plans(&plans).await
    }

    /// Marks the latest stored version of each key ever-online, keeping its values: an older
    /// observation that arrived after a newer one was on sale online, so the plan was. Each key
    /// comes with the event day of its latest stored version. Unknown keys are ignored; idempotent.
    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()>;

    /// The writer's bookkeeping for every stored plan (hash, event day, version, ever-online).
    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>>;

    /// Every ever-online plan whose event day is in `[from, to]` (inclusive), latest version only,
    /// ordered by start instant then id.
    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>>;

    /// First and last event day holding an ever-online plan, for open-ended searches.
    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>>;

    /// Appends one fetch attempt to the fetch log.
    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()>;

    /// The most recent fetch attempts, newest first.
    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>>;

    /// Cheap liveness probe.
    async fn ping(&self) -> StoreResult<()>;
}

pub type SharedStore = Arc<dyn Store>;
