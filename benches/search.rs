//! `cargo bench --bench search`: the `/search` handler over a warm cache (1-day, 1-month and
//! 1-year ranges on a store of 50k plans over 5 years, about 27 per day) and `params::parse_range`.
//! The feed's parser is benched by `benches/parser.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use planfeed::config::{RateLimitSettings, SearchSettings};
use planfeed::domain::{Plan, PlanKey, StoredPlan, Zone};
use planfeed::http::params::parse_range;
use planfeed::http::rate_limit::Limiter;
use planfeed::http::{search_handler, ApiState, SearchRequest};
use planfeed::metrics::MetricsSource;
use planfeed::search::Searcher;
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use rust_decimal::Decimal;

const PLANS: u64 = 50_000;
const YEARS: i64 = 5;

fn origin() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2021, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap()
}

/// Plans spread evenly (deterministically) over the years, one zone each.
fn plans() -> Vec<StoredPlan> {
    let step = YEARS * 365 * 24 * 3600 / PLANS as i64;
    (0..PLANS)
        .map(|i| {
            let start = origin() + chrono::Duration::seconds(i as i64 * step);
            let plan = Plan {
                key: PlanKey::new("fever", i / 8, i),
                title: format!("Generated plan {i}").into(),
                online: true,
                organizer_company_id: Some(1),
                start,
                end: start + chrono::Duration::hours(2),
                sell_from: None,
                sell_to: None,
                sold_out: false,
                zones: vec![Zone {
                    zone_id: 1,
                    name: "zone".into(),
                    capacity: 100,
                    price: Decimal::new(2000 + i as i64 % 5000, 2),
                    numbered: false,
                }],
            };
            StoredPlan::new(plan, chrono_tz::UTC, true, 1)
        })
        .collect()
}

fn bench_search(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap());
    rt.block_on(async {
        for batch in plans().chunks(10_000) {
            store.write_plans(batch).await.unwrap();
        }
    });
    let settings = SearchSettings {
        cache_bytes: 1 << 30,
        cache_ttl: Duration::from_secs(3600),
        change_poll: Duration::from_secs(1),
        store_deadline: Duration::from_millis(100),
    };
    let readiness_store = store.clone();
    let searcher = Arc::new(Searcher::new(store, &settings));
    let limits = RateLimitSettings {
        per_client_per_second: u32::MAX / 2,
        per_client_burst: u32::MAX / 2,
        global_per_second: u32::MAX / 2,
        global_burst: u32::MAX / 2,
        ..RateLimitSettings::default()
    };
    let state = Arc::new(ApiState {
        searcher: searcher.clone(),
        limiter: Limiter::new(&limits),
        metrics: MetricsSource { parts: vec![searcher.clone()], permits: None },
        readiness: Arc::new(planfeed::readiness::Readiness::new(searcher.clone(), readiness_store, None)),
        cache_control: planfeed::http::cache_control(Duration::from_secs(1)),
    });
    // Warm every day once.
    rt.block_on(searcher.search(Default::default())).unwrap();

    let mut group = c.benchmark_group("search_handler");
    for (name, query) in [
        ("1-day", "starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z"),
        ("1-month", "starts_at=2023-06-01T00:00:00Z&ends_at=2023-07-01T00:00:00Z"),
        ("1-year", "starts_at=2023-01-01T00:00:00Z&ends_at=2024-01-01T00:00:00Z"),
    ] {
        let target: warp::http::uri::PathAndQuery = format!("/search?{query}").parse().unwrap();
        let req = || SearchRequest {
            remote: Some(([127, 0, 0, 1], 40000).into()),
            target: Some(target.clone()),
            ..SearchRequest::default()
        };
        let body = rt.block_on(searcher.search(parse_range(query).unwrap())).unwrap();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let res = rt.block_on(search_handler(req(), state.clone()));
                assert_eq!(res.status(), 200);
                res
            })
        });
    }
    group.finish();

    c.bench_function("parse_range", |b| {
        b.iter(|| {
            parse_range("starts_at=2021-07-21T17%3A32%3A28Z&ends_at=2021-07-21T19:32:28.5%2B02:00").unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_search
}
criterion_main!(benches);
