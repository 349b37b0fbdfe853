//! The batch writer alone, fed chunks by hand: observations of one plan arriving out of order
//! (parsers finish chunks in any order), with a real embedded store behind it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use planfeed::actors::{BatchWriter, BatchWriterArgs, ChunkPlans, FetchContext, FetchEnd, WriterMsg};
use planfeed::delivery::{Delivery, WriterCounters};
use planfeed::domain::Plan;
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;

use common::clickhouse::ClickHouseServer;
use common::{day, offline, plan};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};

async fn writer(store: SharedStore) -> ActorRef<WriterMsg> {
    let counters = Arc::new(WriterCounters::default());
    let args = BatchWriterArgs {
        delivery: Delivery::new(store, None, counters, Duration::from_secs(10)),
        batch_size: 1000,
        flush_age: Duration::from_secs(60),
        recorded: None,
    };
    Actor::spawn(None, BatchWriter, args).await.expect("writer starts").0
}

fn fetch(fetch_id: u64) -> Arc<FetchContext> {
    Arc::new(FetchContext {
        fetch_id,
        provider: Arc::from("late"),
        tz: chrono_tz::UTC,
        skips: Default::default(),
    })
}

fn unwrap_plans(msg: WriterMsg) -> ChunkPlans {
    match msg {
        WriterMsg::Plans(c) => c,
        _ => unreachable!("chunk() builds Plans"),
    }
}

/// Chunk `seq` of fetch 1, as a parser hands it on.
fn chunk(seq: u32, plans: Vec<Plan>) -> WriterMsg {
    let permits = Arc::new(Semaphore::new(1));
    WriterMsg::Plans(ChunkPlans {
        fetch: fetch(1),
        seq,
        plans,
        hashes: Vec::new(),
        skipped: 0,
        error: None,
        last: true,
        permit: permits.try_acquire_owned().expect("a permit"),
    })
}

async fn flush(w: &ActorRef<WriterMsg>) {
    ractor::call!(w, WriterMsg::Flush).expect("flush");
}

fn at(id: u64, title: &str) -> Plan {
    plan("late", id, id, title, "2034-02-02T20:00:00", "2034-02-02T22:00:00")
}

#[tokio::test]
async fn a_late_older_online_observation_makes_the_newer_offline_one_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("w.db")).unwrap());
    late_online_observations(store).await;
}

#[tokio::test]
async fn a_late_older_online_observation_makes_the_newer_offline_one_searchable_on_clickhouse() {
    let Some(server) = ClickHouseServer::start() else { return };
    let settings = ClickHouseSettings { url: server.url(), database: "writer".into(), ..Default::default() };
    let store = ClickHouseStore::connect(settings).await.unwrap();
    store.migrate().await.unwrap();
    late_online_observations(Arc::new(store)).await;
}

async fn late_online_observations(store: SharedStore) {
    let w = writer(store.clone()).await;

    // Plan 1: both in one batch, the newer (offline) first.
    w.cast(chunk(2, vec![offline(at(1, "one, newer, offline"))])).unwrap();
    w.cast(chunk(1, vec![at(1, "one, older, online")])).unwrap();
    // Plan 2: the newer (offline) is already written when the older (online) arrives.
    w.cast(chunk(4, vec![offline(at(2, "two, newer, offline"))])).unwrap();
    // Plan 3: never online, in any order.
    w.cast(chunk(6, vec![offline(at(3, "three, newer, offline"))])).unwrap();
    flush(&w).await;
    let d = day("2034-02-02");
    let titles =
        |rows: Vec<planfeed::domain::EventRow>| rows.into_iter().map(|r| r.title).collect::<Vec<_>>();
    assert_eq!(titles(store.plans_by_day(d, d).await.unwrap()), ["one, newer, offline"]);

    w.cast(chunk(3, vec![at(2, "two, older, online")])).unwrap();
    w.cast(chunk(5, vec![offline(at(3, "three, older, offline"))])).unwrap();
    flush(&w).await;
    let mut shown = titles(store.plans_by_day(d, d).await.unwrap());
    shown.sort();
    assert_eq!(shown, ["one, newer, offline", "two, newer, offline"], "latest values, ever online");

    // Plan 4: the late online observation comes while the plan's newer version is written, and
    // a still newer one moves it to another day before the mark is applied: the moved row carries
    // the flag itself (a mark on the old day would only find the old day's tombstone).
    w.cast(chunk(8, vec![offline(at(4, "four, v8, offline"))])).unwrap();
    flush(&w).await;
    w.cast(chunk(7, vec![at(4, "four, v7, online")])).unwrap();
    let mut moved = offline(at(4, "four, v9, offline, moved"));
    moved.start = common::dt("2034-02-03T20:00:00");
    moved.end = common::dt("2034-02-03T22:00:00");
    w.cast(WriterMsg::Plans(ChunkPlans { fetch: fetch(2), ..unwrap_plans(chunk(1, vec![moved])) })).unwrap();
    flush(&w).await;
    let next = day("2034-02-03");
    assert_eq!(titles(store.plans_by_day(next, next).await.unwrap()), ["four, v9, offline, moved"]);
    let mut shown = titles(store.plans_by_day(d, d).await.unwrap());
    shown.sort();
    assert_eq!(shown, ["one, newer, offline", "two, newer, offline"], "plan 4 left this day");

    // The writer's own bookkeeping took the flag too: a restarted writer agrees with the store.
    let states = store.load_plan_states().await.unwrap();
    let ever: Vec<bool> = {
        let mut s: Vec<_> = states.iter().map(|(k, st)| (k.plan_id, st.ever_online)).collect();
        s.sort();
        s.into_iter().map(|(_, e)| e).collect()
    };
    assert_eq!(ever, [true, true, false, true]);
    w.stop(None);
}

/// A plan the store rejects for good costs only itself: the rest of its batch is written, and the
/// fetch's record says how many plans were written and dropped, and why.
#[tokio::test]
async fn a_plan_the_store_rejects_is_dropped_alone_and_the_fetch_says_so() {
    // The process's metrics recorder, so the fetch's outcome label can be read back.
    planfeed::metrics::handle();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("w.db")).unwrap());
    let w = writer(store.clone()).await;
    // The embedded store keeps ids in 63 bits: this one is rejected, permanently.
    let mut plans: Vec<Plan> = (1..=9).map(|i| at(i, &format!("plan {i}"))).collect();
    plans.insert(4, plan("late", u64::MAX, 5, "too big", "2034-02-02T20:00:00", "2034-02-02T22:00:00"));
    w.cast(chunk(1, plans)).unwrap();
    let record = planfeed::domain::FetchRecord { provider: "late".into(), ..Default::default() };
    w.cast(WriterMsg::FetchEnd(FetchEnd { fetch_id: 1, chunks: 1, retries: 0, record, error: None }))
        .unwrap();
    flush(&w).await;
    let d = day("2034-02-02");
    let mut titles: Vec<String> =
        store.plans_by_day(d, d).await.unwrap().into_iter().map(|r| r.title).collect();
    titles.sort();
    assert_eq!(titles, (1..=9).map(|i| format!("plan {i}")).collect::<Vec<_>>());

    let fetch = store.recent_fetches(1).await.unwrap().remove(0);
    assert_eq!((fetch.plans_seen, fetch.plans_written), (10, 9));
    // The stored record carries the metric's outcome and what became of the plans.
    assert_eq!(fetch.outcome, planfeed::domain::FetchOutcome::StoreRejected);
    assert_eq!((fetch.plans_spooled, fetch.plans_dropped), (Some(0), Some(1)));
    let error = fetch.error.clone().expect("the fetch is not recorded ok");
    assert!(error.starts_with("store rejected 1 plans (written 9, spooled 0): "), "{error}");
    assert!(error.contains("63-bit range"), "{error}");
    let counted = planfeed::metrics::handle().render();
    assert!(
        counted.contains("planfeed_fetches_total{provider=\"late\",outcome=\"store_rejected\"} 1\n"),
        "{counted}"
    );
    w.stop(None);
}
