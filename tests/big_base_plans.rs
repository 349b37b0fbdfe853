//! Base plans of tens of thousands of plans under 1 KiB titles, through the real pipeline: the
//! simulator serving the generated feed over HTTP on 127.0.0.1, `ingest_once` into an embedded
//! store. Every plan must be stored and searchable, none spooled, whether the byte budget holds a
//! whole chunk or a chunk is larger than all of it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use planfeed::config::Settings;
use planfeed::feed::{generate_titled_into, GenSpec};
use planfeed::simulator::{self, Simulator};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::Store;

const BASE_PLANS: usize = 2;
const TITLE_BYTES: usize = 1024;

/// Ingests a feed of [`BASE_PLANS`] base plans of `plans_per_base` plans once with
/// `pipeline.queue_bytes = queue_bytes`, and checks the store.
async fn ingest_and_check(plans_per_base: usize, queue_bytes: usize) {
    let spec = GenSpec {
        base_plans: BASE_PLANS,
        plans_per_base,
        zones_per_plan: 0,
        seed: 26,
        offline_share: 0.0,
        invalid_share: 0.0,
    };
    let mut body = Vec::new();
    let stats = generate_titled_into(&spec, 0, TITLE_BYTES, &mut body);
    let total = (BASE_PLANS * plans_per_base) as u64;
    assert_eq!((stats.plans, stats.invalid), (total as usize, 0));
    let chunk_bytes = body.len() / BASE_PLANS;
    let url = simulator::spawn_local(Simulator::with_bodies(vec![body.into()])).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plans.db");
    let env = [
        ("PLANFEED__STORE__PATH", db.display().to_string()),
        ("PLANFEED__SPOOL__PATH", dir.path().join("spool").display().to_string()),
        ("PLANFEED__PIPELINE__QUEUE_BYTES", queue_bytes.to_string()),
        ("PLANFEED__PROVIDER__TIMEOUT", "10m".to_string()),
    ];
    let settings =
        Settings::load_with(Path::new("/nonexistent"), env.into_iter().map(|(k, v)| (k.to_string(), v)))
            .unwrap();
    let record = planfeed::service::ingest_once(settings, Some(url), None, false).await.unwrap();
    assert_eq!(record.error, None, "{record:?} (a chunk is {chunk_bytes} bytes, the budget {queue_bytes})");
    // Written counts what the store took: a spooled or dropped plan is not in it.
    assert_eq!(
        (record.plans_seen, record.plans_written, record.plans_skipped),
        (total, total, 0),
        "{record:?}"
    );

    let store = SqliteStore::open(&db).unwrap();
    let states = store.load_plan_states().await.unwrap();
    let keys: HashSet<(u64, u64)> = states.iter().map(|(k, _)| (k.base_plan_id, k.plan_id)).collect();
    assert_eq!(keys.len() as u64, total, "every plan stored once");
    let (first, last) = store.day_bounds().await.unwrap().expect("stored days");
    let rows = store.plans_by_day(first, last).await.unwrap();
    assert_eq!(rows.len() as u64, total, "every plan searchable");
    let titles: HashSet<Arc<str>> = rows.iter().map(|r| Arc::from(r.title.as_str())).collect();
    assert_eq!(titles.len(), BASE_PLANS, "one title per base plan");
    // 1 KiB of XML; its entities (`&amp;`) are shorter decoded.
    assert!(titles.iter().all(|t| (1000..=TITLE_BYTES).contains(&t.len())), "titles kept whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plan_of_big_base_plans_is_stored_within_the_default_budget() {
    ingest_and_check(60_000, 64 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_larger_than_the_whole_budget_still_goes_through_in_parts() {
    // Chunks of about 3.8 MB against the smallest budget allowed (1 MiB).
    ingest_and_check(20_000, 1 << 20).await;
}
