//! The batch writer alone, fed chunks by hand: observations of one plan arriving out of order
//! (parsers finish chunks in any order), with a real embedded store behind it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use planfeed::actors::batch_writer::{ChunkPlans, WriterCounters};
use planfeed::actors::parser::FetchContext;
use planfeed::actors::{BatchWriter, BatchWriterArgs, WriterMsg};
use planfeed::domain::Plan;
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;

use common::{day, offline, plan};

async fn writer(store: SharedStore) -> ActorRef<WriterMsg> {
    let args = BatchWriterArgs {
        store,
        searcher: None,
        batch_size: 1000,
        flush_age: Duration::from_secs(60),
        counters: Arc::new(WriterCounters::default()),
    };
    Actor::spawn(None, BatchWriter, args).await.expect("writer starts").0
}

/// Chunk `seq` of fetch 1, as a parser hands it on.
fn chunk(seq: u32, plans: Vec<Plan>) -> WriterMsg {
    let permits = Arc::new(Semaphore::new(1));
    WriterMsg::Plans(ChunkPlans {
        fetch: Arc::new(FetchContext { fetch_id: 1, provider: Arc::from("late"), tz: chrono_tz::UTC }),
        seq,
        plans,
        hashes: Vec::new(),
        skipped: 0,
        error: None,
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

    // The writer's own bookkeeping took the flag too: a restarted writer agrees with the store.
    let states = store.load_plan_states().await.unwrap();
    let ever: Vec<bool> = {
        let mut s: Vec<_> = states.iter().map(|(k, st)| (k.plan_id, st.ever_online)).collect();
        s.sort();
        s.into_iter().map(|(_, e)| e).collect()
    };
    assert_eq!(ever, [true, true, false]);
    w.stop(None);
}
