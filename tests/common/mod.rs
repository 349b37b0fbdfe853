//! Helpers shared by the black-box tests: plan fixtures, the store conformance suite and a throwaway
//! ClickHouse server.
//!
//! Include with `mod common;` from any test binary; not every binary uses every helper.
#![allow(dead_code)]

pub mod binary;
pub mod clickhouse;
pub mod cluster;
pub mod conformance;

use chrono::{NaiveDate, NaiveDateTime};
use planfeed::domain::{Plan, PlanKey, StoredPlan, Zone};
use rust_decimal::Decimal;

/// How long a test waits for an event (a fetch record, a counter, a request, a log line) before it
/// gives up. Only a safety net, never a measure: a loaded machine is slow, a broken service never
/// gets there. Timings belong to the benchmarks.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A provider-local date-time, `YYYY-MM-DDTHH:MM:SS`.
pub fn dt(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .unwrap_or_else(|e| panic!("bad fixture date-time {s}: {e}"))
}

/// A date, `YYYY-MM-DD`.
pub fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("bad fixture date {s}: {e}"))
}

/// An exact decimal; keeps the scale as written (`"20.00"` stays `20.00`).
pub fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|e| panic!("bad fixture decimal {s}: {e}"))
}

/// Zones numbered from 1, one per price, capacity 100.
pub fn zones(prices: &[&str]) -> Vec<Zone> {
    prices
        .iter()
        .enumerate()
        .map(|(i, p)| Zone {
            zone_id: i as u64 + 1,
            name: format!("zone {}", i + 1),
            capacity: 100,
            price: dec(p),
            numbered: i % 2 == 0,
        })
        .collect()
}

/// An online plan of `provider/base_plan_id/plan_id` from `start` to `end` (provider-local, read as
/// UTC by [`stored`]) with one zone at 20.00. Adjust fields for the case at hand.
pub fn plan(provider: &str, base_plan_id: u64, plan_id: u64, title: &str, start: &str, end: &str) -> Plan {
    Plan {
        key: PlanKey::new(provider, base_plan_id, plan_id),
        title: title.to_owned(),
        online: true,
        organizer_company_id: Some(7),
        start: dt(start),
        end: dt(end),
        sell_from: Some(dt("1970-01-02T00:00:00")),
        sell_to: Some(dt(end)),
        sold_out: false,
        zones: zones(&["20.00"]),
    }
}

/// The same plan observed offline (its base plan's sell mode is not `online`).
pub fn offline(mut p: Plan) -> Plan {
    p.online = false;
    p
}

/// What the writer would hand the store for `plan` at `version`, provider zone UTC; ever-online is
/// the plan's own online flag (the store must keep it sticky on its own).
pub fn stored(plan: Plan, version: u64) -> StoredPlan {
    StoredPlan::new(plan, chrono_tz::UTC, false, version)
}

/// Like [`stored`], for a plan whose start moved away from `previous` day.
pub fn moved(plan: Plan, version: u64, previous: NaiveDate) -> StoredPlan {
    let mut s = stored(plan, version);
    s.previous_event_date = Some(previous);
    s
}

/// What `/search` shows of an event, as one comparable line: title, local start and end, min and
/// max price (two decimals; JSON parsers read `65.00` as `65.0`).
pub fn event_summary(e: &serde_json::Value) -> String {
    let price = |v: &serde_json::Value| v.as_f64().map_or_else(|| v.to_string(), |p| format!("{p:.2}"));
    format!(
        "{} {} {} {} {} {} {}",
        e["title"].as_str().unwrap(),
        e["start_date"].as_str().unwrap(),
        e["start_time"].as_str().unwrap(),
        e["end_date"].as_str().unwrap(),
        e["end_time"].as_str().unwrap(),
        price(&e["min_price"]),
        price(&e["max_price"])
    )
}
