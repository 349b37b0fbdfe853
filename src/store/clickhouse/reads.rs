//! The reads of the ClickHouse store: the writer's bookkeeping, the search's days and directory,
//! the change feed and the fetch log.

use chrono::{NaiveDate, Timelike};

use super::rows::{
    clamp_day, day_int, day_of, decode_price, instant_of, DayBoundsRow, DayChangeRow, DaySizeRow, EventRowCh,
    FetchRow, PlanStateRow,
};
use super::{ClickHouseStore, CHANGE_OVERLAP_US};
use crate::domain::{EventRow, FetchOutcome, FetchRecord, PlanKey, PlanState};
use crate::store::{DayChange, DaySize, ReadSize, StoreError, StoreResult};

/// Without a search's size, a read of more days than this is taken for a wide one: it gives way to
/// the short reads beside it (a day, a month) inside the server, see [`SHORT_PRIORITY`]. A
/// search's reads carry its size instead ([`ReadSize`]): a year past the end of the data is short.
const WIDE_READ_DAYS: i64 = 62;

/// ClickHouse query priorities (the `priority` setting: smaller is higher, 0 is none). While a
/// query of a higher priority runs, the server pauses a lower one between blocks, so a short read
/// of a search never waits for the cores a year or the open range is taking; the wide read goes on
/// at full speed as soon as no short read runs. Other statements (writes, the change feed, the
/// directory) keep priority 0: neither paused nor pausing.
const SHORT_PRIORITY: &str = "1";
const WIDE_PRIORITY: &str = "2";

impl ClickHouseStore {
    pub(super) async fn read_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        let rows: Vec<PlanStateRow> = self
            .fetch_all("plan states", |c| {
                c.query(
                    "SELECT provider, base_plan_id, plan_id, argMax(hash, version) AS last_hash, \
                            argMax(event_day, version) AS last_event_day, \
                            max(version) AS last_version, max(ever_online) AS any_online \
                     FROM plans WHERE superseded = 0 \
                     GROUP BY provider, base_plan_id, plan_id",
                )
            })
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
    /// At `size`'s priority, or without one at the priority of the days' span.
    pub(super) async fn read_plans_by_day(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        size: Option<ReadSize>,
    ) -> StoreResult<Vec<EventRow>> {
        if from > to {
            return Ok(Vec::new());
        }
        let wide = match size {
            Some(size) => size == ReadSize::Wide,
            None => (to - from).num_days() > WIDE_READ_DAYS,
        };
        let rows: Vec<EventRowCh> = self
            .fetch_all("plans by day", |c| {
                let query = c
                    .query(
                        "SELECT id, title, start_local_us, end_local_us, start_us, end_us, \
                            min_price_text, max_price_text \
                     FROM plans FINAL \
                     WHERE event_day BETWEEN ? AND ? \
                       AND event_date BETWEEN toDate(?) AND toDate(?) \
                       AND ever_online = 1 AND superseded = 0 \
                     ORDER BY start_us, id",
                    )
                    .bind(day_int(from))
                    .bind(day_int(to))
                    .bind(clamp_day(from).to_string())
                    .bind(clamp_day(to).to_string());
                query.with_setting("priority", if wide { WIDE_PRIORITY } else { SHORT_PRIORITY })
            })
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

    pub(super) async fn read_day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        let row: DayBoundsRow = self
            .fetch_one("day bounds", |c| {
                c.query(
                    "SELECT count() AS count, min(event_day) AS first, max(event_day) AS last \
                     FROM plans FINAL WHERE ever_online = 1 AND superseded = 0",
                )
            })
            .await?;
        if row.count == 0 {
            return Ok(None);
        }
        Ok(Some((day_of(row.first)?, day_of(row.last)?)))
    }

    pub(super) async fn read_day_directory(&self) -> StoreResult<Vec<DaySize>> {
        let rows: Vec<DaySizeRow> = self
            .fetch_all("day directory", |c| {
                c.query(
                    "SELECT event_day AS day, count() AS plans, sum(length(title)) AS text_bytes \
                     FROM plans FINAL WHERE ever_online = 1 AND superseded = 0 \
                     GROUP BY event_day ORDER BY event_day",
                )
            })
            .await?;
        rows.into_iter()
            .map(|r| Ok(DaySize { day: day_of(r.day)?, plans: r.plans, text_bytes: r.text_bytes }))
            .collect()
    }

    pub(super) async fn read_change_marker(&self) -> StoreResult<i64> {
        self.fetch_one("change marker", |c| c.query("SELECT max(written_us) FROM day_changes")).await
    }

    pub(super) async fn read_days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        let rows: Vec<DayChangeRow> = self
            .fetch_all("days changed", |c| {
                c.query(
                    "SELECT event_day, max(written_us) AS last_written FROM day_changes \
                     WHERE written_us > ? GROUP BY event_day ORDER BY last_written",
                )
                .bind(since.saturating_sub(CHANGE_OVERLAP_US))
            })
            .await?;
        rows.into_iter().map(|r| Ok(DayChange { day: day_of(r.event_day)?, marker: r.written_us })).collect()
    }

    pub(super) async fn read_recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<FetchRow> = self
            .fetch_all("recent fetches", |c| {
                c.query(
                    "SELECT provider, started_at, started_at_ns, duration_ms, http_status, bytes, \
                            plans_seen, plans_written, plans_unchanged, plans_skipped, error, \
                            outcome, plans_spooled, plans_dropped \
                     FROM fetches ORDER BY started_at DESC, started_at_ns DESC LIMIT ?",
                )
                .bind(limit as u64)
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                let outcome = FetchOutcome::from_label(&r.outcome).ok_or_else(|| {
                    StoreError::Permanent(format!("stored fetch outcome {:?} is unknown", r.outcome))
                })?;
                Ok(FetchRecord {
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
                    outcome,
                    plans_spooled: r.plans_spooled,
                    plans_dropped: r.plans_dropped,
                })
            })
            .collect()
    }
}
