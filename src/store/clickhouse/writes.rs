//! The writes of the ClickHouse store. Each batch is one `INSERT` per table, retried whole on
//! transient errors; zones go first, so a visible plan row always has its zones.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use clickhouse::Client;
use uuid::Uuid;

use super::classify::timed;
use super::rows::{
    clamp_day, clamp_instant, day_int, fetched_at, micros, plan_rows, price_number, DayChangeRow, FetchRow,
    UuidRow, ZoneRow, PLAN_COLUMNS,
};
use super::ClickHouseStore;
use crate::domain::{FetchRecord, PlanKey, StoredPlan};
use crate::store::{day_number, StoreResult};

/// The sticky-flag lookup lists every key of a batch in its text: allow more than the default 256 KiB.
const LOOKUP_MAX_QUERY_SIZE: &str = "67108864";

impl ClickHouseStore {
    /// One `INSERT` with all rows; nothing is sent when `rows` is empty.
    pub(super) async fn insert_rows<T>(&self, c: &Client, table: &str, rows: &[T]) -> StoreResult<()>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite + Send + Sync,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let work = async {
            let mut insert = c.insert::<T>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        timed(self.query_timeout, work).await
    }

    /// One `INSERT` with the zones of every plan of the batch. The rows borrow from the plans and
    /// are serialized straight into the request body: no row is built on the heap.
    pub(super) async fn insert_zones(&self, c: &Client, plans: &[StoredPlan]) -> StoreResult<()> {
        if plans.iter().all(|p| p.plan.zones.is_empty()) {
            return Ok(());
        }
        let work = async {
            let mut insert = c.insert::<ZoneRow<'_>>("zones").await?;
            for p in plans {
                let key = &p.plan.key;
                let fetched = fetched_at(p.version);
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
                        price: price_number(&z.price),
                        numbered: z.numbered.into(),
                        price_text: &z.price,
                        fetched_at: fetched,
                    };
                    insert.write(&row).await?;
                }
            }
            insert.end().await
        };
        timed(self.query_timeout, work).await
    }

    /// One attempt at a batch on one replica: the sticky-flag lookup, then one `INSERT` into
    /// `zones` and one into `plans` (zones first: a visible plan row always has its zones).
    pub(super) async fn write_batch(
        &self,
        c: &Client,
        plans: &[StoredPlan],
        written_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let sticky = self.ever_online_among(c, plans).await?;
        let mut plan_batch = Vec::with_capacity(plans.len());
        for p in plans {
            let ever_online = p.ever_online || sticky.contains(&p.plan.key.id());
            plan_rows(p, ever_online, written_at, &mut plan_batch);
        }
        self.insert_zones(c, plans).await?;
        self.insert_rows(c, "plans", &plan_batch).await?;
        let days = plans.iter().flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date));
        self.record_changes(c, days, written_at).await
    }

    /// Stamps `days` in the change feed, after the rows they announce were written.
    pub(super) async fn record_changes(
        &self,
        c: &Client,
        days: impl Iterator<Item = NaiveDate>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let days: BTreeSet<i32> = days.map(day_int).collect();
        let rows: Vec<DayChangeRow> =
            days.into_iter().map(|event_day| DayChangeRow { event_day, written_us: micros(at) }).collect();
        self.insert_rows(c, "day_changes", &rows).await
    }

    /// Ids of the batch's not-yet-ever-online plans that a stored row marks ever-online, so the new
    /// rows keep the sticky flag. Every write carries the flag forward, so the key's latest row is
    /// enough: it lives on the plan's event day, or on its previous day when it moved. Nothing is
    /// read when every plan of the batch is already ever-online (the usual case).
    pub(super) async fn ever_online_among(
        &self,
        c: &Client,
        plans: &[StoredPlan],
    ) -> StoreResult<HashSet<Uuid>> {
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
            self.query_timeout,
            c.query(&sql).with_setting("max_query_size", LOOKUP_MAX_QUERY_SIZE).fetch_all(),
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Re-inserts each key's latest row with the flag set: the same version, so the replacing
    /// engine keeps the row inserted last, i.e. this one.
    pub(super) async fn mark_ever_online_rows(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
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
                    start_us, end_us, start_local_us, end_local_us, sell_from_us, sell_to_us, toInt64({}), \
                    min_price_text, max_price_text, fetched_at \
             FROM plans FINAL \
             WHERE event_day IN ({}) AND id IN ({}) AND superseded = 0 AND ever_online = 0",
            clamp_instant(now).timestamp(),
            micros(now),
            days.iter().cloned().collect::<Vec<_>>().join(", "),
            ids.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let what = format!("clickhouse ever-online marks of {} plans", keys.len());
        let (sql, limit) = (&sql, self.query_timeout);
        self.endpoints
            .on_any(&what, |c| async move {
                let run = c.query(sql).with_setting("max_query_size", LOOKUP_MAX_QUERY_SIZE).execute();
                timed(limit, run).await?;
                self.record_changes(&c, keys.iter().map(|(_, d)| *d), now).await
            })
            .await
    }

    /// Appends one row to the fetch log.
    pub(super) async fn insert_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
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
            outcome: fetch.outcome.label().to_string(),
            plans_spooled: fetch.plans_spooled,
            plans_dropped: fetch.plans_dropped,
        };
        let row = &row;
        self.endpoints
            .on_any("fetch log", |c| async move {
                self.insert_rows(&c, "fetches", std::slice::from_ref(row)).await
            })
            .await
    }
}
