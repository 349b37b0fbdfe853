//! Helpers shared by the black-box tests: plan fixtures, the store conformance suite and a throwaway
//! ClickHouse server.
//!
//! Include with `mod common;` from any test binary; not every binary uses every helper.
#![allow(dead_code)]

pub mod binary;
pub mod clickhouse;
pub mod cluster;
pub mod conformance;
pub mod scrape;

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
        title: title.into(),
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

/// Waits until the store's fetch log holds `n` fetches of `provider` (of any provider with `None`);
/// returns them, newest first. A failure says the provider's fetch counters and this process's
/// threads (a fetch never started, one under way, a starved thread).
pub async fn wait_for_fetches(
    store: &planfeed::store::SharedStore,
    provider: Option<&str>,
    n: usize,
) -> Vec<planfeed::domain::FetchRecord> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let all = store.recent_fetches(1000).await.unwrap();
        let f: Vec<_> = all.into_iter().filter(|f| provider.is_none_or(|p| f.provider == p)).collect();
        if f.len() >= n {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} fetches of {} recorded within {PATIENCE:?}; fetch counters: {}\nthreads:\n{}",
            provider.unwrap_or("any provider"),
            fetch_counters(provider),
            thread_report()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// This process's `planfeed_fetches_total` lines (of `provider` only, when given).
fn fetch_counters(provider: Option<&str>) -> String {
    let label = provider.map(|p| format!("provider=\"{p}\""));
    let text = planfeed::metrics::handle().render();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("planfeed_fetches_total") && label.as_ref().is_none_or(|p| l.contains(p.as_str()))
        })
        .collect();
    if lines.is_empty() {
        "none".into()
    } else {
        lines.join("; ")
    }
}

/// One line per thread of this process: name, state, scheduling policy, CPU time and time spent
/// waiting for a core (`/proc/self/task/*/schedstat`), and the kernel function it sleeps in. For a
/// failure message when an awaited event never came: a thread runnable but never run (starved) and
/// one asleep (waiting on something) look different here. Empty off Linux.
pub fn thread_report() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return String::new() };
    let mut lines: Vec<String> = tasks
        .flatten()
        .map(|t| {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_owned();
            let stat = read("stat");
            // The state follows the parenthesised name, which may itself hold spaces.
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').next()).unwrap_or("?");
            let tid: i32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
            // SAFETY: reads the policy of a thread of this process.
            let policy = match unsafe { libc::sched_getscheduler(tid) } {
                libc::SCHED_OTHER => "other",
                libc::SCHED_IDLE => "idle",
                libc::SCHED_BATCH => "batch",
                _ => "rt/?",
            };
            let ms: Vec<u64> = read("schedstat")
                .split(' ')
                .take(2)
                .map(|v| v.parse::<u64>().unwrap_or(0) / 1_000_000)
                .collect();
            let (ran, waited) = (ms.first().copied().unwrap_or(0), ms.get(1).copied().unwrap_or(0));
            format!(
                "{tid} {} {state} {policy} ran {ran} ms waited {waited} ms in {}",
                read("comm"),
                read("wchan")
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}
