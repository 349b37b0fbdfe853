//! Row encoding: how domain types map to the rows of `plans`, `zones`, `day_changes` and `fetches`
//! and back. Days and instants are kept exactly as integers (`event_day`, `*_us`: every date from
//! year 1 to 10000 fits); the `Date`/`DateTime` columns stay for ad-hoc SQL, clamped to what those
//! types hold (1970..2105).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clickhouse::Row;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{DecimalText, StoredPlan};
use crate::store::{day_number, day_of_number, StoreError, StoreResult};

/// The columns of `plans`, in table order.
pub(super) const PLAN_COLUMNS: &str = "provider, base_plan_id, plan_id, id, title, online, ever_online, \
    organizer_company_id, start_local, end_local, start_utc, end_utc, event_date, sell_from, sell_to, \
    sold_out, min_price, max_price, zone_count, version, hash, superseded, written_at, event_day, \
    start_us, end_us, start_local_us, end_local_us, sell_from_us, sell_to_us, written_us, \
    min_price_text, max_price_text, fetched_at";

/// What `Date` and `DateTime` hold on every server version: their columns keep values clamped to
/// this span, the exact values live in the integer columns (`clickhouse/002_exact_days.sql`).
const CLAMP_FIRST_DAY: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
const CLAMP_LAST_DAY: NaiveDate = NaiveDate::from_ymd_opt(2105, 12, 31).expect("valid");

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(super) struct PlanRow {
    pub(super) provider: String,
    pub(super) base_plan_id: u64,
    pub(super) plan_id: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub(super) id: Uuid,
    pub(super) title: String,
    pub(super) online: u8,
    pub(super) ever_online: u8,
    pub(super) organizer_company_id: Option<u64>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) start_local: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) end_local: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) start_utc: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) end_utc: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::date")]
    pub(super) event_date: NaiveDate,
    #[serde(with = "clickhouse::serde::chrono::datetime::option")]
    pub(super) sell_from: Option<DateTime<Utc>>,
    #[serde(with = "clickhouse::serde::chrono::datetime::option")]
    pub(super) sell_to: Option<DateTime<Utc>>,
    pub(super) sold_out: u8,
    /// `Decimal(18, 4)`: the price times 10^4 ([`price_number`]).
    pub(super) min_price: Option<i64>,
    pub(super) max_price: Option<i64>,
    pub(super) zone_count: u32,
    pub(super) version: u64,
    pub(super) hash: u64,
    pub(super) superseded: u8,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) written_at: DateTime<Utc>,
    pub(super) event_day: i32,
    pub(super) start_us: i64,
    pub(super) end_us: i64,
    pub(super) start_local_us: i64,
    pub(super) end_local_us: i64,
    pub(super) sell_from_us: Option<i64>,
    pub(super) sell_to_us: Option<i64>,
    pub(super) written_us: i64,
    /// The feed's exact decimal text, which the API prints.
    pub(super) min_price_text: Option<String>,
    pub(super) max_price_text: Option<String>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) fetched_at: DateTime<Utc>,
}

/// A `zones` row borrowed from its plan (see [`ClickHouseStore::insert_zones`]).
#[derive(Debug, Row, Serialize)]
pub(super) struct ZoneRow<'a> {
    pub(super) provider: &'a str,
    pub(super) base_plan_id: u64,
    pub(super) plan_id: u64,
    pub(super) version: u64,
    #[serde(with = "clickhouse::serde::chrono::date")]
    pub(super) event_date: NaiveDate,
    pub(super) idx: u32,
    pub(super) zone_id: u64,
    pub(super) name: &'a str,
    pub(super) capacity: u32,
    /// Exact decimal text, written without a heap allocation.
    pub(super) price: Option<i64>,
    pub(super) numbered: u8,
    /// Exact decimal text, written without a heap allocation.
    #[serde(serialize_with = "price_text")]
    pub(super) price_text: &'a Decimal,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) fetched_at: DateTime<Utc>,
}

/// Serializes a price as its decimal text ("20.00", "7.5"), formatted on the stack.
pub(super) fn price_text<S: serde::Serializer>(price: &&Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(DecimalText::new(price).as_str())
}

#[derive(Debug, Row, Deserialize)]
pub(super) struct EventRowCh {
    #[serde(with = "clickhouse::serde::uuid")]
    pub(super) id: Uuid,
    pub(super) title: String,
    pub(super) start_local_us: i64,
    pub(super) end_local_us: i64,
    pub(super) start_us: i64,
    pub(super) end_us: i64,
    pub(super) min_price: Option<String>,
    pub(super) max_price: Option<String>,
}

#[derive(Debug, Row, Deserialize)]
pub(super) struct UuidRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub(super) id: Uuid,
}

#[derive(Debug, Row, Deserialize)]
pub(super) struct PlanStateRow {
    pub(super) provider: String,
    pub(super) base_plan_id: u64,
    pub(super) plan_id: u64,
    pub(super) hash: u64,
    pub(super) event_day: i32,
    pub(super) version: u64,
    pub(super) ever_online: u8,
}

#[derive(Debug, Row, Deserialize)]
pub(super) struct DayBoundsRow {
    pub(super) count: u64,
    pub(super) first: i32,
    pub(super) last: i32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct DayChangeRow {
    pub(super) event_day: i32,
    pub(super) written_us: i64,
}

#[derive(Debug, Row, Deserialize)]
pub(super) struct DaySizeRow {
    pub(super) day: i32,
    pub(super) plans: u64,
    pub(super) text_bytes: u64,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(super) struct FetchRow {
    pub(super) provider: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub(super) started_at: DateTime<Utc>,
    pub(super) started_at_ns: u32,
    pub(super) duration_ms: u64,
    pub(super) http_status: Option<u16>,
    pub(super) bytes: u64,
    pub(super) plans_seen: u64,
    pub(super) plans_written: u64,
    pub(super) plans_unchanged: u64,
    pub(super) plans_skipped: u64,
    pub(super) error: Option<String>,
    /// The [`crate::domain::FetchOutcome`] label.
    pub(super) outcome: String,
    pub(super) plans_spooled: Option<u64>,
    pub(super) plans_dropped: Option<u64>,
}

/// Scale of the `Decimal(18, 4)` price columns.
const PRICE_SCALE: u32 = 4;
/// What `Decimal(18, 4)` holds: 14 integer digits.
const PRICE_LIMIT: i64 = 1_000_000_000_000_000_000;

/// `price` as `Decimal(18, 4)` holds it (times 10^4), truncated to 4 decimals like the upgrade
/// (`clickhouse/004_analyst_schema.sql`); `None` beyond 14 integer digits. The exact text is
/// stored beside it.
pub(super) fn price_number(price: &Decimal) -> Option<i64> {
    let mut d = price.trunc_with_scale(PRICE_SCALE);
    d.rescale(PRICE_SCALE);
    i64::try_from(d.mantissa()).ok().filter(|m| m.abs() < PRICE_LIMIT)
}

/// When the fetch that observed `version` started, to the second: the writer puts the fetch's
/// start in milliseconds above the low 20 bits of each version.
pub(super) fn fetched_at(version: u64) -> DateTime<Utc> {
    let ms = i64::try_from(version >> 20).unwrap_or(i64::MAX);
    clamp_instant(DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH))
}

/// Prices are stored as exact decimal text: `Decimal` keeps the feed's scale in its `Display`.
pub(super) fn decode_price(text: Option<String>, id: Uuid) -> StoreResult<Option<Decimal>> {
    text.map(|t| {
        t.parse::<Decimal>().map_err(|e| {
            StoreError::Permanent(format!("stored price {t:?} of plan {id} is not a decimal: {e}"))
        })
    })
    .transpose()
}

pub(super) fn wall(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// `day` inside what `Date` holds (see [`CLAMP_FIRST_DAY`]).
pub(super) fn clamp_day(day: NaiveDate) -> NaiveDate {
    day.clamp(CLAMP_FIRST_DAY, CLAMP_LAST_DAY)
}

/// `t` inside what `DateTime` holds, to the second (see [`CLAMP_FIRST_DAY`]).
pub(super) fn clamp_instant(t: DateTime<Utc>) -> DateTime<Utc> {
    let first = CLAMP_FIRST_DAY.and_hms_opt(0, 0, 0).expect("valid").and_utc();
    let last = CLAMP_LAST_DAY.and_hms_opt(23, 59, 59).expect("valid").and_utc();
    t.clamp(first, last)
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn instant_of(us: i64, id: Uuid) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Permanent(format!("stored instant {us} of plan {id} is out of range")))
}

pub(super) fn day_of(n: i32) -> StoreResult<NaiveDate> {
    day_of_number(n.into())
        .ok_or_else(|| StoreError::Permanent(format!("stored event day {n} is out of range")))
}

/// The plan's day as `event_day` holds it; every day a plan can have fits (year 1 to 10000).
pub(super) fn day_int(day: NaiveDate) -> i32 {
    i32::try_from(day_number(day)).unwrap_or(if day_number(day) < 0 { i32::MIN } else { i32::MAX })
}

/// The plan row (and the tombstone of its previous day, if it moved). `ever_online` is the sticky
/// flag as the store knows it, which may be set although this observation's is not.
pub(super) fn plan_rows(
    p: &StoredPlan,
    ever_online: bool,
    written_at: DateTime<Utc>,
    out: &mut Vec<PlanRow>,
) {
    let plan = &p.plan;
    let row = PlanRow {
        provider: plan.key.provider.to_string(),
        base_plan_id: plan.key.base_plan_id,
        plan_id: plan.key.plan_id,
        id: plan.key.id(),
        title: plan.title.to_string(),
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
        min_price: plan.min_price().and_then(|d| price_number(&d)),
        max_price: plan.max_price().and_then(|d| price_number(&d)),
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
        min_price_text: plan.min_price().map(|d| d.to_string()),
        max_price_text: plan.max_price().map(|d| d.to_string()),
        fetched_at: fetched_at(p.version),
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
#[cfg(test)]
mod tests {
    use super::*;

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
    fn price_numbers_are_ten_thousandths_truncated_like_the_upgrade() {
        let n = |s: &str| price_number(&s.parse::<Decimal>().unwrap());
        assert_eq!(n("20.00"), Some(200_000));
        assert_eq!(n("7.5"), Some(75_000));
        assert_eq!(n("-3.25"), Some(-32_500));
        assert_eq!(n("123456789.123456789"), Some(1_234_567_891_234));
        assert_eq!(n("0.00001"), Some(0));
        assert_eq!(n("99999999999999.9999"), Some(999_999_999_999_999_999));
        assert_eq!(n("100000000000000"), None);
    }

    #[test]
    fn fetched_at_is_the_fetch_start_of_a_version() {
        let start = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let version = (1_700_000_000_123u64 << 20) | 17;
        assert_eq!(fetched_at(version), start.with_timezone(&Utc));
        assert_eq!(fetched_at(7), DateTime::UNIX_EPOCH);
    }
}
