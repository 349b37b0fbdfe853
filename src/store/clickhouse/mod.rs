//! ClickHouse store: the system of record and the analytics store.
//!
//! Schema and migrations live in `clickhouse/` at the repository root and are embedded in the binary
//! ([`schema`]); [`ClickHouseStore::migrate`] applies the ones not yet recorded in `schema_migrations`.
//!
//! Talks HTTP through the `clickhouse` crate, kept to what ClickHouse 18.16 (Debian's package) and a
//! current server both understand: no row validation (18.16 lacks `RowBinaryWithNamesAndTypes`),
//! client-side `?` binds, `wait_end_of_query=1` so a failing query never looks like a 200.
//!
//! `plans` is a `ReplacingMergeTree(version)` partitioned by event month and ordered by event day:
//! [`Store::plans_by_day`] reads `FINAL` over the requested days only.
//!
//! Files by job: [`schema`] (migrations), [`rows`] (row encoding), [`writes`] and [`reads`] (the
//! statements), [`retry`] (timeouts, error classes, the retry loop).

mod reads;
mod retry;
mod rows;
mod schema;
mod writes;

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use clickhouse::sql::Identifier;
use clickhouse::Client;

use super::{DayChange, DaySize, Store, StoreError, StoreResult};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};
use retry::{timed, with_attempts};

/// How far back a change-feed read looks before its marker: a write becomes visible on the server a
/// poll reads from after it was stamped (a slow insert, a replica catching up), so the window
/// covers late arrivals; the reader skips the days it already saw with the same marker.
const CHANGE_OVERLAP_US: i64 = 10_000_000;

/// Upper bound for one statement, from request to last row (the crate sets none by default).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub use crate::config::ClickHouseSettings;

/// The ClickHouse implementation of [`Store`]. Cheap to clone (the client shares its pool).
#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
    database: String,
    /// URL and database, for [`Store::location`].
    location: String,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore").field("database", &self.database).finish_non_exhaustive()
    }
}

fn base_client(settings: &ClickHouseSettings) -> Client {
    let mut client = Client::default()
        .with_url(settings.url.trim_end_matches('/'))
        .with_user(settings.user.clone())
        .with_validation(false)
        .with_setting("wait_end_of_query", "1");
    if let Some(password) = &settings.password {
        client = client.with_password(password.clone());
    }
    client
}

impl ClickHouseStore {
    /// Connects and creates the database when missing. Does not migrate: call [`Self::migrate`].
    pub async fn connect(settings: ClickHouseSettings) -> StoreResult<Self> {
        settings.validate().map_err(StoreError::Permanent)?;
        let root = base_client(&settings);
        timed(
            QUERY_TIMEOUT,
            root.query("CREATE DATABASE IF NOT EXISTS ?").bind(Identifier(&settings.database)).execute(),
        )
        .await?;
        let location = format!("{}/{}", settings.url.trim_end_matches('/'), settings.database);
        Ok(Self {
            client: root.with_database(settings.database.clone()),
            database: settings.database,
            location,
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    async fn execute(&self, sql: &str) -> StoreResult<()> {
        timed(QUERY_TIMEOUT, self.client.query(sql).execute()).await
    }
}

#[async_trait]
impl Store for ClickHouseStore {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        if plans.is_empty() {
            return Ok(());
        }
        let what = format!("clickhouse write of {} plans", plans.len());
        with_attempts(&what, || self.write_batch(plans)).await
    }

    /// Re-inserts each key's latest row with the flag set: the same version, so the replacing
    /// engine keeps the row inserted last, i.e. this one.
    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
        self.mark_ever_online_rows(keys).await
    }

    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        self.read_plan_states().await
    }

    /// Reads `event_day` over exactly the partitions of the days (`event_date` is their clamped
    /// partition key, so far days share the first or last partition).
    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        self.read_plans_by_day(from, to).await
    }

    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        self.read_day_bounds().await
    }

    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        self.read_day_directory().await
    }

    async fn change_marker(&self) -> StoreResult<i64> {
        self.read_change_marker().await
    }

    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        self.read_days_changed_since(since).await
    }

    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        self.insert_fetch(fetch).await
    }

    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        self.read_recent_fetches(limit).await
    }

    async fn ping(&self) -> StoreResult<()> {
        let one: u8 = timed(PING_TIMEOUT, self.client.query("SELECT toUInt8(1)").fetch_one()).await?;
        if one == 1 {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("clickhouse ping answered {one}")))
        }
    }
}
