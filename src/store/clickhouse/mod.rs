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
//! Files by job: [`schema`] (migrations), [`copies`] (the table copies older migrations left, checked
//! before they are dropped), [`rows`] (row encoding), [`writes`] and [`reads`] (the statements),
//! [`classify`] (the statement timeout, what each failure means).

mod classify;
mod copies;
mod endpoints;
mod reads;
mod rows;
mod schema;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use clickhouse::query::Query;
use clickhouse::sql::Identifier;
use clickhouse::{Client, RowOwned, RowRead};

use super::{DayChange, DaySize, ReadSize, Store, StoreError, StoreResult};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};
use classify::timed;
use endpoints::Endpoints;

/// How far back a change-feed read looks before its marker: a write becomes visible on the server a
/// poll reads from after it was stamped (a slow insert, a replica catching up), so the window
/// covers late arrivals; the reader skips the days it already saw with the same marker.
const CHANGE_OVERLAP_US: i64 = 10_000_000;

const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a TCP connection to a replica: a host that is down (no answer to the SYN) costs
/// this much before the next replica is tried, not the statement's whole `query_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle keep-alive connections are closed after this, before the server's own 3 s.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::config::ClickHouseSettings;
pub use endpoints::endpoint_health;

/// The ClickHouse implementation of [`Store`]. Cheap to clone (the replicas' clients share pools).
#[derive(Clone)]
pub struct ClickHouseStore {
    endpoints: Arc<Endpoints>,
    database: String,
    /// Cluster mode: the cluster the migrations run `ON CLUSTER` on.
    cluster: Option<String>,
    /// Longest wait for one statement on one replica.
    query_timeout: Duration,
    /// Replicas and database, for [`Store::location`].
    location: String,
    /// `keep_superseded_tables`: migration `006_drop_copies` waits ([`copies`]).
    keep_copies: bool,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore").field("database", &self.database).finish_non_exhaustive()
    }
}

/// A client of one replica. Its HTTP client is the crate's default plus a connect timeout
/// ([`CONNECT_TIMEOUT`]) and `TCP_NODELAY` (small statements are not held back by Nagle's
/// algorithm); connections are pooled and kept alive, so the run queries of searches reuse them
/// instead of opening one each.
fn base_client(settings: &ClickHouseSettings, url: &str) -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    let mut client = Client::with_http_client(http)
        .with_url(url)
        .with_user(settings.user.clone())
        .with_validation(false)
        .with_setting("wait_end_of_query", "1");
    if let Some(password) = &settings.password {
        client = client.with_password(password.clone());
    }
    if settings.insert_quorum > 1 {
        // Only INSERTs read these. The server's own quorum wait (10 min by default) is bounded
        // like any statement, so a write to a cluster that lost a replica fails and is spooled.
        client = client
            .with_setting("insert_quorum", settings.insert_quorum.to_string())
            .with_setting("insert_quorum_timeout", settings.query_timeout.as_millis().to_string());
    }
    client
}

impl ClickHouseStore {
    /// Connects and creates the database when missing (on every replica in cluster mode). Does not
    /// migrate: call [`Self::migrate`].
    pub async fn connect(settings: ClickHouseSettings) -> StoreResult<Self> {
        settings.validate().map_err(StoreError::Permanent)?;
        let urls = settings.endpoints();
        let mut last = None;
        for url in &urls {
            match create_database(&base_client(&settings, url), &settings).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let location = match &settings.cluster {
            Some(cluster) => format!("cluster {cluster}: {}/{}", urls.join(","), settings.database),
            None => format!("{}/{}", urls.join(","), settings.database),
        };
        let clients = urls
            .iter()
            .map(|u| (u.clone(), base_client(&settings, u).with_database(settings.database.clone())))
            .collect();
        Ok(Self {
            endpoints: Endpoints::new(clients),
            database: settings.database,
            cluster: settings.cluster,
            query_timeout: settings.query_timeout,
            location,
            keep_copies: settings.keep_superseded_tables,
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs one statement on the first replica that answers.
    async fn execute(&self, sql: &str) -> StoreResult<()> {
        let limit = self.query_timeout;
        self.endpoints
            .on_any("statement", |c| async move { timed(limit, c.query(sql).execute()).await })
            .await
    }

    /// Runs the query `build` makes on the first replica that answers; every row.
    async fn fetch_all<T>(&self, what: &str, build: impl Fn(&Client) -> Query) -> StoreResult<Vec<T>>
    where
        T: RowOwned + RowRead,
    {
        let limit = self.query_timeout;
        self.endpoints.on_any(what, |c| timed(limit, build(&c).fetch_all())).await
    }

    /// Like [`Self::fetch_all`], for a query of exactly one row.
    async fn fetch_one<T>(&self, what: &str, build: impl Fn(&Client) -> Query) -> StoreResult<T>
    where
        T: RowOwned + RowRead,
    {
        let limit = self.query_timeout;
        self.endpoints.on_any(what, |c| timed(limit, build(&c).fetch_one())).await
    }
}

/// `CREATE DATABASE IF NOT EXISTS`, `ON CLUSTER` in cluster mode. A database that exists is left
/// alone without a statement: an `ON CLUSTER` statement waits for every replica, even a down one.
async fn create_database(root: &Client, settings: &ClickHouseSettings) -> StoreResult<()> {
    if settings.cluster.is_none() {
        let query = root.query("CREATE DATABASE IF NOT EXISTS ?").bind(Identifier(&settings.database));
        return timed(settings.query_timeout, query.execute()).await;
    }
    let exists: u64 = timed(
        settings.query_timeout,
        root.query("SELECT count() FROM system.databases WHERE name = ?")
            .bind(&settings.database)
            .fetch_one(),
    )
    .await?;
    if exists > 0 {
        return Ok(());
    }
    let query = root
        .query("CREATE DATABASE IF NOT EXISTS ? ON CLUSTER ?")
        .bind(Identifier(&settings.database))
        .bind(Identifier(settings.cluster.as_deref().unwrap_or_default()));
    timed(settings.query_timeout, query.execute()).await
}

#[async_trait]
impl Store for ClickHouseStore {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    /// Goes to the first replica that answers (one pass over the replicas); the delivery layer
    /// retries the call. A repeated block lands twice at the same version and collapses.
    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        if plans.is_empty() {
            return Ok(());
        }
        let what = format!("clickhouse write of {} plans", plans.len());
        let written_at = Utc::now();
        self.endpoints.on_any(&what, |c| async move { self.write_batch(&c, plans, written_at).await }).await
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
        self.read_plans_by_day(from, to, None).await
    }

    /// As `plans_by_day`, at the priority of the search's size rather than of the days' span.
    async fn plans_by_day_sized(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        size: ReadSize,
    ) -> StoreResult<Vec<EventRow>> {
        self.read_plans_by_day(from, to, Some(size)).await
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

    /// Answers when any replica answers (the background probe records every replica's state).
    async fn ping(&self) -> StoreResult<()> {
        self.endpoints.ping_any(PING_TIMEOUT).await
    }
}
