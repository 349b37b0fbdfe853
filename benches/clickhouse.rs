//! ClickHouse store benchmark (`make bench`): prints
//! - zone rows/s writing a generated feed of 2,000 base plans × 5 plans × 100 zones straight through
//!   `Store::write_plans` (batches of 5,000 plans, as the writer sends them), and through the whole
//!   pipeline (`planfeed ingest --once`: parse, dedup, write);
//! - plan rows written when the same feed is ingested again unchanged (target 0);
//! - median and p99 latency of a one-month search read straight from ClickHouse.
//!
//! Needs `clickhouse-server` (scripts/install-clickhouse.sh); starts its own on free loopback ports.

#[path = "../tests/common/clickhouse.rs"]
mod clickhouse_server;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use planfeed::config::Settings;
use planfeed::domain::StoredPlan;
use planfeed::feed::{generate, parse_document, GenSpec};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::Store;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let Some(server) = clickhouse_server::ClickHouseServer::start() else {
        eprintln!("clickhouse bench skipped: clickhouse-server is not installed");
        return;
    };
    let spec = GenSpec {
        base_plans: 2000,
        plans_per_base: 5,
        zones_per_plan: 100,
        seed: 7,
        offline_share: 0.1,
        invalid_share: 0.0,
    };
    println!(
        "clickhouse-server data under {} (PLANFEED_CH_TEST_DIR picks another volume)",
        clickhouse_server::ClickHouseServer::data_parent_label()
    );
    let feed = generate(&spec, 0);
    let provider: Arc<str> = Arc::from("bench");
    let parsed = parse_document(&provider, &feed).expect("generated feed parses");
    let zone_rows: usize = parsed.plans.iter().map(|p| p.zones.len()).sum();
    println!(
        "clickhouse bench: feed {:.1} MB, {} plans, {} zone rows",
        feed.len() as f64 / 1e6,
        parsed.plans.len(),
        zone_rows
    );

    // 1. Straight through the store, batches of 5,000 plans.
    let settings =
        |db: &str| ClickHouseSettings { url: server.url(), database: db.into(), ..Default::default() };
    let store = ClickHouseStore::connect(settings("bench_store")).await.unwrap();
    store.migrate().await.unwrap();
    let stored: Vec<StoredPlan> = parsed
        .plans
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| StoredPlan::new(p, chrono_tz::UTC, true, 1 + i as u64))
        .collect();
    let started = Instant::now();
    for batch in stored.chunks(5000) {
        store.write_plans(batch).await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "store write:        {:>10.0} zone rows/s ({} zone rows + {} plan rows in {:.0} ms; target >= 1,000,000)",
        zone_rows as f64 / elapsed.as_secs_f64(),
        zone_rows,
        stored.len(),
        elapsed.as_secs_f64() * 1e3
    );

    // 2. The whole pipeline, then the same feed again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("feed.xml");
    std::fs::write(&file, &feed).unwrap();
    let env = vec![
        ("PLANFEED__STORE__BACKEND".to_string(), "clickhouse".to_string()),
        ("PLANFEED__STORE__CLICKHOUSE__URL".to_string(), server.url()),
        ("PLANFEED__STORE__CLICKHOUSE__DATABASE".to_string(), "bench_pipeline".to_string()),
        ("PLANFEED__LOG__LEVEL".to_string(), "warn".to_string()),
    ];
    let url = format!("file://{}", file.display());
    let mut runs = Vec::new();
    for _ in 0..2 {
        let s = Settings::load_with(Path::new("/nonexistent"), env.clone()).unwrap();
        let started = Instant::now();
        let record =
            planfeed::service::ingest_once(s, Some(url.clone()), Some("bench".into()), false).await.unwrap();
        runs.push((record, started.elapsed()));
    }
    let (first, t1) = &runs[0];
    println!(
        "pipeline ingest:    {:>10.0} zone rows/s ({} plans written in {:.0} ms, parse included)",
        zone_rows as f64 / t1.as_secs_f64(),
        first.plans_written,
        t1.as_secs_f64() * 1e3
    );
    let (again, t2) = &runs[1];
    println!(
        "re-ingest unchanged: {} plan rows written, {} unchanged, in {:.0} ms (target 0 written)",
        again.plans_written,
        again.plans_unchanged,
        t2.as_secs_f64() * 1e3
    );

    // 3. One-month searches straight from ClickHouse (no cache).
    let (lo, hi) = store.day_bounds().await.unwrap().unwrap();
    let months: Vec<NaiveDate> = lo.iter_days().step_by(31).take_while(|d| *d <= hi).collect();
    let mut samples = Vec::new();
    let mut rows = 0;
    for i in 0..200 {
        let from = months[i % months.len()];
        let to = from + chrono::Duration::days(30);
        let started = Instant::now();
        rows += store.plans_by_day(from, to).await.unwrap().len();
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "one-month search:   median {:.2} ms, p99 {:.2} ms ({} samples, {:.0} plans per month on average, {} plans over {} to {})",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len(),
        rows as f64 / samples.len() as f64,
        stored.len(),
        lo,
        hi
    );
}
