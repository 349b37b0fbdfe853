//! ClickHouse store: the system of record and the analytics store.
//!
//! Schema and migrations live in `clickhouse/` at the repository root and are embedded in the binary;
//! [`ClickHouseStore::migrate`] applies the ones not yet recorded in `schema_migrations`.
//!
//! Talks HTTP through the `clickhouse` crate, kept to what ClickHouse 18.16 (Debian's package) and a
//! current server both understand: no row validation (18.16 lacks `RowBinaryWithNamesAndTypes`),
//! client-side `?` binds, `wait_end_of_query=1` so a failing query never looks like a 200.
//!
//! `plans` is a `ReplacingMergeTree(version)` partitioned by event month and ordered by event day:
//! [`Store::plans_by_day`] reads `FINAL` over the requested days only. Days and instants are kept
//! exactly as integers (`event_day`, `*_us`: every date from year 1 to 10000 fits), because `Date`
//! and `DateTime` stop at 1970..2105; those columns stay for ad-hoc SQL, clamped to that span. Each batch is one `INSERT` per
//! table, retried whole on transient errors; zones go first, so a visible plan row always has its
//! zones.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike, Utc};
use clickhouse::sql::Identifier;
use clickhouse::{Client, Row};
use rand::Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{day_number, day_of_number, DayChange, DaySize, Store, StoreError, StoreResult};
use crate::domain::{DecimalText, EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};

/// Embedded migrations, applied in order; a name is never reused or edited once released.
const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../clickhouse/001_init.sql")),
    ("002_exact_days", include_str!("../../clickhouse/002_exact_days.sql")),
    ("003_day_changes", include_str!("../../clickhouse/003_day_changes.sql")),
];

/// How far back a change-feed read looks before its marker: a write becomes visible on the server a
/// poll reads from after it was stamped (a slow insert, a replica catching up), so the window
/// covers late arrivals; the reader skips the days it already saw with the same marker.
const CHANGE_OVERLAP_US: i64 = 10_000_000;

/// The columns of `plans`, in table order.
const PLAN_COLUMNS: &str = "provider, base_plan_id, plan_id, id, title, online, ever_online, \
    organizer_company_id, start_local, end_local, start_utc, end_utc, event_date, sell_from, sell_to, \
    sold_out, min_price, max_price, zone_count, version, hash, superseded, written_at, event_day, \
    start_us, end_us, start_local_us, end_local_us, sell_from_us, sell_to_us, written_us";

/// What `Date` and `DateTime` hold on every server version: their columns keep values clamped to
/// this span, the exact values live in the integer columns (`clickhouse/002_exact_days.sql`).
const CLAMP_FIRST_DAY: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
const CLAMP_LAST_DAY: NaiveDate = NaiveDate::from_ymd_opt(2105, 12, 31).expect("valid");

/// Attempts per batch inside the store; the batch writer retries further on `Unavailable`.
const WRITE_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Upper bound for one statement, from request to last row (the crate sets none by default).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The sticky-flag lookup lists every key of a batch in its text: allow more than the default 256 KiB.
const LOOKUP_MAX_QUERY_SIZE: &str = "67108864";

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

    /// Applies the embedded migrations not yet recorded in `schema_migrations`, in order, and
    /// returns the names it applied (empty when the schema is current).
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime('UTC')) \
             ENGINE = MergeTree ORDER BY name",
        )
        .await?;
        let done: Vec<String> = timed(
            QUERY_TIMEOUT,
            self.client.query("SELECT DISTINCT name FROM schema_migrations").fetch_all(),
        )
        .await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            if done.iter().any(|d| d == name) {
                continue;
            }
            for statement in split_statements(sql) {
                self.execute(&statement).await.map_err(|e| match e {
                    StoreError::Permanent(m) => StoreError::Permanent(format!("migration {name}: {m}")),
                    other => other,
                })?;
            }
            let row = MigrationRow { name: (*name).to_string(), applied_at: Utc::now() };
            self.insert_rows("schema_migrations", std::slice::from_ref(&row)).await?;
            tracing::info!(migration = name, database = %self.database, "applied clickhouse migration");
            applied.push((*name).to_string());
        }
        Ok(applied)
    }

    async fn execute(&self, sql: &str) -> StoreResult<()> {
        timed(QUERY_TIMEOUT, self.client.query(sql).execute()).await
    }

    /// One `INSERT` with all rows; nothing is sent when `rows` is empty.
    async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> StoreResult<()>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite + Send + Sync,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let work = async {
            let mut insert = self.client.insert::<T>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        timed(QUERY_TIMEOUT, work).await
    }

    /// One `INSERT` with the zones of every plan of the batch. The rows borrow from the plans and
    /// are serialized straight into the request body: no row is built on the heap.
    async fn insert_zones(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        if plans.iter().all(|p| p.plan.zones.is_empty()) {
            return Ok(());
        }
        let work = async {
            let mut insert = self.client.insert::<ZoneRow<'_>>("zones").await?;
            for p in plans {
                let key = &p.plan.key;
                for (idx, z) in p.plan.zones.iter().enumerate() {
                    let row = ZoneRow {
                        provider: &key.provider,
                        base_plan_id: key.base_plan_id,
                        plan_id: key.plan_id,
                        version: p.version,
                        event_date: clamp_day(p.event_date),
                        idx: idx as u32,
                        zone_id: z.zone_id,
                        name: &z.name,
                        capacity: z.capacity,
                        price: &z.price,
                        numbered: z.numbered.into(),
                    };
                    insert.write(&row).await?;
                }
            }
            insert.end().await
        };
        timed(QUERY_TIMEOUT, work).await
    }

    /// One attempt at a batch: the sticky-flag lookup, then one `INSERT` into `zones` and one into
    /// `plans` (zones first: a visible plan row always has its zones).
    async fn write_batch(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        let sticky = self.ever_online_among(plans).await?;
        let written_at = Utc::now();
        let mut plan_batch = Vec::with_capacity(plans.len());
        for p in plans {
            let ever_online = p.ever_online || sticky.contains(&p.plan.key.id());
            plan_rows(p, ever_online, written_at, &mut plan_batch);
        }
        self.insert_zones(plans).await?;
        self.insert_rows("plans", &plan_batch).await?;
        let days = plans.iter().flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date));
        self.record_changes(days, written_at).await
    }

    /// Stamps `days` in the change feed, after the rows they announce were written.
    async fn record_changes(
        &self,
        days: impl Iterator<Item = NaiveDate>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let days: BTreeSet<i32> = days.map(day_int).collect();
        let rows: Vec<DayChangeRow> =
            days.into_iter().map(|event_day| DayChangeRow { event_day, written_us: micros(at) }).collect();
        self.insert_rows("day_changes", &rows).await
    }

    /// Ids of the batch's not-yet-ever-online plans that a stored row marks ever-online, so the new
    /// rows keep the sticky flag. Every write carries the flag forward, so the key's latest row is
    /// enough: it lives on the plan's event day, or on its previous day when it moved. Nothing is
    /// read when every plan of the batch is already ever-online (the usual case).
    async fn ever_online_among(&self, plans: &[StoredPlan]) -> StoreResult<HashSet<Uuid>> {
        let mut ids = BTreeSet::new();
        let mut days = BTreeSet::new();
        for p in plans.iter().filter(|p| !p.ever_online) {
            ids.insert(p.plan.key.id());
            days.insert(p.event_date);
            days.extend(p.previous_event_date);
        }
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let days: Vec<String> = days.iter().map(|d| day_number(*d).to_string()).collect();
        let ids_sql: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        // Day numbers and UUIDs are formatted by us, never user text: safe to inline.
        let sql = format!(
            "SELECT DISTINCT id FROM plans \
             WHERE event_day IN ({}) AND ever_online = 1 AND id IN ({})",
            days.join(", "),
            ids_sql.join(", ")
        );
        let rows: Vec<UuidRow> = timed(
            QUERY_TIMEOUT,
            self.client.query(&sql).with_setting("max_query_size", LOOKUP_MAX_QUERY_SIZE).fetch_all(),
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}

/// Splits a migration file at `;` line ends, dropping comment-only lines.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_string();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            current.clear();
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Unavailable(format!("clickhouse did not answer within {limit:?}"))),
    }
}

/// Server error codes worth retrying: overload, timeouts, network trouble between replicas,
/// read-only replicas and "too many parts" back-pressure.
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// Maps a client error to transient (`Unavailable`) or permanent.
fn classify(error: clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    let message = error.to_string();
    match &error {
        E::Network(_) | E::TimedOut | E::Other(_) => StoreError::Unavailable(message),
        E::BadResponse(body) => match server_code(body) {
            Some(code) if TRANSIENT_CODES.contains(&code) => StoreError::Unavailable(message),
            Some(_) => StoreError::Permanent(message),
            // No ClickHouse exception: a proxy's or the server's bare status (502, 503, ...).
            None if body.starts_with('4') && !body.starts_with("429") => StoreError::Permanent(message),
            None => StoreError::Unavailable(message),
        },
        _ => StoreError::Permanent(message),
    }
}

/// The `N` of a ClickHouse exception text (`Code: 60, e.displayText() = ...` on 18.16,
/// `Code: 60. DB::Exception: ...` on current servers).
fn server_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code:")? + "Code:".len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Runs `op` up to [`WRITE_ATTEMPTS`] times while it fails transiently, each time with a fresh
/// statement (the crate's insert cannot be reused after an error), waiting [`backoff`] between.
async fn with_attempts<F, Fut>(what: &str, mut op: F) -> StoreResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<()>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt + 1 < WRITE_ATTEMPTS => {
                let wait = backoff(attempt);
                tracing::warn!(
                    error = %e,
                    attempt = attempt + 1,
                    wait_ms = wait.as_millis() as u64,
                    "{what} failed, retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.min(8)).min(BACKOFF_CAP);
    // Full jitter in [exp/2, exp].
    let half = exp / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct MigrationRow {
    name: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    applied_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct PlanRow {
    provider: String,
    base_plan_id: u64,
    plan_id: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    title: String,
    online: u8,
    ever_online: u8,
    organizer_company_id: Option<u64>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    start_local: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    end_local: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    start_utc: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    end_utc: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::date")]
    event_date: NaiveDate,
    #[serde(with = "clickhouse::serde::chrono::datetime::option")]
    sell_from: Option<DateTime<Utc>>,
    #[serde(with = "clickhouse::serde::chrono::datetime::option")]
    sell_to: Option<DateTime<Utc>>,
    sold_out: u8,
    min_price: Option<String>,
    max_price: Option<String>,
    zone_count: u32,
    version: u64,
    hash: u64,
    superseded: u8,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    written_at: DateTime<Utc>,
    event_day: i32,
    start_us: i64,
    end_us: i64,
    start_local_us: i64,
    end_local_us: i64,
    sell_from_us: Option<i64>,
    sell_to_us: Option<i64>,
    written_us: i64,
}

/// A `zones` row borrowed from its plan (see [`ClickHouseStore::insert_zones`]).
#[derive(Debug, Row, Serialize)]
struct ZoneRow<'a> {
    provider: &'a str,
    base_plan_id: u64,
    plan_id: u64,
    version: u64,
    #[serde(with = "clickhouse::serde::chrono::date")]
    event_date: NaiveDate,
    idx: u32,
    zone_id: u64,
    name: &'a str,
    capacity: u32,
    /// Exact decimal text, written without a heap allocation.
    #[serde(serialize_with = "price_text")]
    price: &'a Decimal,
    numbered: u8,
}

/// Serializes a price as its decimal text ("20.00", "7.5"), formatted on the stack.
fn price_text<S: serde::Serializer>(price: &&Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(DecimalText::new(price).as_str())
}

#[derive(Debug, Row, Deserialize)]
struct EventRowCh {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    title: String,
    start_local_us: i64,
    end_local_us: i64,
    start_us: i64,
    end_us: i64,
    min_price: Option<String>,
    max_price: Option<String>,
}

#[derive(Debug, Row, Deserialize)]
struct UuidRow {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
}

#[derive(Debug, Row, Deserialize)]
struct PlanStateRow {
    provider: String,
    base_plan_id: u64,
    plan_id: u64,
    hash: u64,
    event_day: i32,
    version: u64,
    ever_online: u8,
}

#[derive(Debug, Row, Deserialize)]
struct DayBoundsRow {
    count: u64,
    first: i32,
    last: i32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct DayChangeRow {
    event_day: i32,
    written_us: i64,
}

#[derive(Debug, Row, Deserialize)]
struct DaySizeRow {
    day: i32,
    plans: u64,
    text_bytes: u64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct FetchRow {
    provider: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    started_at: DateTime<Utc>,
    started_at_ns: u32,
    duration_ms: u64,
    http_status: Option<u16>,
    bytes: u64,
    plans_seen: u64,
    plans_written: u64,
    plans_unchanged: u64,
    plans_skipped: u64,
    error: Option<String>,
}

/// Prices are stored as exact decimal text: `Decimal` keeps the feed's scale in its `Display`.
fn decode_price(text: Option<String>, id: Uuid) -> StoreResult<Option<Decimal>> {
    text.map(|t| {
        t.parse::<Decimal>().map_err(|e| {
            StoreError::Permanent(format!("stored price {t:?} of plan {id} is not a decimal: {e}"))
        })
    })
    .transpose()
}

fn wall(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// `day` inside what `Date` holds (see [`CLAMP_FIRST_DAY`]).
fn clamp_day(day: NaiveDate) -> NaiveDate {
    day.clamp(CLAMP_FIRST_DAY, CLAMP_LAST_DAY)
}

/// `t` inside what `DateTime` holds, to the second (see [`CLAMP_FIRST_DAY`]).
fn clamp_instant(t: DateTime<Utc>) -> DateTime<Utc> {
    let first = CLAMP_FIRST_DAY.and_hms_opt(0, 0, 0).expect("valid").and_utc();
    let last = CLAMP_LAST_DAY.and_hms_opt(23, 59, 59).expect("valid").and_utc();
    t.clamp(first, last)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn instant_of(us: i64, id: Uuid) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Permanent(format!("stored instant {us} of plan {id} is out of range")))
}

fn day_of(n: i32) -> StoreResult<NaiveDate> {
    day_of_number(n.into())
        .ok_or_else(|| StoreError::Permanent(format!("stored event day {n} is out of range")))
}

/// The plan's day as `event_day` holds it; every day a plan can have fits (year 1 to 10000).
fn day_int(day: NaiveDate) -> i32 {
    i32::try_from(day_number(day)).unwrap_or(if day_number(day) < 0 { i32::MIN } else { i32::MAX })
}

/// The plan row (and the tombstone of its previous day, if it moved). `ever_online` is the sticky
/// flag as the store knows it, which may be set although this observation's is not.
fn plan_rows(p: &StoredPlan, ever_online: bool, written_at: DateTime<Utc>, out: &mut Vec<PlanRow>) {
    let plan = &p.plan;
    let row = PlanRow {
        provider: plan.key.provider.to_string(),
        base_plan_id: plan.key.base_plan_id,
        plan_id: plan.key.plan_id,
        id: plan.key.id(),
        title: plan.title.clone(),
        online: plan.online.into(),
        ever_online: ever_online.into(),
        organizer_company_id: plan.organizer_company_id,
        start_local: clamp_instant(wall(plan.start)),
        end_local: clamp_instant(wall(plan.end)),
        start_utc: clamp_instant(p.start_utc),
        end_utc: clamp_instant(p.end_utc),
        event_date: clamp_day(p.event_date),
        sell_from: plan.sell_from.map(|t| clamp_instant(wall(t))),
        sell_to: plan.sell_to.map(|t| clamp_instant(wall(t))),
        sold_out: plan.sold_out.into(),
        min_price: plan.min_price().map(|d| d.to_string()),
        max_price: plan.max_price().map(|d| d.to_string()),
        zone_count: u32::try_from(plan.zones.len()).unwrap_or(u32::MAX),
        version: p.version,
        hash: p.hash,
        superseded: 0,
        written_at: clamp_instant(written_at),
        event_day: day_int(p.event_date),
        start_us: micros(p.start_utc),
        end_us: micros(p.end_utc),
        start_local_us: micros(wall(plan.start)),
        end_local_us: micros(wall(plan.end)),
        sell_from_us: plan.sell_from.map(|t| micros(wall(t))),
        sell_to_us: plan.sell_to.map(|t| micros(wall(t))),
        written_us: micros(written_at),
    };
    if let Some(previous) = p.previous_event_date.filter(|d| *d != p.event_date) {
        out.push(PlanRow {
            event_date: clamp_day(previous),
            event_day: day_int(previous),
            superseded: 1,
            ..row.clone()
        });
    }
    out.push(row);
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
        if keys.is_empty() {
            return Ok(());
        }
        let days: BTreeSet<String> = keys.iter().map(|(_, d)| day_number(*d).to_string()).collect();
        let ids: BTreeSet<String> = keys.iter().map(|(k, _)| format!("'{}'", k.id())).collect();
        let now = Utc::now();
        // Day numbers, instants and UUIDs are formatted by us, never user text: safe to inline.
        let sql = format!(
            "INSERT INTO plans ({PLAN_COLUMNS}) \
             SELECT provider, base_plan_id, plan_id, id, title, online, toUInt8(1), organizer_company_id, \
                    start_local, end_local, start_utc, end_utc, event_date, sell_from, sell_to, sold_out, \
                    min_price, max_price, zone_count, version, hash, superseded, toDateTime({}), event_day, \
                    start_us, end_us, start_local_us, end_local_us, sell_from_us, sell_to_us, toInt64({}) \
             FROM plans FINAL \
             WHERE event_day IN ({}) AND id IN ({}) AND superseded = 0 AND ever_online = 0",
            clamp_instant(now).timestamp(),
            micros(now),
            days.iter().cloned().collect::<Vec<_>>().join(", "),
            ids.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let what = format!("clickhouse ever-online marks of {} plans", keys.len());
        with_attempts(&what, || async {
            let run = self.client.query(&sql).with_setting("max_query_size", LOOKUP_MAX_QUERY_SIZE).execute();
            timed(QUERY_TIMEOUT, run).await?;
            self.record_changes(keys.iter().map(|(_, d)| *d), now).await
        })
        .await
    }

    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        let rows: Vec<PlanStateRow> = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT provider, base_plan_id, plan_id, argMax(hash, version) AS last_hash, \
                            argMax(event_day, version) AS last_event_day, \
                            max(version) AS last_version, max(ever_online) AS any_online \
                     FROM plans WHERE superseded = 0 \
                     GROUP BY provider, base_plan_id, plan_id",
                )
                .fetch_all(),
        )
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    PlanKey::new(r.provider, r.base_plan_id, r.plan_id),
                    PlanState {
                        hash: r.hash,
                        event_date: day_of(r.event_day)?,
                        version: r.version,
                        ever_online: r.ever_online != 0,
                    },
                ))
            })
            .collect()
    }

    /// Reads `event_day` over exactly the partitions of the days (`event_date` is their clamped
    /// partition key, so far days share the first or last partition).
    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        if from > to {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRowCh> = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT id, title, start_local_us, end_local_us, start_us, end_us, \
                            min_price, max_price \
                     FROM plans FINAL \
                     WHERE event_day BETWEEN ? AND ? \
                       AND event_date BETWEEN toDate(?) AND toDate(?) \
                       AND ever_online = 1 AND superseded = 0 \
                     ORDER BY start_us, id",
                )
                .bind(day_int(from))
                .bind(day_int(to))
                .bind(clamp_day(from).to_string())
                .bind(clamp_day(to).to_string())
                .fetch_all(),
        )
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        for r in rows {
            events.push(EventRow {
                min_price: decode_price(r.min_price, r.id)?,
                max_price: decode_price(r.max_price, r.id)?,
                start_local: instant_of(r.start_local_us, r.id)?.naive_utc(),
                end_local: instant_of(r.end_local_us, r.id)?.naive_utc(),
                start_utc: instant_of(r.start_us, r.id)?,
                end_utc: instant_of(r.end_us, r.id)?,
                id: r.id,
                title: r.title,
            });
        }
        // ClickHouse orders UUIDs by their two 64-bit halves, not bytewise: settle ties like Rust does.
        events.sort_by(|a, b| a.start_utc.cmp(&b.start_utc).then(a.id.cmp(&b.id)));
        Ok(events)
    }

    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        let row: DayBoundsRow = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT count() AS count, min(event_day) AS first, max(event_day) AS last \
                     FROM plans FINAL WHERE ever_online = 1 AND superseded = 0",
                )
                .fetch_one(),
        )
        .await?;
        if row.count == 0 {
            return Ok(None);
        }
        Ok(Some((day_of(row.first)?, day_of(row.last)?)))
    }

    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        let rows: Vec<DaySizeRow> = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT event_day AS day, count() AS plans, sum(length(title)) AS text_bytes \
                     FROM plans FINAL WHERE ever_online = 1 AND superseded = 0 \
                     GROUP BY event_day ORDER BY event_day",
                )
                .fetch_all(),
        )
        .await?;
        rows.into_iter()
            .map(|r| Ok(DaySize { day: day_of(r.day)?, plans: r.plans, text_bytes: r.text_bytes }))
            .collect()
    }

    async fn change_marker(&self) -> StoreResult<i64> {
        timed(QUERY_TIMEOUT, self.client.query("SELECT max(written_us) FROM day_changes").fetch_one()).await
    }

    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        let rows: Vec<DayChangeRow> = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT event_day, max(written_us) AS last_written FROM day_changes \
                     WHERE written_us > ? GROUP BY event_day ORDER BY last_written",
                )
                .bind(since.saturating_sub(CHANGE_OVERLAP_US))
                .fetch_all(),
        )
        .await?;
        rows.into_iter().map(|r| Ok(DayChange { day: day_of(r.event_day)?, marker: r.written_us })).collect()
    }

    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        let row = FetchRow {
            provider: fetch.provider.clone(),
            started_at: fetch.started_at.with_nanosecond(0).unwrap_or(fetch.started_at),
            started_at_ns: fetch.started_at.nanosecond(),
            duration_ms: fetch.duration_ms,
            http_status: fetch.http_status,
            bytes: fetch.bytes,
            plans_seen: fetch.plans_seen,
            plans_written: fetch.plans_written,
            plans_unchanged: fetch.plans_unchanged,
            plans_skipped: fetch.plans_skipped,
            error: fetch.error.clone(),
        };
        self.insert_rows("fetches", std::slice::from_ref(&row)).await
    }

    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<FetchRow> = timed(
            QUERY_TIMEOUT,
            self.client
                .query(
                    "SELECT provider, started_at, started_at_ns, duration_ms, http_status, bytes, \
                            plans_seen, plans_written, plans_unchanged, plans_skipped, error \
                     FROM fetches ORDER BY started_at DESC, started_at_ns DESC LIMIT ?",
                )
                .bind(limit as u64)
                .fetch_all(),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FetchRecord {
                provider: r.provider,
                started_at: r.started_at.with_nanosecond(r.started_at_ns).unwrap_or(r.started_at),
                duration_ms: r.duration_ms,
                http_status: r.http_status,
                bytes: r.bytes,
                plans_seen: r.plans_seen,
                plans_written: r.plans_written,
                plans_unchanged: r.plans_unchanged,
                plans_skipped: r.plans_skipped,
                error: r.error,
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let statements = split_statements(MIGRATIONS[0].1);
        assert_eq!(statements.len(), 3);
        assert!(statements.iter().all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS")));
        assert!(statements.iter().all(|s| !s.ends_with(';')));
    }

    #[test]
    fn prices_keep_their_scale() {
        let id = Uuid::nil();
        for text in ["20.00", "7.5", "100", "0.01", "123456789.123456789", "999999999999.99"] {
            let stored = text.parse::<Decimal>().unwrap().to_string();
            assert_eq!(stored, text);
            assert_eq!(decode_price(Some(stored), id).unwrap().unwrap().to_string(), text);
        }
        assert_eq!(decode_price(None, id).unwrap(), None);
        assert!(matches!(decode_price(Some("abc".into()), id), Err(StoreError::Permanent(_))));
    }

    #[test]
    fn server_codes_decide_retry() {
        let bad = |s: &str| classify(clickhouse::error::Error::BadResponse(s.into()));
        let old = "Code: 60, e.displayText() = DB::Exception: Table x.plans doesn't exist., e.what() = DB::Exception";
        assert!(matches!(bad(old), StoreError::Permanent(_)));
        let new = "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)";
        assert!(bad(new).is_transient());
        assert!(bad("503 Service Unavailable").is_transient());
        assert!(matches!(bad("400 Bad Request"), StoreError::Permanent(_)));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP);
            assert!(d >= BACKOFF_BASE / 2);
        }
    }
}
