//! The full copies migrations 002 and 004 left of the tables they rebuilt: `plans_v1` (`plans` as
//! 001 made it), `plans_v2` (as 002 made it) and `zones_v1` (`zones` as 001 made it). Migration
//! [`DROP_COPIES`] drops them, but only after [`ClickHouseStore::verify_copies`] found every row
//! of each in the current table; an operator keeps them with
//! `store.clickhouse.keep_superseded_tables`, and the migration then waits.
//!
//! A copy's row is in the current table when the table holds its key at the same version with the
//! same content (plans: the content hash and the sticky ever-online flag; zones: every column), or
//! a newer version of a plan (the replacing engine may have merged the older one away). The check
//! runs one month at a time (the partition both tables share), so its memory and time follow one
//! month of the copy, never the whole table; each is one statement under `query_timeout`.

use clickhouse::sql::Identifier;
use clickhouse::Row;
use serde::Deserialize;

use super::ClickHouseStore;
use crate::store::{StoreError, StoreResult};

/// The migration that drops the copies.
pub(super) const DROP_COPIES: &str = "006_drop_copies";

/// A copy and the current table its rows went to.
struct Copy {
    name: &'static str,
    current: &'static str,
    /// What the check counts: a plans copy's keys (its versions of a plan on a day), a zones
    /// copy's rows.
    unit: &'static str,
    /// Counts the copy's rows of one month (the two `?`: the copy, the month) and those missing
    /// from the current table, with one of them for the error.
    check: &'static str,
}

/// The rows of a plans copy, by key (its event day, as 002 computed it), against `plans`.
const PLANS_CHECK: &str = "
SELECT count() AS copied, countIf(lost) AS missing, anyIf(key, lost) AS example
FROM (
    SELECT concat(provider, '/', toString(base_plan_id), '/', toString(plan_id), ' on ', toString(any(event_date))) AS key,
        countIf(src = 1) = 0
            OR maxIf(version, src = 1) < maxIf(version, src = 0)
            OR (maxIf(version, src = 1) = maxIf(version, src = 0)
                AND argMaxIf(hash, version, src = 1) != argMaxIf(hash, version, src = 0))
            OR maxIf(ever_online, src = 1) < maxIf(ever_online, src = 0) AS lost
    FROM (
        SELECT toInt32(event_date) AS event_day, event_date, provider, base_plan_id, plan_id, version, hash,
               ever_online, toUInt8(0) AS src
        FROM ? WHERE toYYYYMM(event_date) = ?
        UNION ALL
        SELECT event_day, event_date, provider, base_plan_id, plan_id, version, hash, ever_online, toUInt8(1) AS src
        FROM plans WHERE toYYYYMM(event_date) = ?
    )
    GROUP BY event_day, provider, base_plan_id, plan_id
    HAVING countIf(src = 0) > 0
)";

/// The rows of `zones_v1` (price as text), each against an identical row of `zones`.
const ZONES_CHECK: &str = "
SELECT count() AS copied, countIf(lost) AS missing, anyIf(key, lost) AS example
FROM (
    SELECT concat(provider, '/', toString(base_plan_id), '/', toString(plan_id), ' version ', toString(version),
                  ' zone ', toString(idx)) AS key,
           countIf(src = 1) = 0 AS lost
    FROM (
        SELECT event_date, provider, base_plan_id, plan_id, version, idx, zone_id, name, capacity,
               price AS price_text, numbered, toUInt8(0) AS src
        FROM ? WHERE toYYYYMM(event_date) = ?
        UNION ALL
        SELECT event_date, provider, base_plan_id, plan_id, version, idx, zone_id, name, capacity,
               price_text, numbered, toUInt8(1) AS src
        FROM zones WHERE toYYYYMM(event_date) = ?
    )
    GROUP BY event_date, provider, base_plan_id, plan_id, version, idx, zone_id, name, capacity, price_text, numbered
    HAVING countIf(src = 0) > 0
)";

/// `plans_v2` has `event_day` itself, equal to `toInt32(event_date)` for every row 002 copied
/// and every row written before 004: the same check applies.
const COPIES: [Copy; 3] = [
    Copy { name: "plans_v1", current: "plans", unit: "plans", check: PLANS_CHECK },
    Copy { name: "plans_v2", current: "plans", unit: "plans", check: PLANS_CHECK },
    Copy { name: "zones_v1", current: "zones", unit: "zones", check: ZONES_CHECK },
];

#[derive(Debug, Row, Deserialize)]
struct MonthCheck {
    copied: u64,
    missing: u64,
    example: String,
}

impl ClickHouseStore {
    /// Checks that every row of each copy still present is in its current table; the first month
    /// with a missing row fails with the copy, the count and one such row.
    pub(super) async fn verify_copies(&self) -> StoreResult<()> {
        let present: Vec<String> = self
            .fetch_all("table copies", |c| {
                c.query("SELECT name FROM system.tables WHERE database = ?").bind(&self.database)
            })
            .await?;
        for copy in COPIES.iter().filter(|copy| present.iter().any(|p| p == copy.name)) {
            let months: Vec<String> = self
                .fetch_all("partitions of a table copy", |c| {
                    c.query(
                        "SELECT DISTINCT partition_id FROM system.parts \
                         WHERE database = ? AND table = ? AND active ORDER BY partition_id",
                    )
                    .bind(&self.database)
                    .bind(copy.name)
                })
                .await?;
            let mut copied = 0;
            for month in &months {
                let month: u32 = month.parse().map_err(|_| {
                    StoreError::Permanent(format!(
                        "{} has a partition {month:?} that is not a month",
                        copy.name
                    ))
                })?;
                let check: MonthCheck = self
                    .fetch_one("check of a table copy", |c| {
                        c.query(copy.check).bind(Identifier(copy.name)).bind(month).bind(month)
                    })
                    .await?;
                if check.missing > 0 {
                    return Err(StoreError::Permanent(format!(
                        "{} holds {} of its {} {} of month {month} that {} lacks (e.g. {}): the copies \
                         are kept; find out where they went, or set \
                         store.clickhouse.keep_superseded_tables = true to start with the copies kept",
                        copy.name, check.missing, check.copied, copy.unit, copy.current, check.example
                    )));
                }
                copied += check.copied;
            }
            tracing::info!(
                copy = copy.name,
                current = copy.current,
                checked = copied,
                unit = copy.unit,
                months = months.len(),
                "every row of the table copy is in the current table"
            );
        }
        Ok(())
    }
}
