//! The ClickHouse store against a real, throwaway `clickhouse-server` (see `tests/common/clickhouse.rs`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use futures::FutureExt;
use planfeed::domain::{FetchOutcome, FetchRecord, Plan, PlanKey, StoredPlan, Zone};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::{ReadSize, SharedStore, Store, StoreError};

use common::clickhouse::ClickHouseServer;
use common::conformance;

async fn store_on(server: &ClickHouseServer) -> ClickHouseStore {
    let store = ClickHouseStore::connect(settings_for(server)).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// Starts a server and a migrated store, or returns from the test when ClickHouse is not installed.
macro_rules! setup {
    () => {{
        let Some(server) = ClickHouseServer::start() else { return };
        let store = store_on(&server).await;
        (server, store)
    }};
}

fn settings_for(server: &ClickHouseServer) -> ClickHouseSettings {
    ClickHouseSettings {
        url: server.url(),
        database: "planfeed_test".into(),
        ..ClickHouseSettings::default()
    }
}

/// Reopens the store over the same database, as a process restart would (migrations included).
fn reopen_on(
    server: &ClickHouseServer,
) -> impl Fn(SharedStore) -> futures::future::BoxFuture<'static, SharedStore> {
    let settings = settings_for(server);
    move |old: SharedStore| {
        let settings = settings.clone();
        async move {
            drop(old);
            let store = ClickHouseStore::connect(settings).await.expect("reconnect");
            assert!(store.migrate().await.expect("migrate after restart").is_empty());
            Arc::new(store) as SharedStore
        }
        .boxed()
    }
}

#[tokio::test]
async fn conformance_run_all() {
    let (server, store) = setup!();
    conformance::run_all(Arc::new(store), reopen_on(&server)).await;
}

/// One test per conformance case, each on its own fresh server, so a failure names its case.
macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let (_server, store) = setup!();
            conformance::$case(&(Arc::new(store) as SharedStore)).await;
        }
    )*};
}

mod conformance_case {
    use super::*;

    conformance_cases!(
        fresh_store_is_empty,
        latest_version_wins,
        ever_online_is_sticky,
        marking_ever_online_keeps_the_latest_values,
        moved_start_date_shows_once_on_its_new_day,
        day_boundaries_and_order,
        prices_are_exact,
        plan_states_round_trip,
        day_bounds_cover_ever_online_days,
        day_directory_lists_ever_online_days_with_sizes,
        extreme_days_are_stored_ordered_and_searched,
        change_feed_lists_the_days_written_since_a_marker,
        fetch_log_round_trip,
    );

    #[tokio::test]
    async fn restart_keeps_everything() {
        let (server, store) = setup!();
        conformance::restart_keeps_everything(Arc::new(store), &reopen_on(&server)).await;
    }
}

fn dt(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn zone(id: u64, price: &str) -> Zone {
    Zone {
        zone_id: id,
        name: format!("Zone {id}"),
        capacity: 100,
        price: price.parse().unwrap(),
        numbered: true,
    }
}

fn plan(base: u64, id: u64, title: &str, start: &str, end: &str, online: bool, prices: &[&str]) -> Plan {
    Plan {
        key: PlanKey::new("fever", base, id),
        title: title.into(),
        online,
        organizer_company_id: Some(7),
        start: dt(start),
        end: dt(end),
        sell_from: Some(dt("2021-01-01T00:00:00")),
        sell_to: None,
        sold_out: false,
        zones: prices.iter().enumerate().map(|(i, p)| zone(i as u64 + 1, p)).collect(),
    }
}

fn stored(p: Plan, version: u64) -> StoredPlan {
    StoredPlan::new(p, Tz::UTC, false, version)
}

fn raw_client(server: &ClickHouseServer) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(server.url())
        .with_database("planfeed_test")
        .with_validation(false)
        .with_setting("wait_end_of_query", "1")
}

/// A query's result as TSV text.
async fn raw_rows(server: &ClickHouseServer, sql: &str) -> String {
    let mut cursor = raw_client(server).query(sql).fetch_bytes("TSV").unwrap();
    String::from_utf8(cursor.collect().await.unwrap().to_vec()).unwrap()
}

/// A statement without result (DDL, OPTIMIZE).
async fn raw_exec(server: &ClickHouseServer, sql: &str) {
    raw_client(server).query(sql).execute().await.unwrap();
}

#[tokio::test]
async fn migrations_run_once() {
    let (server, store) = setup!();
    // `setup!` already migrated: a second and a third run apply nothing.
    assert_eq!(store.migrate().await.unwrap(), Vec::<String>::new());
    let again = store_on(&server).await;
    assert_eq!(again.migrate().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        raw_rows(&server, "SELECT name FROM schema_migrations ORDER BY name").await,
        "001_init\n002_exact_days\n003_day_changes\n004_analyst_schema\n005_analyst_views\n006_drop_copies\n"
    );
    let tables = raw_rows(
        &server,
        "SELECT name, engine FROM system.tables WHERE database = 'planfeed_test' ORDER BY name",
    )
    .await;
    assert_eq!(
        tables,
        "day_changes\tReplacingMergeTree\nfetches\tMergeTree\nplans\tReplacingMergeTree\nplans_current\tView\n\
         schema_migrations\tMergeTree\nzones\tReplacingMergeTree\nzones_current\tView\n"
    );

    // A fresh database reports what it applied.
    let fresh = ClickHouseStore::connect(ClickHouseSettings {
        url: server.url(),
        database: "planfeed_other".into(),
        ..ClickHouseSettings::default()
    })
    .await
    .unwrap();
    assert_eq!(
        fresh.migrate().await.unwrap(),
        [
            "001_init",
            "002_exact_days",
            "003_day_changes",
            "004_analyst_schema",
            "005_analyst_views",
            "006_drop_copies"
        ]
        .map(String::from)
        .to_vec()
    );
    assert_eq!(fresh.migrate().await.unwrap(), Vec::<String>::new());
}

/// A database on the first schema (Date/DateTime columns only) keeps its plans through migration 002,
/// which keys `plans` by exact integer days; far dates are written and read exactly afterwards.
#[tokio::test]
async fn the_exact_days_migration_keeps_existing_plans() {
    let Some(server) = ClickHouseServer::start() else { return };
    // The schema as the first release left it.
    let store = ClickHouseStore::connect(settings_for(&server)).await.unwrap();
    assert_eq!(store.migrate_to("001_init").await.unwrap(), vec!["001_init".to_string()]);
    let old = stored(
        plan(1, 1, "written before", "2021-06-30T21:00:00", "2021-06-30T23:00:00", true, &["20.00"]),
        7,
    );
    raw_exec(
        &server,
        &format!(
            "INSERT INTO plans (provider, base_plan_id, plan_id, id, title, online, ever_online, \
                 organizer_company_id, start_local, end_local, start_utc, end_utc, event_date, sell_from, \
                 sell_to, sold_out, min_price, max_price, zone_count, version, hash, superseded, written_at) \
             VALUES ('fever', 1, 1, '{}', 'written before', 1, 1, NULL, '2021-06-30 21:00:00', \
                 '2021-06-30 23:00:00', '2021-06-30 21:00:00', '2021-06-30 23:00:00', '2021-06-30', NULL, \
                 NULL, 0, '20.00', '20.00', 1, 7, {}, 0, '2021-07-01 00:00:00')",
            old.plan.key.id(),
            old.hash
        ),
    )
    .await;

    // Zones as 001 kept them: exact text, one with more than 4 decimals, one beyond 14 digits.
    raw_exec(
        &server,
        "INSERT INTO zones (provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, \
             capacity, price, numbered) \
         VALUES ('fever', 1, 1, 7, '2021-06-30', 0, 1, 'a', 10, '7.5', 1), \
                ('fever', 1, 1, 7, '2021-06-30', 1, 2, 'b', 10, '123456789.123456789', 1), \
                ('fever', 1, 1, 7, '2021-06-30', 2, 3, 'c', 10, '999999999999999999.99', 0)",
    )
    .await;
    assert_eq!(
        store.migrate_to("004_analyst_schema").await.unwrap(),
        ["002_exact_days", "003_day_changes", "004_analyst_schema"].map(String::from).to_vec()
    );
    let rows = store.plans_by_day(day("2021-06-30"), day("2021-06-30")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].title.as_str(), rows[0].start_local, rows[0].end_utc),
        ("written before", old.plan.start, old.end_utc)
    );
    let states = store.load_plan_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].1.event_date, states[0].1.version, states[0].1.hash),
        (day("2021-06-30"), 7, old.hash)
    );
    assert_eq!(raw_rows(&server, "SELECT count() FROM plans_v1").await, "1\n", "the old table is kept");
    // 004: prices become numbers beside their exact text, the version's fetch time a column.
    assert_eq!(
        raw_rows(
            &server,
            "SELECT min_price, max_price, min_price_text, toUnixTimestamp(fetched_at), toTypeName(min_price) FROM plans"
        )
        .await,
        "20.0000\t20.0000\t20.00\t0\tNullable(Decimal(18, 4))\n"
    );
    assert_eq!(
        raw_rows(&server, "SELECT zone_id, price, price_text FROM zones ORDER BY idx").await,
        "1\t7.5000\t7.5\n2\t123456789.1234\t123456789.123456789\n3\t\\N\t999999999999999999.99\n"
    );
    assert_eq!(raw_rows(&server, "SELECT count() FROM zones_v1").await, "3\n", "the old zones are kept");
    // 006: every row of the copies is in the current tables, so they go.
    assert_eq!(
        store.migrate().await.unwrap(),
        ["005_analyst_views", "006_drop_copies"].map(String::from).to_vec()
    );
    assert_eq!(raw_rows(&server, "EXISTS TABLE plans_v1").await, "0\n");

    // A newer version after the upgrade replaces it; far days sit beside it.
    let newer = stored(
        plan(1, 1, "written after", "2021-06-30T21:00:00", "2021-06-30T23:00:00", true, &["20.00"]),
        8,
    );
    let far = stored(plan(1, 2, "far", "9999-12-31T22:00:00", "9999-12-31T23:00:00", true, &["1"]), 1);
    store.write_plans(&[newer.clone(), far.clone()]).await.unwrap();
    let all = store.plans_by_day(day("2021-06-30"), day("9999-12-31")).await.unwrap();
    assert_eq!(
        all,
        vec![planfeed::domain::EventRow::from_stored(&newer), planfeed::domain::EventRow::from_stored(&far)]
    );
}

/// A client of the server's default database: the upgrade tests name their databases.
fn server_client(server: &ClickHouseServer) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(server.url())
        .with_validation(false)
        .with_setting("wait_end_of_query", "1")
}

async fn exec_in(server: &ClickHouseServer, sql: &str) {
    server_client(server).query(sql).execute().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn rows_in(server: &ClickHouseServer, sql: &str) -> String {
    let mut cursor = server_client(server).query(sql).fetch_bytes("TSV").unwrap();
    String::from_utf8(cursor.collect().await.unwrap().to_vec()).unwrap()
}

/// Fetch log rows as a release before 005 kept them (an error text, no outcome), with the outcome
/// their text must give: the download's failures as [`FetchError`] words them, and the writer's
/// notes.
fn older_fetch_errors() -> Vec<(Option<String>, FetchOutcome)> {
    use planfeed::feed::FeedError;
    use planfeed::fetch::{FetchError, RequestError};
    use std::time::Duration;
    let send = |chain: &str, timed_out: bool| FetchError::Request {
        cause: RequestError::Send {
            url: "http://p/feed".into(),
            chain: chain.into(),
            timed_out,
            transient: true,
        },
        retries: 2,
        out_of_time: None,
    };
    let failures = [
        FetchError::Request {
            cause: RequestError::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE),
            retries: 2,
            out_of_time: None,
        },
        send("error sending request for url (http://p/feed): operation timed out", true),
        send("error sending request for url (http://p/feed): tcp connect error: Connection refused", false),
        FetchError::BodyRead {
            bytes: 9,
            chain: "no body bytes from the provider for 10s".into(),
            timed_out: true,
        },
        FetchError::BodyRead { bytes: 9, chain: "connection reset by peer".into(), timed_out: false },
        FetchError::BodyTimeout { timeout: Duration::from_secs(30), bytes: 9 },
        FetchError::TooLarge { limit: 100 },
        FetchError::Feed(FeedError::Truncated { bytes: 18 }),
        FetchError::Feed(FeedError::NotXml("<html>".into())),
        FetchError::CircuitOpen { failures: 3, remaining: Duration::from_secs(5) },
        FetchError::Backpressure { timeout: Duration::from_secs(30) },
        FetchError::Interrupted { bytes: 4096 },
        FetchError::ShuttingDown,
        FetchError::OpenFile {
            path: "/feeds/x.xml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
        },
    ];
    let mut out = vec![(None, FetchOutcome::Ok)];
    out.extend(failures.iter().map(|e| (Some(e.to_string()), e.outcome())));
    out.extend([
        (
            Some("provider answered HTTP 500 Internal Server Error; store rejected 3 plans (written 40, spooled 2): Code: 53".into()),
            FetchOutcome::StoreRejected,
        ),
        (
            Some("store and spool refused writes (spool full): the download was held until it took them".into()),
            FetchOutcome::SpoolFull,
        ),
        (Some("malformed xml: unexpected end of a base plan".into()), FetchOutcome::BadFeed),
    ]);
    out
}

/// A database `db` as releases up to 004 leave it, every copy holding rows:
/// - at 001: plan 1/1 (version 7, two zones), plan 1/3 never on sale online, and the fetch log of
///   [`older_fetch_errors`], one row a second from 2021-06-01 10:00:00;
/// - 002 copies `plans` (then `plans_v1`); at 002: plan 1/1 at version 8 (its zones too), plan
///   1/2 on 2021-07-02;
/// - 004 copies `plans` (then `plans_v2`) and `zones` (then `zones_v1`).
///
/// Then `plans` is merged, so version 7 of plan 1/1 is only in the copies.
async fn database_at_004(server: &ClickHouseServer, db: &str) {
    let store = ClickHouseStore::connect(settings_in(server, db, false)).await.unwrap();
    store.migrate_to("001_init").await.unwrap();
    let id = |plan: u64| PlanKey::new("fever", 1, plan).id();
    exec_in(server, &format!(
        "INSERT INTO {db}.plans (provider, base_plan_id, plan_id, id, title, online, ever_online, start_local, \
             end_local, start_utc, end_utc, event_date, min_price, max_price, zone_count, version, hash, superseded) \
         VALUES ('fever', 1, 1, '{}', 'first release', 1, 1, '2021-06-30 21:00:00', '2021-06-30 22:00:00', \
                 '2021-06-30 21:00:00', '2021-06-30 22:00:00', '2021-06-30', '15.00', '20.00', 2, 7, 70, 0), \
                ('fever', 1, 3, '{}', 'never online', 0, 0, '2021-06-30 10:00:00', '2021-06-30 11:00:00', \
                 '2021-06-30 10:00:00', '2021-06-30 11:00:00', '2021-06-30', '5', '5', 1, 7, 73, 0)",
        id(1), id(3)
    ))
    .await;
    let zones = |version: u64, day: &str, prices: [&str; 2]| {
        format!(
            "INSERT INTO {db}.zones (provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, capacity, \
                 price, numbered) \
             VALUES ('fever', 1, 1, {version}, '{day}', 0, 1, 'Platea', 10, '{}', 1), \
                    ('fever', 1, 1, {version}, '{day}', 1, 2, 'Grada', 0, '{}', 0)",
            prices[0], prices[1]
        )
    };
    exec_in(server, &zones(7, "2021-06-30", ["15.00", "20.00"])).await;
    exec_in(server, &format!(
        "INSERT INTO {db}.zones (provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, capacity, \
             price, numbered) VALUES ('fever', 1, 3, 7, '2021-06-30', 0, 9, 'Pista', 0, '5', 0)"
    ))
    .await;
    for (i, (error, _)) in older_fetch_errors().into_iter().enumerate() {
        server_client(server)
            .query(&format!(
                "INSERT INTO {db}.fetches (provider, started_at, duration_ms, error) VALUES ('fever', ?, 100, ?)"
            ))
            .bind(format!("2021-06-01 10:{:02}:{:02}", i / 60, i % 60))
            .bind(error)
            .execute()
            .await
            .unwrap();
    }
    store.migrate_to("002_exact_days").await.unwrap();
    let us = |t: &str| format!("toInt64(toDateTime('{t}', 'UTC')) * 1000000");
    for (plan, title, start, end, low, hash) in [
        (1, "second release", "2021-06-30 21:00:00", "2021-06-30 22:00:00", "16.00", 80),
        (2, "moved in", "2021-07-02 20:00:00", "2021-07-02 21:00:00", "9.50", 82),
    ] {
        let day = &start[..10];
        exec_in(server, &format!(
            "INSERT INTO {db}.plans (provider, base_plan_id, plan_id, id, title, online, ever_online, start_local, \
                 end_local, start_utc, end_utc, event_date, min_price, max_price, zone_count, version, hash, \
                 superseded, event_day, start_us, end_us, start_local_us, end_local_us, written_us) \
             VALUES ('fever', 1, {plan}, '{}', '{title}', 1, 1, '{start}', '{end}', '{start}', '{end}', '{day}', \
                 '{low}', '20.00', 2, 8, {hash}, 0, toInt32(toDate('{day}')), {}, {}, {}, {}, 0)",
            id(plan), us(start), us(end), us(start), us(end)
        ))
        .await;
    }
    exec_in(server, &zones(8, "2021-06-30", ["16.00", "20.00"])).await;
    store.migrate_to("004_analyst_schema").await.unwrap();
    exec_in(server, &format!("OPTIMIZE TABLE {db}.plans FINAL")).await;
}

fn settings_in(server: &ClickHouseServer, db: &str, keep_superseded_tables: bool) -> ClickHouseSettings {
    ClickHouseSettings {
        url: server.url(),
        database: db.into(),
        keep_superseded_tables,
        ..Default::default()
    }
}

async fn copy_sizes(server: &ClickHouseServer, db: &str) -> String {
    let names = rows_in(
        server,
        &format!(
            "SELECT name FROM system.tables WHERE database = '{db}' \
             AND name IN ('plans_v1', 'plans_v2', 'zones_v1') ORDER BY name"
        ),
    )
    .await;
    let mut out = String::new();
    for name in names.lines() {
        let count = rows_in(server, &format!("SELECT count() FROM {db}.{name}")).await;
        out.push_str(&format!("{name}\t{count}"));
    }
    out
}

/// Upgraded from 004 with rows in every copy: 006 finds each row of the copies in the current
/// tables (plan 1/1's version 7 through its newer version 8) and drops them; the plans, zones
/// and fetches are all there, read through the views and the fetch log's new columns.
#[tokio::test]
async fn the_table_copies_go_once_their_rows_are_verified_and_the_data_stays() {
    let Some(server) = ClickHouseServer::start() else { return };
    database_at_004(&server, "upgraded").await;
    assert_eq!(copy_sizes(&server, "upgraded").await, "plans_v1\t2\nplans_v2\t4\nzones_v1\t5\n");
    assert_eq!(
        rows_in(&server, "SELECT count() FROM upgraded.plans").await,
        "3\n",
        "merged: 1/1 v8, 1/2, 1/3"
    );

    let store = ClickHouseStore::connect(settings_in(&server, "upgraded", false)).await.unwrap();
    assert_eq!(store.migrate().await.unwrap(), ["005_analyst_views", "006_drop_copies"].map(String::from));
    assert_eq!(copy_sizes(&server, "upgraded").await, "", "the copies are gone");
    assert_eq!(
        rows_in(&server, "SELECT plan_id, title, event_date, min_price, max_price, version FROM upgraded.plans_current ORDER BY plan_id").await,
        "1\tsecond release\t2021-06-30\t16.0000\t20.0000\t8\n2\tmoved in\t2021-07-02\t9.5000\t20.0000\t8\n",
        "the searchable plans, latest versions"
    );
    assert_eq!(
        rows_in(&server, "SELECT plan_id, version, zone_id, capacity, price FROM upgraded.zones_current ORDER BY plan_id, idx").await,
        "1\t8\t1\t10\t16.0000\n1\t8\t2\t0\t20.0000\n"
    );
    assert_eq!(
        rows_in(
            &server,
            "SELECT version, count(), min(price) FROM upgraded.zones GROUP BY version ORDER BY version"
        )
        .await,
        "7\t3\t5.0000\n8\t2\t16.0000\n",
        "the zone history stays whole"
    );
    let rows = store.plans_by_day(day("2021-06-30"), day("2021-07-02")).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), ["second release", "moved in"]);

    // The fetch log: every older row has the outcome its text tells (the SQL of 005 agrees with
    // the Rust rule and with the outcome each failure has), counts only when the text gave them.
    let expected = older_fetch_errors();
    let mut fetches = store.recent_fetches(100).await.unwrap();
    fetches.reverse();
    assert_eq!(fetches.len(), expected.len());
    for (fetch, (error, outcome)) in fetches.iter().zip(&expected) {
        assert_eq!(&fetch.error, error);
        assert_eq!(fetch.outcome, *outcome, "{error:?}");
        assert_eq!(FetchOutcome::of_legacy_error(error.as_deref()), *outcome, "{error:?}");
        assert_eq!((fetch.plans_spooled, fetch.plans_dropped), FetchOutcome::legacy_counts(error.as_deref()));
    }
    assert_eq!(fetches[fetches.len() - 3].plans_dropped, Some(3));
    assert_eq!(
        rows_in(&server, "SELECT outcome, count() FROM upgraded.fetches GROUP BY outcome ORDER BY outcome").await,
        "backpressure\t1\nbad_feed\t2\nbody_error\t1\nconnect\t2\nhttp_error\t1\nok\t1\npipeline\t1\nshutdown\t1\n\
         skipped\t1\nspool_full\t1\nstore_rejected\t1\ntimeout\t3\ntoo_large\t1\ntruncated\t1\n"
    );
    // A new record keeps what the writer says, beside the older ones.
    let new = FetchRecord {
        provider: "fever".into(),
        started_at: Utc::now(),
        error: Some("provider answered HTTP 502 Bad Gateway".into()),
        outcome: FetchOutcome::HttpError,
        plans_spooled: Some(0),
        plans_dropped: Some(0),
        ..Default::default()
    };
    store.record_fetch(&new).await.unwrap();
    assert_eq!(store.recent_fetches(1).await.unwrap(), [new]);
}

/// With `keep_superseded_tables`, the copies stay and 006 waits (unrecorded); the first start
/// without it verifies and drops them.
#[tokio::test]
async fn kept_table_copies_stay_until_the_operator_lets_them_go() {
    let Some(server) = ClickHouseServer::start() else { return };
    database_at_004(&server, "kept").await;
    let keeping = ClickHouseStore::connect(settings_in(&server, "kept", true)).await.unwrap();
    assert_eq!(keeping.migrate().await.unwrap(), ["005_analyst_views"].map(String::from));
    assert_eq!(keeping.migrate().await.unwrap(), Vec::<String>::new(), "nothing else, at every start");
    assert_eq!(copy_sizes(&server, "kept").await, "plans_v1\t2\nplans_v2\t4\nzones_v1\t5\n");
    assert_eq!(
        rows_in(&server, "SELECT count() FROM kept.schema_migrations WHERE name = '006_drop_copies'").await,
        "0\n"
    );
    assert_eq!(
        rows_in(&server, "SELECT plan_id, title FROM kept.plans_current ORDER BY plan_id").await,
        "1\tsecond release\n2\tmoved in\n",
        "the views work beside the copies"
    );

    let letting_go = ClickHouseStore::connect(settings_in(&server, "kept", false)).await.unwrap();
    assert_eq!(letting_go.migrate().await.unwrap(), ["006_drop_copies"].map(String::from));
    assert_eq!(copy_sizes(&server, "kept").await, "");
    assert_eq!(keeping.migrate().await.unwrap(), Vec::<String>::new());
}

/// A copy holding a row its current table lacks is not dropped: the migration stops with an
/// error naming the copy and the row, and the service starts only with the copies kept.
#[tokio::test]
async fn a_copy_with_rows_the_current_table_lacks_is_kept_and_said() {
    let Some(server) = ClickHouseServer::start() else { return };
    for (db, copy, row) in [
        (
            "lost_plan",
            "plans_v2",
            "INSERT INTO lost_plan.plans_v2 (provider, base_plan_id, plan_id, title, ever_online, event_date, event_day, \
                 version, hash) VALUES ('fever', 1, 9, 'only in the copy', 1, '2021-06-30', toInt32(toDate('2021-06-30')), 9, 99)",
        ),
        (
            "lost_zone",
            "zones_v1",
            "INSERT INTO lost_zone.zones_v1 (provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, \
                 capacity, price, numbered) VALUES ('fever', 1, 1, 7, '2021-06-30', 2, 3, 'Palco', 4, '99.00', 1)",
        ),
    ] {
        database_at_004(&server, db).await;
        exec_in(&server, row).await;
        let store = ClickHouseStore::connect(settings_in(&server, db, false)).await.unwrap();
        let error = store.migrate().await.unwrap_err().to_string();
        let (lacking, example) = match copy {
            "plans_v2" => ("plans_v2 holds 1 of its 3 plans of month 202106 that plans lacks", "fever/1/9 on 2021-06-30"),
            _ => ("zones_v1 holds 1 of its 6 zones of month 202106 that zones lacks", "fever/1/1 version 7 zone 2"),
        };
        assert!(error.contains("migration 006_drop_copies: ") && error.contains(lacking), "{error}");
        assert!(error.contains(example) && error.contains("keep_superseded_tables = true"), "{error}");
        assert!(matches!(store.migrate().await, Err(StoreError::Permanent(_))), "refused at every start");
        assert_eq!(copy_sizes(&server, db).await.lines().count(), 3, "every copy is kept");
        let keeping = ClickHouseStore::connect(settings_in(&server, db, true)).await.unwrap();
        assert_eq!(keeping.migrate().await.unwrap(), Vec::<String>::new(), "005 was applied, 006 waits");
    }
}

#[tokio::test]
async fn round_trip_keeps_local_times_and_exact_prices() {
    let (server, store) = setup!();
    let madrid: Tz = "Europe/Madrid".parse().unwrap();
    let a = StoredPlan::new(
        plan(
            322,
            1642,
            "Concierto",
            "2021-06-30T21:00:00",
            "2021-06-30T22:00:00",
            true,
            &["20.00", "7.5", "100"],
        ),
        madrid,
        false,
        1,
    );
    let no_zones =
        stored(plan(1591, 1642, "Sin zonas", "2021-06-30T10:00:00", "2021-06-30T11:00:00", true, &[]), 1);
    let never_online =
        stored(plan(1600, 1, "Offline", "2021-06-30T12:00:00", "2021-06-30T13:00:00", false, &["5.00"]), 1);
    // Offline now, but seen online before: stays searchable.
    let sticky = StoredPlan::new(
        plan(1601, 2, "Sticky", "2021-06-30T09:00:00", "2021-06-30T09:30:00", false, &["1.10"]),
        Tz::UTC,
        true,
        1,
    );
    store.write_plans(&[a.clone(), no_zones.clone(), never_online, sticky.clone()]).await.unwrap();

    let rows = store.plans_by_day(day("2021-06-30"), day("2021-06-30")).await.unwrap();
    let titles: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    assert_eq!(titles, ["Sticky", "Sin zonas", "Concierto"]);

    let concierto = &rows[2];
    assert_eq!(concierto.id, PlanKey::new("fever", 322, 1642).id());
    assert_eq!(concierto.start_local, dt("2021-06-30T21:00:00"));
    assert_eq!(concierto.end_local, dt("2021-06-30T22:00:00"));
    assert_eq!(concierto.start_utc.to_rfc3339(), "2021-06-30T19:00:00+00:00");
    assert_eq!(concierto.end_utc.to_rfc3339(), "2021-06-30T20:00:00+00:00");
    assert_eq!(concierto.min_price.unwrap().to_string(), "7.5");
    assert_eq!(concierto.max_price.unwrap().to_string(), "100");
    assert_eq!(concierto, &planfeed::domain::EventRow::from_stored(&a));
    assert_eq!(rows[0], planfeed::domain::EventRow::from_stored(&sticky));
    assert_eq!(rows[0].min_price.unwrap().to_string(), "1.10");
    assert_eq!((rows[1].min_price, rows[1].max_price), (None, None));

    // The zones rows carry the price as a number and as the feed's exact text, in feed order.
    let sql =
        "SELECT provider, idx, zone_id, name, capacity, price, price_text, numbered, version FROM zones \
               WHERE base_plan_id = 322 AND plan_id = 1642 ORDER BY idx FORMAT TSV";
    let sql = percent_encoding::utf8_percent_encode(sql, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{}/?database=planfeed_test&query={sql}", server.url());
    let zones = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert_eq!(
        zones,
        "fever\t0\t1\tZone 1\t100\t20.0000\t20.00\t1\t1\n\
         fever\t1\t2\tZone 2\t100\t7.5000\t7.5\t1\t1\n\
         fever\t2\t3\tZone 3\t100\t100.0000\t100\t1\t1\n"
    );

    assert!(store.plans_by_day(day("2021-07-01"), day("2021-07-31")).await.unwrap().is_empty());
    assert!(store.plans_by_day(day("2021-06-29"), day("2021-06-29")).await.unwrap().is_empty());
    assert_eq!(store.day_bounds().await.unwrap(), Some((day("2021-06-30"), day("2021-06-30"))));
}

#[tokio::test]
async fn latest_version_wins() {
    let (_server, store) = setup!();
    let v1 = stored(plan(1, 10, "First", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["10.00"]), 1);
    let v3 = StoredPlan::new(
        plan(1, 10, "Third", "2021-06-30T20:00:00", "2021-06-30T22:00:00", false, &["12.50", "30"]),
        Tz::UTC,
        true,
        3,
    );
    let v2 = stored(plan(1, 10, "Second", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["11"]), 2);
    store.write_plans(&[v1]).await.unwrap();
    store.write_plans(std::slice::from_ref(&v3)).await.unwrap();
    // An older version arriving late never wins.
    store.write_plans(&[v2]).await.unwrap();
    // Re-writing the same batch is harmless.
    store.write_plans(std::slice::from_ref(&v3)).await.unwrap();

    let rows = store.plans_by_day(day("2021-06-30"), day("2021-06-30")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].title, "Third");
    assert_eq!(rows[0].start_local, dt("2021-06-30T20:00:00"));
    assert_eq!(rows[0].min_price.unwrap().to_string(), "12.50");
    assert_eq!(rows[0].max_price.unwrap().to_string(), "30");

    let states = store.load_plan_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0, PlanKey::new("fever", 1, 10));
    assert_eq!(states[0].1.version, 3);
    assert_eq!(states[0].1.hash, v3.hash);
    assert!(states[0].1.ever_online);
}

#[tokio::test]
async fn moved_plan_shows_only_on_its_new_day() {
    let (server, store) = setup!();
    let before = stored(plan(5, 50, "Moving", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["9"]), 1);
    let stay = stored(plan(5, 51, "Staying", "2021-06-30T18:00:00", "2021-06-30T19:00:00", true, &["9"]), 1);
    store.write_plans(&[before.clone(), stay]).await.unwrap();

    // Moved to another month, so the tombstone and the new row land in different partitions.
    let mut after =
        stored(plan(5, 50, "Moved", "2021-07-02T21:00:00", "2021-07-02T23:00:00", true, &["9"]), 2);
    after.previous_event_date = Some(before.event_date);
    store.write_plans(std::slice::from_ref(&after)).await.unwrap();

    let june = store.plans_by_day(day("2021-06-01"), day("2021-06-30")).await.unwrap();
    assert_eq!(june.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), ["Staying"]);
    let july = store.plans_by_day(day("2021-07-01"), day("2021-07-31")).await.unwrap();
    assert_eq!(july.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), ["Moved"]);
    let both = store.plans_by_day(day("2021-06-01"), day("2021-07-31")).await.unwrap();
    assert_eq!(both.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), ["Staying", "Moved"]);

    let states = store.load_plan_states().await.unwrap();
    let moved = states.iter().find(|(k, _)| k.plan_id == 50).unwrap().1;
    assert_eq!((moved.event_date, moved.version, moved.hash), (day("2021-07-02"), 2, after.hash));
    assert_eq!(store.day_bounds().await.unwrap(), Some((day("2021-06-30"), day("2021-07-02"))));

    // Still right after the background merges collapse the rows.
    raw_exec(&server, "OPTIMIZE TABLE plans FINAL").await;
    let june = store.plans_by_day(day("2021-06-01"), day("2021-06-30")).await.unwrap();
    assert_eq!(june.len(), 1);

    // Moving back: the old day's tombstone is replaced by the newer row.
    let mut back = stored(plan(5, 50, "Back", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["9"]), 3);
    back.previous_event_date = Some(after.event_date);
    store.write_plans(&[back]).await.unwrap();
    let both = store.plans_by_day(day("2021-06-01"), day("2021-07-31")).await.unwrap();
    assert_eq!(both.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), ["Staying", "Back"]);
}

#[tokio::test]
async fn the_store_keeps_ever_online_sticky_across_moves() {
    let (_server, store) = setup!();
    let v1 = stored(plan(3, 30, "Online", "2021-06-10T20:00:00", "2021-06-10T22:00:00", true, &["5"]), 1);
    store.write_plans(std::slice::from_ref(&v1)).await.unwrap();
    // Offline observations that say ever_online = false: the store knows better.
    let mut v2 =
        stored(plan(3, 30, "Offline, moved", "2021-07-20T20:00:00", "2021-07-20T22:00:00", false, &["6"]), 2);
    v2.previous_event_date = Some(v1.event_date);
    assert!(!v2.ever_online);
    store.write_plans(std::slice::from_ref(&v2)).await.unwrap();
    let v3 =
        stored(plan(3, 30, "Offline again", "2021-07-20T20:00:00", "2021-07-20T23:00:00", false, &["7"]), 3);
    store.write_plans(std::slice::from_ref(&v3)).await.unwrap();

    assert!(store.plans_by_day(day("2021-06-01"), day("2021-06-30")).await.unwrap().is_empty());
    let july = store.plans_by_day(day("2021-07-01"), day("2021-07-31")).await.unwrap();
    assert_eq!(july, vec![planfeed::domain::EventRow::from_stored(&v3)]);
    let states = store.load_plan_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].1.version, 3);
    assert!(states[0].1.ever_online);
}

#[tokio::test]
async fn plan_states_cover_every_stored_plan() {
    let (_server, store) = setup!();
    assert!(store.load_plan_states().await.unwrap().is_empty());
    assert_eq!(store.day_bounds().await.unwrap(), None);
    let offline = stored(plan(9, 1, "Off", "2021-05-01T10:00:00", "2021-05-01T11:00:00", false, &["1"]), 4);
    let online = stored(plan(9, 2, "On", "2021-05-02T10:00:00", "2021-05-02T11:00:00", true, &["1"]), 4);
    store.write_plans(&[offline.clone(), online.clone()]).await.unwrap();

    let mut states = store.load_plan_states().await.unwrap();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(states.len(), 2);
    assert_eq!(states[0].0, offline.plan.key);
    assert_eq!(states[0].1.hash, offline.hash);
    assert_eq!(states[0].1.event_date, day("2021-05-01"));
    assert_eq!(states[0].1.version, 4);
    assert!(!states[0].1.ever_online);
    assert_eq!(states[1].0, online.plan.key);
    assert!(states[1].1.ever_online);
    // Only the ever-online plan is searchable.
    assert_eq!(store.day_bounds().await.unwrap(), Some((day("2021-05-02"), day("2021-05-02"))));
}

#[tokio::test]
async fn fetch_log_round_trips_newest_first() {
    let (_server, store) = setup!();
    assert!(store.recent_fetches(10).await.unwrap().is_empty());
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let ok = FetchRecord {
        provider: "fever".into(),
        started_at: at("2021-06-30T10:00:00.123456789Z"),
        duration_ms: 1234,
        http_status: Some(200),
        bytes: 98765,
        plans_seen: 10,
        plans_written: 3,
        plans_unchanged: 6,
        plans_skipped: 1,
        error: None,
        outcome: FetchOutcome::Ok,
        plans_spooled: Some(0),
        plans_dropped: Some(0),
    };
    let failed = FetchRecord {
        started_at: at("2021-06-30T10:00:00.5Z"),
        http_status: Some(503),
        error: Some("provider answered 503".into()),
        outcome: FetchOutcome::HttpError,
        plans_spooled: Some(4),
        ..FetchRecord { provider: "fever".into(), ..Default::default() }
    };
    let down = FetchRecord {
        started_at: at("2021-07-01T00:00:00Z"),
        http_status: None,
        error: Some("connection refused".into()),
        outcome: FetchOutcome::Connect,
        ..FetchRecord { provider: "fever".into(), ..Default::default() }
    };
    for f in [&ok, &failed, &down] {
        store.record_fetch(f).await.unwrap();
    }
    assert_eq!(store.recent_fetches(10).await.unwrap(), vec![down.clone(), failed.clone(), ok.clone()]);
    assert_eq!(store.recent_fetches(2).await.unwrap(), vec![down, failed]);
    assert!(store.recent_fetches(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn plans_are_partitioned_by_month_and_searches_read_only_their_days() {
    let (server, store) = setup!();
    let june: Vec<StoredPlan> = (0..3)
        .map(|i| stored(plan(1, i, "June", "2021-06-15T10:00:00", "2021-06-15T11:00:00", true, &["1"]), 1))
        .collect();
    let july: Vec<StoredPlan> = (100..20_100)
        .map(|i| stored(plan(1, i, "July", "2021-07-15T10:00:00", "2021-07-15T11:00:00", true, &["1"]), 1))
        .collect();
    store.write_plans(&june).await.unwrap();
    store.write_plans(&july).await.unwrap();

    let partitions =
        raw_rows(&server, "SELECT DISTINCT partition FROM system.parts WHERE database = 'planfeed_test' AND table = 'plans' AND active ORDER BY partition").await;
    assert_eq!(partitions, "202106\n202107\n");
    let zone_partitions =
        raw_rows(&server, "SELECT DISTINCT partition FROM system.parts WHERE database = 'planfeed_test' AND table = 'zones' AND active ORDER BY partition").await;
    assert_eq!(zone_partitions, "202106\n202107\n");

    // The search's WHERE, bounded to read at most 10 000 rows (one granule is 8192): it only succeeds when the July partition
    // (20 000 rows) is pruned. Without FINAL: 18.16 does not enforce `max_rows_to_read` under FINAL,
    // and pruning is decided by the same WHERE before FINAL merges what it read.
    let limited = |from: &str, to: &str| {
        format!(
            "SELECT count() FROM plans WHERE event_date BETWEEN toDate('{from}') AND toDate('{to}') \
             AND ever_online = 1 AND superseded = 0 SETTINGS max_rows_to_read = 10000"
        )
    };
    assert_eq!(raw_rows(&server, &limited("2021-06-01", "2021-06-30")).await, "3\n");
    let err =
        raw_client(&server).query(&limited("2021-06-01", "2021-07-31")).fetch_one::<u64>().await.unwrap_err();
    assert!(err.to_string().contains("Limit for rows"), "{err}");

    let started = Instant::now();
    let rows = store.plans_by_day(day("2021-06-15"), day("2021-06-15")).await.unwrap();
    let one_day = started.elapsed();
    assert_eq!(rows.len(), 3);
    let started = Instant::now();
    let rows = store.plans_by_day(day("2021-07-01"), day("2021-07-31")).await.unwrap();
    let month = started.elapsed();
    assert_eq!(rows.len(), 20_000);
    eprintln!("plans_by_day: 3-row day {one_day:?}, 20 000-row month {month:?} (debug build)");
}

/// A read of a day or a month asks the server for priority 1, a read of more than 62 days (a year,
/// the open range) for priority 2: the server pauses the wide read while a short one runs. A
/// search's read carries the search's size instead: a year that holds little is short, and a day
/// read for the open range is wide. Checked on what the server itself logged of each read.
#[tokio::test]
async fn short_reads_run_at_a_higher_priority_than_wide_ones() {
    let (server, store) = setup!();
    let plans: Vec<StoredPlan> = (0..2)
        .map(|i| stored(plan(3, i, "Prio", "2021-06-15T10:00:00", "2021-06-15T11:00:00", true, &["1"]), 1))
        .collect();
    store.write_plans(&plans).await.unwrap();
    assert_eq!(store.plans_by_day(day("2021-06-15"), day("2021-06-15")).await.unwrap().len(), 2);
    assert_eq!(store.plans_by_day(day("2021-06-01"), day("2021-07-31")).await.unwrap().len(), 2);
    assert_eq!(store.plans_by_day(day("2021-01-01"), day("2021-12-31")).await.unwrap().len(), 2);
    let sized = |from, to, size| store.plans_by_day_sized(day(from), day(to), size);
    assert_eq!(sized("2021-02-01", "2022-01-31", ReadSize::Short).await.unwrap().len(), 2);
    assert_eq!(sized("2021-06-14", "2021-06-15", ReadSize::Wide).await.unwrap().len(), 2);
    raw_exec(&server, "SYSTEM FLUSH LOGS").await;
    let logged = raw_rows(
        &server,
        "SELECT Settings.Values[indexOf(Settings.Names, 'priority')] FROM system.query_log \
         WHERE type = 2 AND query LIKE '%FROM plans FINAL%WHERE event_day BETWEEN%' \
         AND query NOT LIKE '%system.query_log%' ORDER BY query",
    )
    .await;
    // Ordered by the query text, so by the first day: the year, the short year, the 61 days, the
    // wide two days, the day.
    assert_eq!(
        logged, "2\n1\n1\n2\n1\n",
        "the priorities of a year, a short year, 61 days, wide days, a day"
    );
}

#[tokio::test]
async fn a_bulk_batch_is_one_insert_per_table() {
    let (server, store) = setup!();
    let batch: Vec<StoredPlan> = (0..5_000)
        .map(|i| {
            let prices = ["10.00", "12.50", "7.5", "100"];
            stored(plan(2, i, "Bulk", "2021-08-01T10:00:00", "2021-08-01T11:00:00", true, &prices), 1)
        })
        .collect();
    let started = Instant::now();
    store.write_plans(&batch).await.unwrap();
    eprintln!("write_plans: 5 000 plans + 20 000 zones in {:?} (debug build)", started.elapsed());
    assert_eq!(raw_rows(&server, "SELECT count() FROM plans").await, "5000\n");
    assert_eq!(raw_rows(&server, "SELECT count(), sum(price) FROM zones").await, "20000\t650000.0000\n");
    // One insert per table: one part each.
    assert_eq!(
        raw_rows(&server, "SELECT table, count() FROM system.parts WHERE database = 'planfeed_test' AND table IN ('plans', 'zones') GROUP BY table ORDER BY table").await,
        "plans\t1\nzones\t1\n"
    );
}

#[tokio::test]
async fn a_missing_table_is_the_store_s_refusal_a_wrong_column_a_rejection() {
    let (server, store) = setup!();
    raw_exec(&server, "DROP TABLE plans").await;
    let p = stored(plan(1, 1, "X", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["1"]), 1);
    let err = store.write_plans(&[p]).await.unwrap_err();
    assert_eq!(err.refusal(), Some(planfeed::store::Refusal::MissingTable), "{err:?}");
    let err = store.plans_by_day(day("2021-06-30"), day("2021-06-30")).await.unwrap_err();
    assert_eq!(err.refusal(), Some(planfeed::store::Refusal::MissingTable), "{err:?}");

    // A column of the wrong type: the server refuses the rows it cannot read.
    raw_exec(&server, "ALTER TABLE fetches MODIFY COLUMN http_status UInt64").await;
    let err = store
        .record_fetch(&FetchRecord { provider: "fever".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn a_stopped_server_is_unavailable() {
    let (mut server, store) = setup!();
    store.ping().await.unwrap();
    server.stop();
    assert!(matches!(store.ping().await.unwrap_err(), StoreError::Unavailable(_)));
    let p = stored(plan(1, 1, "X", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["1"]), 1);
    let started = Instant::now();
    let err = store.write_plans(&[p]).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // Retried inside the store with a capped backoff, then handed back to the writer.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(matches!(store.load_plan_states().await.unwrap_err(), StoreError::Unavailable(_)));
    assert!(matches!(store.recent_fetches(5).await.unwrap_err(), StoreError::Unavailable(_)));
    assert!(matches!(
        ClickHouseStore::connect(ClickHouseSettings { url: server.url(), ..Default::default() })
            .await
            .unwrap_err(),
        StoreError::Unavailable(_)
    ));
}

#[test]
fn settings_reject_unknown_fields_and_bad_names() {
    let parsed: ClickHouseSettings =
        serde_json::from_str(r#"{"url": "http://ch:8123", "database": "feed", "password": "s"}"#).unwrap();
    assert_eq!(parsed.user, "default");
    assert_eq!(parsed.password.as_deref(), Some("s"));
    assert!(parsed.validate().is_ok());
    assert!(serde_json::from_str::<ClickHouseSettings>(r#"{"uri": "http://ch:8123"}"#).is_err());
    let bad = ClickHouseSettings { database: "feed; DROP".into(), ..Default::default() };
    assert!(bad.validate().is_err());
}

/// A fake ClickHouse that answers its first `ok_first` requests with an empty 200 and every later one
/// with `status` and `body`, counting the requests (one connection each).
async fn fake_server(
    ok_first: usize,
    status: &'static str,
    body: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = counter.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if seen < ok_first { ("200 OK", "") } else { (status, body) };
            tokio::spawn(async move {
                // Read the whole request (headers, then a chunked or sized body) before answering.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    let Some(head_end) = text.find("\r\n\r\n") else { continue };
                    let head = text[..head_end].to_ascii_lowercase();
                    let done = if head.contains("transfer-encoding: chunked") {
                        text.ends_with("0\r\n\r\n")
                    } else {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
                        buf.len() >= head_end + 4 + len
                    };
                    if done {
                        break;
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn the_store_classifies_each_failure_and_never_repeats_a_statement() {
    use planfeed::store::Refusal;
    use std::sync::atomic::Ordering;
    let p = stored(plan(1, 1, "X", "2021-06-30T21:00:00", "2021-06-30T22:00:00", true, &["1"]), 1);
    let cases = [
        ("503 Service Unavailable", "", true, None),
        (
            "500 Internal Server Error",
            "Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries",
            true,
            None,
        ),
        (
            "500 Internal Server Error",
            "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)",
            true,
            None,
        ),
        (
            "404 Not Found",
            "Code: 60, e.displayText() = DB::Exception: Table x.zones doesn't exist.",
            true,
            Some(Refusal::MissingTable),
        ),
        (
            "500 Internal Server Error",
            "Code: 194, e.displayText() = DB::Exception: Password required for user default",
            true,
            Some(Refusal::Credentials),
        ),
        ("500 Internal Server Error", "Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)", false, None),
    ];
    for (status, body, transient, refusal) in cases {
        // The first request (`CREATE DATABASE` of `connect`) succeeds, every later one fails.
        let (url, count) = fake_server(1, status, body).await;
        let store = ClickHouseStore::connect(ClickHouseSettings { url, ..Default::default() }).await.unwrap();
        let err = store.write_plans(std::slice::from_ref(&p)).await.unwrap_err();
        assert_eq!((err.is_transient(), err.refusal()), (transient, refusal), "{status} {body}: {err:?}");
        // Retrying is the delivery layer's alone.
        assert_eq!(count.load(Ordering::SeqCst) - 1, 1, "{status} {body}");
    }
}
