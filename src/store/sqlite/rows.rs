//! Row codec: how domain values map to the embedded store's columns and back. Local date-times
//! are text (`YYYY-MM-DDTHH:MM:SS`), instants unix milliseconds, event days integers (see
//! `store::day_number`), prices exact decimal text, counts and ids 63-bit integers (a larger value
//! is refused as permanent, never wrapped).

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rusqlite::types::Type;
use rusqlite::Row;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::{EventRow, FetchOutcome, FetchRecord, PlanKey};
use crate::store::{day_of_number, DayChange, DaySize, StoreError, StoreResult};

/// Provider-local date-times as text: `YYYY-MM-DDTHH:MM:SS` (a fraction only if the feed had one).
const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

/// A search row: `id, title, start_local, end_local, start_utc, end_utc, min_price, max_price`.
pub(super) fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: text_col(r, 0, Uuid::parse_str)?,
        title: r.get(1)?,
        start_local: text_col(r, 2, parse_local)?,
        end_local: text_col(r, 3, parse_local)?,
        start_utc: int_col(r, 4, millis)?,
        end_utc: int_col(r, 5, millis)?,
        min_price: opt_text_col(r, 6, Decimal::from_str)?,
        max_price: opt_text_col(r, 7, Decimal::from_str)?,
    })
}

/// A fetch log row, in the column order of `RECENT_FETCHES`.
pub(super) fn fetch_row(r: &Row<'_>) -> rusqlite::Result<FetchRecord> {
    Ok(FetchRecord {
        provider: r.get(0)?,
        started_at: int_col(r, 1, millis)?,
        duration_ms: from_i64(r, 2)?,
        http_status: r.get(3)?,
        bytes: from_i64(r, 4)?,
        plans_seen: from_i64(r, 5)?,
        plans_written: from_i64(r, 6)?,
        plans_unchanged: from_i64(r, 7)?,
        plans_skipped: from_i64(r, 8)?,
        error: r.get(9)?,
        outcome: text_col(r, 10, |s| {
            FetchOutcome::from_label(s).ok_or_else(|| format!("unknown fetch outcome {s:?}"))
        })?,
        plans_spooled: opt_int_col(r, 11)?,
        plans_dropped: opt_int_col(r, 12)?,
    })
}

/// A day directory row: `event_date, count, title bytes`.
pub(super) fn day_size_row(r: &Row<'_>) -> rusqlite::Result<DaySize> {
    Ok(DaySize { day: int_col(r, 0, parse_day)?, plans: from_i64(r, 1)?, text_bytes: from_i64(r, 2)? })
}

/// A change feed row: `day, seq`.
pub(super) fn day_change_row(r: &Row<'_>) -> rusqlite::Result<DayChange> {
    Ok(DayChange { day: int_col(r, 0, parse_day)?, marker: r.get(1)? })
}

/// Reads text column `idx` and converts it, reporting a bad value as a conversion failure.
fn text_col<T, E>(r: &Row<'_>, idx: usize, parse: impl FnOnce(&str) -> Result<T, E>) -> rusqlite::Result<T>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse(r.get_ref(idx)?.as_str()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into()))
}

/// Reads integer column `idx` and converts it, reporting a bad value as a conversion failure.
pub(super) fn int_col<T, E>(
    r: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(i64) -> Result<T, E>,
) -> rusqlite::Result<T>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse(r.get_ref(idx)?.as_i64()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Integer, e.into()))
}

fn opt_text_col<T, E>(
    r: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> rusqlite::Result<Option<T>>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match r.get_ref(idx)?.as_str_or_null()? {
        None => Ok(None),
        Some(s) => parse(s)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into())),
    }
}

/// Reads a nullable non-negative integer column as `u64`.
fn opt_int_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    match r.get_ref(idx)?.as_i64_or_null()? {
        None => Ok(None),
        Some(v) => u64::try_from(v)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Integer, e.into())),
    }
}

/// Reads a non-negative integer column as `u64`.
pub(super) fn from_i64(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    int_col(r, idx, u64::try_from)
}

/// A plan's `field` as a column value; refused (permanent) past 63 bits, naming the plan.
pub(super) fn to_i64(v: u64, field: &str, key: &PlanKey) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::Permanent(format!("plan {key}: {field} {v} exceeds the embedded store's 63-bit range"))
    })
}

/// A fetch's count `field` as a column value; refused (permanent) past 63 bits.
pub(super) fn count_to_i64(v: u64, field: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::Permanent(format!("fetch {field} {v} exceeds the embedded store's 63-bit range"))
    })
}

pub(super) fn local_text(t: NaiveDateTime) -> String {
    t.format(LOCAL_FORMAT).to_string()
}

fn parse_local(s: &str) -> chrono::ParseResult<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, LOCAL_FORMAT)
}

pub(super) fn parse_day(n: i64) -> Result<NaiveDate, String> {
    day_of_number(n).ok_or_else(|| format!("event day {n} is out of range"))
}

fn millis(ms: i64) -> Result<DateTime<Utc>, &'static str> {
    DateTime::<Utc>::from_timestamp_millis(ms).ok_or("out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_round_trip_as_text() {
        let t = NaiveDateTime::parse_from_str("2021-09-30T21:05:07", "%Y-%m-%dT%H:%M:%S").unwrap();
        assert_eq!(local_text(t), "2021-09-30T21:05:07");
        assert_eq!(parse_local(&local_text(t)).unwrap(), t);
        let frac = t + chrono::Duration::milliseconds(250);
        assert_eq!(local_text(frac), "2021-09-30T21:05:07.250");
        assert_eq!(parse_local(&local_text(frac)).unwrap(), frac);
    }

    #[test]
    fn versions_beyond_63_bits_are_refused_with_the_plan_key() {
        let key = PlanKey::new("fever", 322, 1642);
        assert_eq!(to_i64(5, "version", &key).unwrap(), 5);
        let err = to_i64(u64::MAX, "version", &key).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("fever/322/1642: version 18446744073709551615"), "{err}");
    }
}
