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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying soon: connection refused, timeout, server overloaded.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses the request for a reason of its own that an operator must fix (credentials,
    /// permissions, space, a missing table, read-only, a quota, a proxy in the way, a damaged file):
    /// nothing about the data. Waited out, never answered by dropping what was sent.
    #[error("store refuses the request ({}): {message}", cause.label())]
    Refused { cause: Refusal, message: String },
    /// Retrying the same request will fail again: bad data, schema mismatch. Whether it is the
    /// data's fault is proven by the delivery layer (a write that succeeds beside it), not assumed.
    #[error("store rejected the request: {0}")]
    Permanent(String),
}

impl StoreError {
    /// Worth another attempt later: the store is down or refusing, not the request at fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Refused { .. })
    }

    /// The store's refusal, if this is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            StoreError::Refused { cause, .. } => Some(*cause),
            _ => None,
        }
    }

    pub fn refused(cause: Refusal, message: impl Into<String>) -> Self {
        StoreError::Refused { cause, message: message.into() }
    }
}

/// Why a store refuses every write: what the operator must fix. Its label names it in logs, in
/// `/ready` and in `planfeed_store_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Unknown user, wrong or missing password.
    Credentials,
    /// The user may not write there (grants, IP restrictions).
    Permission,
    /// No space left on the store's disk.
    Space,
    /// A table or database planfeed writes to does not exist.
    MissingTable,
    /// The store (or a table, or the user's profile) is read-only.
    ReadOnly,
    /// A quota of the store is used up.
    Quota,
    /// Something between planfeed and the store answers instead of it (an HTTP 401/403/404).
    Proxy,
    /// The store's files cannot be read or written (I/O error, a damaged file).
    Io,
    /// Every plan of a batch was rejected and no write proved that the store takes any: the
    /// store's own fault until a write succeeds.
    Unproven,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Credentials => "credentials",
            Refusal::Permission => "permission",
            Refusal::Space => "space",
            Refusal::MissingTable => "missing_table",
            Refusal::ReadOnly => "read_only",
            Refusal::Quota => "quota",
            Refusal::Proxy => "proxy",
            Refusal::Io => "io",
            Refusal::Unproven => "unproven",
        }
    }

    /// What the operator must fix, in a sentence naming the store (`ClickHouse`, `the embedded store`).
    pub fn remedy(self, store: &str) -> String {
        match self {
            Refusal::Credentials => {
                format!("{store} refuses planfeed's credentials: check the user and password")
            }
            Refusal::Permission => {
                format!("{store} denies planfeed's user the right to write: check its grants")
            }
            Refusal::Space => format!("{store} has no space left on its disk: free some"),
            Refusal::MissingTable => {
                format!(
                    "{store} lacks a table or database planfeed writes to: run the migrations or restore it"
                )
            }
            Refusal::ReadOnly => format!("{store} is read-only: make it writable"),
            Refusal::Quota => {
                format!("{store} refuses writes over a quota: raise it or wait for it to reset")
            }
            Refusal::Proxy => {
                format!("something other than {store} answers at its address: check the URL and proxies")
            }
            Refusal::Io => {
                format!("{store}'s files cannot be read or written: check its disk and permissions")
            }
            Refusal::Unproven => {
                format!("{store} rejects every plan it is sent and has not taken one yet: see the error")
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Days since 1970-01-01 (negative before): how both stores keep event days, so every valid day
/// (0001-01-01 ..= 9999-12-31, and the UTC day after it a provider zone may reach) sorts and
/// compares as a number. Text dates sorted `+10000-01-01` above every real day.
pub fn day_number(day: NaiveDate) -> i64 {
    (day - NaiveDate::default()).num_days()
}

/// The day [`day_number`] gave `n`; `None` outside what `chrono` holds.
pub fn day_of_number(n: i64) -> Option<NaiveDate> {
    NaiveDate::default().checked_add_signed(chrono::Duration::try_days(n)?)
}

/// One entry of the change feed: a day and the marker of its latest write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayChange {
    pub day: NaiveDate,
    pub marker: i64,
}

/// One non-empty event day of the store: what the search's day directory keeps in memory.
/// How much a search reads in all (not the span of its days: a year past the end of the data holds
/// a few days): stores with query priorities serve short reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSize {
    /// At most the search's short-read budget (`search.short_read_bytes`).
    Short,
    /// More: a wide range or the open one.
    Wide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaySize {
    pub day: NaiveDate,
    /// Ever-online plans whose latest version lies on the day.
    pub plans: u64,
    /// Bytes of their titles (the variable part of their JSON), to size reads and answers.
    pub text_bytes: u64,
}

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

    /// [`Store::plans_by_day`] for a search, which says how much it reads in all: a store with
    /// query priorities serves a [`ReadSize::Short`] read ahead of wide ones, whatever the span of
    /// its days. Stores without priorities read it as `plans_by_day` does.
    async fn plans_by_day_sized(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        _size: ReadSize,
    ) -> StoreResult<Vec<EventRow>> {
        self.plans_by_day(from, to).await
    }

    /// First and last event day holding an ever-online plan, for open-ended searches.
    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>>;

    /// Every event day holding an ever-online plan, ascending, with its size: the search reads it
    /// once at start so it never visits an empty day. Stores answer from an index or one grouped
    /// scan of the day column; this default reads every plan, so a store overrides it.
    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        let Some((from, to)) = self.day_bounds().await? else { return Ok(Vec::new()) };
        let mut out: Vec<DaySize> = Vec::new();
        for row in self.plans_by_day(from, to).await? {
            let day = row.start_utc.date_naive();
            match out.last_mut() {
                Some(last) if last.day == day => {
                    last.plans += 1;
                    last.text_bytes += row.title.len() as u64;
                }
                _ => out.push(DaySize { day, plans: 1, text_bytes: row.title.len() as u64 }),
            }
        }
        Ok(out)
    }

    /// The store's change marker: the position of its latest write in its change feed (0 before
    /// any). Processes that do not write poll it, then ask [`Store::days_changed_since`]. One index
    /// lookup (SQLite) or one aggregate over a table of one row per day (ClickHouse). The default
    /// is a store without a change feed: its readers rely on the search cache's TTL alone.
    async fn change_marker(&self) -> StoreResult<i64> {
        Err(StoreError::Permanent(format!("the {} store keeps no change feed", self.name())))
    }

    /// The event days written after marker `since`, each with the marker of its latest write. Its
    /// cost follows the days changed, not the store or any cache. A store whose writes may become
    /// visible out of marker order (replicas) also returns days a little older than `since`; the
    /// caller skips those it has already seen with the same marker.
    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        let _ = since;
        Err(StoreError::Permanent(format!("the {} store keeps no change feed", self.name())))
    }

    /// Appends one fetch attempt to the fetch log.
    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()>;

    /// The most recent fetch attempts, newest first.
    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>>;

    /// Cheap liveness probe.
    async fn ping(&self) -> StoreResult<()>;
}

pub type SharedStore = Arc<dyn Store>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_count_from_1970_and_order_every_valid_day() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert_eq!(day_number(d(1970, 1, 1)), 0);
        assert_eq!(day_number(d(1969, 12, 31)), -1);
        assert_eq!(day_number(d(1, 1, 1)), -719_162);
        assert_eq!(day_number(d(9999, 12, 31)), 2_932_896);
        assert_eq!(day_number(d(10000, 1, 1)), 2_932_897);
        for day in [d(1, 1, 1), d(1970, 1, 1), d(2021, 7, 1), d(9999, 12, 31), d(10000, 1, 1)] {
            assert_eq!(day_of_number(day_number(day)), Some(day));
        }
        assert_eq!(day_of_number(i64::MAX), None);
    }
}
