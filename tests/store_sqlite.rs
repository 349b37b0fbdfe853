//! The embedded store: the shared conformance suite, then what is specific to SQLite (schema,
//! files, query plans, batch atomicity).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::{SharedStore, Store, StoreError};

use common::{conformance, day, offline, plan, stored};

fn open(path: &Path) -> SharedStore {
    Arc::new(SqliteStore::open(path).expect("open the sqlite store"))
}

fn db_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("planfeed.db")
}

#[tokio::test]
async fn conformance_run_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let reopen_path = path.clone();
    conformance::run_all(open(&path), move |old| {
        let path = reopen_path.clone();
        async move {
            drop(old);
            open(&path)
        }
        .boxed()
    })
    .await;
}

/// One test per conformance case, each on its own fresh store, so a failure names its case.
macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let dir = tempfile::tempdir().unwrap();
            conformance::$case(&open(&db_in(&dir))).await;
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
        let dir = tempfile::tempdir().unwrap();
        let path = db_in(&dir);
        let reopen = move |old: SharedStore| {
            let path = path.clone();
            async move {
                drop(old);
                open(&path)
            }
            .boxed()
        };
        conformance::restart_keeps_everything(open(&db_in(&dir)), &reopen).await;
    }
}

#[tokio::test]
async fn open_creates_folders_file_and_schema_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/plans.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.name(), "embedded");
    assert_eq!(store.path(), path);
    store.ping().await.unwrap();
    assert!(path.is_file());

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 5);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(page_size, 16384, "new files get 16 KiB pages");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        vec![
            "day_changes",
            "day_changes_by_seq",
            "fetches",
            "fetches_by_start",
            "plans",
            "plans_by_day",
            "plans_by_title",
            "titles",
            "titles_let_go"
        ]
    );

    // Opening again is a no-op for the schema.
    drop(store);
    SqliteStore::open(&path).unwrap();
}

/// The first schema, as files written before event days became integers hold it.
const SCHEMA_V1: &str = "
CREATE TABLE plans (
    provider TEXT NOT NULL, base_plan_id INTEGER NOT NULL, plan_id INTEGER NOT NULL, id TEXT NOT NULL,
    title TEXT NOT NULL, online INTEGER NOT NULL, ever_online INTEGER NOT NULL,
    organizer_company_id INTEGER, start_local TEXT NOT NULL, end_local TEXT NOT NULL,
    start_utc INTEGER NOT NULL, end_utc INTEGER NOT NULL, event_date TEXT NOT NULL, sell_from TEXT,
    sell_to TEXT, sold_out INTEGER NOT NULL, min_price TEXT, max_price TEXT, zones TEXT NOT NULL,
    version INTEGER NOT NULL, hash INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (provider, base_plan_id, plan_id)
);
CREATE INDEX plans_by_day
    ON plans (event_date, start_utc, id, end_utc, start_local, end_local, min_price, max_price, title)
    WHERE ever_online = 1;
CREATE TABLE fetches (
    seq INTEGER PRIMARY KEY, provider TEXT NOT NULL, started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, http_status INTEGER, bytes INTEGER NOT NULL,
    plans_seen INTEGER NOT NULL, plans_written INTEGER NOT NULL, plans_unchanged INTEGER NOT NULL,
    plans_skipped INTEGER NOT NULL, error TEXT
);
CREATE INDEX fetches_by_start ON fetches (started_at);
PRAGMA user_version = 1;";

/// A file of the first schema, with the plan whose New York evening of 9999-12-31 is UTC day
/// `+10000-01-01` (as text, it sorted above every real day and hid every plan), upgrades in place:
/// every plan keeps its values and is found on its day; its fetch log gets each fetch's outcome
/// (and the counts where the error gave them) from the error text.
#[tokio::test]
async fn a_file_with_text_event_days_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let far = planfeed::domain::StoredPlan::new(
        plan("fever", 1, 1, "new year's eve", "9999-12-31T20:00:00", "9999-12-31T23:00:00"),
        ny,
        false,
        1,
    );
    let first = stored(plan("fever", 1, 2, "first day", "0001-01-01T00:00:00", "0001-01-01T01:00:00"), 1);
    let normal = stored(plan("fever", 1, 3, "normal", "2021-07-01T09:00:00", "2021-07-01T10:00:00"), 1);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        for (p, text_day) in [(&far, "+10000-01-01"), (&first, "0001-01-01"), (&normal, "2021-07-01")] {
            conn.execute(
                "INSERT INTO plans VALUES (?1, 1, ?2, ?3, ?4, 1, 1, NULL, ?5, ?6, ?7, ?8, ?9, NULL, NULL, 0,
                                           '20.00', '20.00', '[]', 1, 0, 0)",
                rusqlite::params![
                    "fever",
                    p.plan.key.plan_id as i64,
                    p.plan.key.id().to_string(),
                    p.plan.title,
                    p.plan.start.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    p.plan.end.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    p.start_utc.timestamp_millis(),
                    p.end_utc.timestamp_millis(),
                    text_day,
                ],
            )
            .unwrap();
        }
        for (started_at, error) in [
            (1_000, None),
            (2_000, Some("provider answered HTTP 503 Service Unavailable")),
            (
                3_000,
                Some("provider answered HTTP 500; store rejected 3 plans (written 40, spooled 2): too big"),
            ),
        ] {
            conn.execute(
                "INSERT INTO fetches (provider, started_at, duration_ms, bytes, plans_seen, plans_written,
                                      plans_unchanged, plans_skipped, error)
                 VALUES ('fever', ?1, 5, 0, 45, 40, 0, 0, ?2)",
                rusqlite::params![started_at, error],
            )
            .unwrap();
        }
    }
    assert_eq!(far.event_date, day("+10000-01-01"));

    let store = open(&path);
    let days: Vec<_> = store.day_directory().await.unwrap().into_iter().map(|d| (d.day, d.plans)).collect();
    assert_eq!(days, vec![(day("0001-01-01"), 1), (day("2021-07-01"), 1), (far.event_date, 1)]);
    assert_eq!(store.day_bounds().await.unwrap(), Some((day("0001-01-01"), far.event_date)));
    let all = store.plans_by_day(day("0001-01-01"), far.event_date).await.unwrap();
    let titles: Vec<&str> = all.iter().map(|r| r.title.as_str()).collect();
    assert_eq!(titles, ["first day", "normal", "new year's eve"]);
    assert_eq!(all[2].start_utc, far.start_utc);
    assert_eq!(all[2].start_local, far.plan.start);
    let states = store.load_plan_states().await.unwrap();
    assert!(states.iter().any(|(k, s)| k == &far.plan.key && s.event_date == far.event_date));
    let fetches: Vec<_> = store
        .recent_fetches(10)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.outcome, f.plans_spooled, f.plans_dropped, f.plans_written))
        .collect();
    use planfeed::domain::FetchOutcome::{HttpError, Ok as Fine, StoreRejected};
    assert_eq!(
        fetches,
        [(StoreRejected, Some(2), Some(3), 40), (HttpError, None, None, 40), (Fine, None, None, 40)]
    );

    // Written again after the upgrade: still one row per plan, on the same days.
    store.write_plans(&[far.clone(), first, normal]).await.unwrap();
    assert_eq!(store.plans_by_day(day("0001-01-01"), far.event_date).await.unwrap().len(), 3);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert!(version >= 2);
}

#[tokio::test]
async fn a_schema_newer_than_the_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::Permanent(msg)) => assert!(msg.contains("schema version 99"), "{msg}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn plans_by_day_reads_the_index_never_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_in(&dir)).unwrap();
    let plans: Vec<_> = (0..200)
        .map(|i| stored(plan("eqp", 1, i, "t", "2030-01-01T10:00:00", "2030-01-01T11:00:00"), 1))
        .collect();
    store.write_plans(&plans).await.unwrap();

    for (from, to) in [(day("2030-01-01"), day("2030-01-01")), (day("2030-01-01"), day("2030-01-31"))] {
        let details = store.explain_plans_by_day(from, to).await.unwrap();
        assert!(
            details.iter().any(|d| d.contains("USING COVERING INDEX plans_by_day")),
            "{from}..={to}: {details:?}"
        );
        assert!(!details.iter().any(|d| d.starts_with("SCAN")), "{from}..={to}: full scan in {details:?}");
        if from == to {
            assert!(!details.iter().any(|d| d.contains("TEMP B-TREE")), "one day needs no sort: {details:?}");
        }
    }
}

/// The titles a file holds, in id order.
fn stored_titles(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT text FROM titles ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Plans sharing a title share one `titles` row; a title no row refers to any more is deleted by
/// the batch that let it go, and one that only a stale older version brought is never kept.
#[tokio::test]
async fn titles_are_stored_once_and_deleted_when_no_plan_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let store = SqliteStore::open(&path).unwrap();
    let (s, e) = ("2030-04-04T10:00:00", "2030-04-04T11:00:00");
    let shared: Arc<str> = "x".repeat(1024).into();
    let mut plans: Vec<_> = (0..50)
        .map(|i| {
            let mut p = plan("titles", 1, i, "", s, e);
            p.title = shared.clone();
            stored(p, 1)
        })
        .collect();
    plans.push(stored(plan("titles", 2, 1, "alone", s, e), 1));
    store.write_plans(&plans).await.unwrap();
    assert_eq!(stored_titles(&path), [&*shared, "alone"]);

    // Half the base plan renamed: both titles in use; then the rest, and the old one goes.
    let renamed = |range: std::ops::Range<u64>, version| -> Vec<_> {
        range.map(|i| stored(plan("titles", 1, i, "renamed", s, e), version)).collect()
    };
    store.write_plans(&renamed(0..25, 2)).await.unwrap();
    assert_eq!(stored_titles(&path), [&*shared, "alone", "renamed"]);
    store.write_plans(&renamed(25..50, 2)).await.unwrap();
    assert_eq!(stored_titles(&path), ["alone", "renamed"]);

    // An older version arriving late with a title of its own changes no row: its title goes too.
    store.write_plans(&[stored(plan("titles", 2, 1, "stale", s, e), 0)]).await.unwrap();
    assert_eq!(stored_titles(&path), ["alone", "renamed"]);

    let rows = store.plans_by_day(day("2030-04-04"), day("2030-04-04")).await.unwrap();
    assert_eq!(rows.len(), 51);
    assert_eq!(rows.iter().filter(|r| r.title == "renamed").count(), 50);
    let directory = store.day_directory().await.unwrap();
    assert_eq!((directory[0].plans, directory[0].text_bytes), (51, 50 * 7 + 5));

    // A title a batch added that one row did not take (a stale version) and another did: kept.
    let both = [stored(plan("titles", 2, 1, "both", s, e), 0), stored(plan("titles", 3, 1, "both", s, e), 1)];
    store.write_plans(&both).await.unwrap();
    assert_eq!(stored_titles(&path), ["alone", "renamed", "both"]);
    let rows = store.plans_by_day(day("2030-04-04"), day("2030-04-04")).await.unwrap();
    let mut others: Vec<_> = rows.iter().map(|r| r.title.as_str()).filter(|t| *t != "renamed").collect();
    others.sort_unstable();
    assert_eq!(others, ["alone", "both"]);
}

#[tokio::test]
async fn a_late_older_online_observation_still_marks_the_plan_ever_online() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_in(&dir)).unwrap();
    let (s, e) = ("2030-02-02T10:00:00", "2030-02-02T11:00:00");
    let newer_offline = stored(offline(plan("late", 1, 1, "newer, offline", s, e)), 2);
    store.write_plans(std::slice::from_ref(&newer_offline)).await.unwrap();
    assert!(store.plans_by_day(day("2030-02-02"), day("2030-02-02")).await.unwrap().is_empty());

    store.write_plans(&[stored(plan("late", 1, 1, "older, online", s, e), 1)]).await.unwrap();
    let rows = store.plans_by_day(day("2030-02-02"), day("2030-02-02")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].title, "newer, offline", "values stay those of the newest version");
    let states = store.load_plan_states().await.unwrap();
    assert!(states[0].1.ever_online);
    assert_eq!(states[0].1.version, 2);
}

#[tokio::test]
async fn a_batch_with_a_bad_plan_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_in(&dir)).unwrap();
    let good = stored(plan("atomic", 1, 1, "good", "2030-03-03T10:00:00", "2030-03-03T11:00:00"), 1);
    let bad = stored(plan("atomic", 1, 2, "bad", "2030-03-03T10:00:00", "2030-03-03T11:00:00"), u64::MAX);
    match store.write_plans(&[good, bad]).await {
        Err(StoreError::Permanent(msg)) => {
            assert!(msg.contains("atomic/1/2") && msg.contains("version"), "{msg}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(store.load_plan_states().await.unwrap().is_empty());
}

#[tokio::test]
async fn reads_proceed_while_another_connection_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let store = SqliteStore::open(&path).unwrap();
    let p = stored(plan("wal", 1, 1, "readable", "2030-04-04T10:00:00", "2030-04-04T11:00:00"), 1);
    store.write_plans(&[p]).await.unwrap();

    let mut other = rusqlite::Connection::open(&path).unwrap();
    let tx = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    tx.execute("UPDATE titles SET text = 'uncommitted'", []).unwrap();
    let started = Instant::now();
    let rows = store.plans_by_day(day("2030-04-04"), day("2030-04-04")).await.unwrap();
    assert_eq!(rows[0].title, "readable");
    assert!(started.elapsed().as_secs() < 1, "the read waited for the writer");
    tx.rollback().unwrap();
}

#[tokio::test]
async fn twenty_thousand_plans_in_batches_of_five_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_in(&dir)).unwrap();
    let plans: Vec<_> = (0..20_000u64)
        .map(|i| {
            let d = 1 + i % 28;
            let mut p = plan(
                "bulk",
                i / 100,
                i,
                &format!("plan {i}"),
                &format!("2030-05-{d:02}T{:02}:00:00", i % 24),
                &format!("2030-05-{d:02}T23:59:59"),
            );
            p.zones = common::zones(&["10.00", "25.50", "7.5"]);
            stored(p, 1)
        })
        .collect();
    let started = Instant::now();
    for batch in plans.chunks(5_000) {
        store.write_plans(batch).await.unwrap();
    }
    eprintln!("wrote 20000 plans in {:?} (debug build)", started.elapsed());
    assert_eq!(store.load_plan_states().await.unwrap().len(), 20_000);

    let started = Instant::now();
    let day1 = store.plans_by_day(day("2030-05-01"), day("2030-05-01")).await.unwrap();
    eprintln!("read one day ({} plans) in {:?} (debug build)", day1.len(), started.elapsed());
    assert_eq!(day1.len(), 715);
    assert!(day1.windows(2).all(|w| (w[0].start_utc, w[0].id) < (w[1].start_utc, w[1].id)));
    assert_eq!(store.plans_by_day(day("2030-05-01"), day("2030-05-31")).await.unwrap().len(), 20_000);

    // Re-writing the same versions is idempotent.
    store.write_plans(&plans[..5_000]).await.unwrap();
    assert_eq!(store.load_plan_states().await.unwrap().len(), 20_000);
}

#[tokio::test]
async fn writes_reach_the_database_file_in_the_background_and_close_removes_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_in(&dir);
    let wal = dir.path().join("planfeed.db-wal");
    let store = SqliteStore::open(&path).unwrap();
    let empty = std::fs::metadata(&path).unwrap().len();
    let plans: Vec<_> = (0..2_000u64)
        .map(|i| {
            let mut p = plan("wal", i, i, &format!("plan {i}"), "2030-05-01T10:00:00", "2030-05-01T11:00:00");
            p.zones = common::zones(&["10.00"; 50]);
            stored(p, 1)
        })
        .collect();
    store.write_plans(&plans).await.unwrap();
    assert!(wal.is_file(), "writes go to the WAL first");
    // The writer itself only checkpoints past 256 MiB of WAL: the pages reach the file through the
    // background checkpointer.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() < empty + 1_000_000 {
        assert!(Instant::now() < deadline, "the database file did not grow within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.plans_by_day(day("2030-05-01"), day("2030-05-01")).await.unwrap().len(), 2_000);

    drop(store);
    assert!(!wal.exists(), "closing folds the WAL into the file and removes it");
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.load_plan_states().await.unwrap().len(), 2_000);
}
