//! The store conformance suite: what every [`Store`](planfeed::store::Store) implementation must do.
//!
//! # Running it against a store
//!
//! ```ignore
//! mod common;
//! use common::conformance;
//!
//! #[tokio::test]
//! async fn conformance_run_all() {
//!     let store: SharedStore = Arc::new(MyStore::open(cfg.clone()).await.unwrap());
//!     conformance::run_all(store, move |old: SharedStore| {
//!         let cfg = cfg.clone();
//!         async move {
//!             drop(old); // close the old store first, as a restart would
//!             Arc::new(MyStore::open(cfg).await.unwrap()) as SharedStore
//!         }
//!         .boxed()
//!     })
//!     .await;
//! }
//! ```
//!
//! - `run_all(store, reopen)` needs a **fresh, empty** store (it first checks emptiness and appends
//!   to the fetch log). `reopen: Fn(SharedStore) -> BoxFuture<'static, SharedStore>` receives the
//!   current store by value, must drop it (closing files/connections) and return a new store over
//!   the same data, as a process restart would. `run_all` holds no other clone of the store.
//! - Every case is also a `pub async fn` taking `&SharedStore` (the restart case also takes the
//!   `reopen` factory and returns the reopened store), so a test binary can give each its own test.
//! - Cases share one store in any order: each uses its own provider name (`conf-<case>`) **and**
//!   its own event days, so each can assert the exact, unfiltered answer of `plans_by_day`.
//!   Days used: 2031..=2040 (one year per case), 1971-01-01 and 2099-12-31 (reserved for
//!   `day_bounds_cover_ever_online_days`), 1970-06-01 and 2100-06-01 (offline only), and the extremes
//!   0001-01-01, 0001-01-02, 9999-12-31 and 10000-01-01 (`extreme_days_are_stored_ordered_and_searched`). Fetch records use
//!   `started_at` in 2090 (restart) and 2100 (the newest: fetch log case).
//! - Instants have whole seconds: a store must keep at least second precision (ClickHouse
//!   `DateTime`). Prices must come back exact, with their scale (`20.00`, `7.5`): store them as
//!   decimal text, not a fixed-scale Decimal.
//! - Cases may be re-run on the same data (writes are idempotent), except `fresh_store_is_empty`
//!   and `fetch_log_round_trip` (the fetch log is append-only).

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use planfeed::domain::{EventRow, FetchOutcome, FetchRecord, PlanKey, PlanState, StoredPlan};
use planfeed::store::SharedStore;

use super::{day, dec, dt, moved, offline, plan, stored, zones};

/// Runs every case on one fresh store, the restart case last. Prints each case's name before it
/// runs, so a failing assertion is attributed to its case.
pub async fn run_all<R>(store: SharedStore, reopen: R)
where
    R: Fn(SharedStore) -> BoxFuture<'static, SharedStore>,
{
    named("fresh_store_is_empty", fresh_store_is_empty(&store)).await;
    named("latest_version_wins", latest_version_wins(&store)).await;
    named("ever_online_is_sticky", ever_online_is_sticky(&store)).await;
    named("marking_ever_online_keeps_the_latest_values", marking_ever_online_keeps_the_latest_values(&store))
        .await;
    named("moved_start_date_shows_once_on_its_new_day", moved_start_date_shows_once_on_its_new_day(&store))
        .await;
    named("day_boundaries_and_order", day_boundaries_and_order(&store)).await;
    named("prices_are_exact", prices_are_exact(&store)).await;
    named("plan_states_round_trip", plan_states_round_trip(&store)).await;
    named("day_bounds_cover_ever_online_days", day_bounds_cover_ever_online_days(&store)).await;
    named(
        "change_feed_lists_the_days_written_since_a_marker",
        change_feed_lists_the_days_written_since_a_marker(&store),
    )
    .await;
    named(
        "extreme_days_are_stored_ordered_and_searched",
        extreme_days_are_stored_ordered_and_searched(&store),
    )
    .await;
    named(
        "day_directory_lists_ever_online_days_with_sizes",
        day_directory_lists_ever_online_days_with_sizes(&store),
    )
    .await;
    named("fetch_log_round_trip", fetch_log_round_trip(&store)).await;
    let store = named("restart_keeps_everything", restart_keeps_everything(store, &reopen)).await;
    // Everything written by the earlier cases survived the restart too.
    named("earlier_cases_survive_restart", earlier_cases_survive_restart(&store)).await;
}

async fn named<T>(case: &str, f: impl Future<Output = T>) -> T {
    eprintln!("conformance case: {case}");
    f.await
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn write(store: &SharedStore, plans: &[StoredPlan]) {
    store
        .write_plans(plans)
        .await
        .unwrap_or_else(|e| panic!("{}: write_plans of {} plans failed: {e}", store.name(), plans.len()));
}

async fn by_day(store: &SharedStore, from: NaiveDate, to: NaiveDate) -> Vec<EventRow> {
    store
        .plans_by_day(from, to)
        .await
        .unwrap_or_else(|e| panic!("{}: plans_by_day({from}, {to}) failed: {e}", store.name()))
}

async fn states_of(store: &SharedStore, provider: &str) -> HashMap<PlanKey, PlanState> {
    store
        .load_plan_states()
        .await
        .unwrap_or_else(|e| panic!("{}: load_plan_states failed: {e}", store.name()))
        .into_iter()
        .filter(|(k, _)| &*k.provider == provider)
        .collect()
}

fn row(p: &StoredPlan) -> EventRow {
    EventRow::from_stored(p)
}

fn titles(rows: &[EventRow]) -> Vec<&str> {
    rows.iter().map(|r| r.title.as_str()).collect()
}

fn utc(s: &str) -> DateTime<Utc> {
    dt(s).and_utc()
}

// ---------------------------------------------------------------------------------------------
// Cases

/// A new store answers every read with nothing, accepts an empty batch and answers `ping`.
pub async fn fresh_store_is_empty(store: &SharedStore) {
    assert!(!store.name().is_empty());
    store.ping().await.expect("ping of a fresh store");
    assert_eq!(store.day_bounds().await.expect("day_bounds"), None);
    assert_eq!(store.change_marker().await.expect("change_marker"), 0);
    assert!(store.days_changed_since(0).await.expect("days_changed_since").is_empty());
    assert!(store.load_plan_states().await.expect("load_plan_states").is_empty());
    assert!(store.recent_fetches(10).await.expect("recent_fetches").is_empty());
    write(store, &[]).await;
    assert!(by_day(store, day("1970-01-01"), day("2105-12-31")).await.is_empty());
}

/// The highest version wins, whatever the arrival order, across batches and inside one batch; an
/// equal version replaces (a retried batch is idempotent).
pub async fn latest_version_wins(store: &SharedStore) {
    let p = "conf-latest";
    let d = day("2031-04-10");
    let v1 = stored(plan(p, 1, 1, "first", "2031-04-10T10:00:00", "2031-04-10T12:00:00"), 10);
    let mut v2p = plan(p, 1, 1, "second", "2031-04-10T11:00:00", "2031-04-10T13:30:00");
    v2p.zones = zones(&["15.50", "30"]);
    let v2 = stored(v2p, 20);
    write(store, std::slice::from_ref(&v1)).await;
    assert_eq!(by_day(store, d, d).await, vec![row(&v1)]);
    write(store, std::slice::from_ref(&v2)).await;
    assert_eq!(by_day(store, d, d).await, vec![row(&v2)], "the newer version replaces the older");

    // An older version arriving late is ignored, alone or retried.
    let late = stored(plan(p, 1, 1, "stale", "2031-04-10T09:00:00", "2031-04-10T10:00:00"), 15);
    write(store, std::slice::from_ref(&late)).await;
    write(store, &[late]).await;
    assert_eq!(by_day(store, d, d).await, vec![row(&v2)], "a late older version must be ignored");

    // The same batch retried changes nothing and never duplicates.
    write(store, std::slice::from_ref(&v2)).await;
    assert_eq!(by_day(store, d, d).await, vec![row(&v2)]);

    // Inside one batch the newest version wins, even when listed first.
    let newest = stored(plan(p, 1, 2, "newest", "2031-04-10T15:00:00", "2031-04-10T16:00:00"), 50);
    let older = stored(plan(p, 1, 2, "older", "2031-04-10T14:00:00", "2031-04-10T16:00:00"), 40);
    write(store, &[newest.clone(), older]).await;
    assert_eq!(by_day(store, d, d).await, vec![row(&v2), row(&newest)]);

    let states = states_of(store, p).await;
    assert_eq!(states.len(), 2);
    assert_eq!(states[&v2.plan.key].version, 20);
    assert_eq!(states[&v2.plan.key].hash, v2.hash);
    assert_eq!(states[&newest.plan.key].version, 50);
}

/// A late older observation that was online makes the writer mark the key: the latest (offline)
/// version becomes searchable with its own values, once, whatever the repetitions.
pub async fn marking_ever_online_keeps_the_latest_values(store: &SharedStore) {
    let p = "conf-mark";
    let d = day("2033-03-03");
    let latest =
        stored(offline(plan(p, 1, 1, "latest, offline", "2033-03-03T20:00:00", "2033-03-03T22:00:00")), 7);
    let other =
        stored(offline(plan(p, 1, 2, "never online", "2033-03-03T18:00:00", "2033-03-03T19:00:00")), 7);
    assert!(!latest.ever_online);
    write(store, &[latest.clone(), other.clone()]).await;
    assert!(by_day(store, d, d).await.is_empty(), "nothing was online yet");

    store.mark_ever_online(&[(latest.plan.key.clone(), d)]).await.expect("mark_ever_online");
    assert_eq!(by_day(store, d, d).await, vec![row(&latest)], "the latest values, now searchable");
    // Idempotent, and unknown keys are ignored.
    let unknown = (PlanKey::new(p, 9, 9), d);
    store.mark_ever_online(&[(latest.plan.key.clone(), d), unknown]).await.expect("mark_ever_online again");
    store.mark_ever_online(&[]).await.expect("nothing to mark");
    assert_eq!(by_day(store, d, d).await, vec![row(&latest)]);

    let states = states_of(store, p).await;
    assert!(states[&latest.plan.key].ever_online);
    assert_eq!((states[&latest.plan.key].version, states[&latest.plan.key].hash), (7, latest.hash));
    assert!(!states[&other.plan.key].ever_online);
    assert_eq!(store.day_bounds().await.unwrap().map(|(_, hi)| hi >= d), Some(true));
}

/// Once online, always searchable, showing the latest (possibly offline) observation; a plan only
/// ever seen offline is never returned.
pub async fn ever_online_is_sticky(store: &SharedStore) {
    let p = "conf-sticky";
    let d = day("2032-06-01");
    let (s, e) = ("2032-06-01T20:00:00", "2032-06-01T22:00:00");

    // Online, then offline with new values. The offline StoredPlan says ever_online = false: the
    // store itself must keep the flag.
    let was_online = stored(plan(p, 1, 1, "online once", s, e), 1);
    let mut now_offline_plan = offline(plan(p, 1, 1, "now offline", s, "2032-06-01T23:00:00"));
    now_offline_plan.zones = zones(&["99.90"]);
    let now_offline = stored(now_offline_plan, 2);
    assert!(!now_offline.ever_online);

    // Offline, then online.
    let late_online_v1 = stored(offline(plan(p, 1, 2, "offline first", s, e)), 1);
    let late_online_v2 = stored(plan(p, 1, 2, "online later", s, e), 2);

    // Never online.
    let never_v1 = stored(offline(plan(p, 2, 1, "never online", s, e)), 1);
    let never_v2 = stored(offline(plan(p, 2, 1, "never online still", s, e)), 2);

    write(store, &[was_online, late_online_v1.clone(), never_v1]).await;
    let ids_first = by_day(store, d, d).await;
    assert_eq!(titles(&ids_first), vec!["online once"], "only the online plan is searchable so far");

    write(store, std::slice::from_ref(&now_offline)).await;
    write(store, &[late_online_v2.clone(), never_v2]).await;

    let mut expected = vec![row(&now_offline), row(&late_online_v2)];
    expected.sort_by_key(|r| (r.start_utc, r.id));
    assert_eq!(by_day(store, d, d).await, expected, "sticky plans show their latest observation");

    let states = states_of(store, p).await;
    assert!(states[&now_offline.plan.key].ever_online);
    assert!(states[&late_online_v2.plan.key].ever_online);
    assert!(!states[&PlanKey::new(p, 2, 1)].ever_online);
    assert_eq!(states[&PlanKey::new(p, 2, 1)].version, 2, "offline plans are stored too");
}

/// A plan whose start moved to another day (written with `previous_event_date`) is returned once,
/// only on its new day, with its new values; a late older version does not bring the old day back.
pub async fn moved_start_date_shows_once_on_its_new_day(store: &SharedStore) {
    let p = "conf-moved";
    let (old_day, new_day) = (day("2033-03-10"), day("2033-03-20"));
    let v1 = stored(plan(p, 1, 1, "before the move", "2033-03-10T19:00:00", "2033-03-10T21:00:00"), 1);
    let v2 = moved(plan(p, 1, 1, "after the move", "2033-03-20T19:30:00", "2033-03-20T21:00:00"), 2, old_day);
    let stay = stored(plan(p, 1, 2, "stays put", "2033-03-10T18:00:00", "2033-03-10T19:00:00"), 1);

    write(store, &[v1.clone(), stay.clone()]).await;
    assert_eq!(by_day(store, old_day, old_day).await, vec![row(&stay), row(&v1)]);

    write(store, std::slice::from_ref(&v2)).await;
    assert_eq!(by_day(store, old_day, old_day).await, vec![row(&stay)], "the old day lost the moved plan");
    assert_eq!(by_day(store, new_day, new_day).await, vec![row(&v2)]);
    assert_eq!(by_day(store, old_day, new_day).await, vec![row(&stay), row(&v2)], "returned once");

    // Moved again, back one day, and offline now: still searchable, only on its newest day.
    let back_day = day("2033-03-19");
    let v3 = moved(
        offline(plan(p, 1, 1, "moved again", "2033-03-19T19:30:00", "2033-03-19T21:00:00")),
        3,
        new_day,
    );
    write(store, std::slice::from_ref(&v3)).await;
    assert!(by_day(store, new_day, new_day).await.is_empty());
    assert_eq!(by_day(store, back_day, back_day).await, vec![row(&v3)]);

    // The first version arriving late changes nothing.
    write(store, &[v1]).await;
    assert_eq!(by_day(store, old_day, new_day).await, vec![row(&stay), row(&v3)]);

    let states = states_of(store, p).await;
    assert_eq!(states[&v3.plan.key].event_date, back_day);
    assert_eq!(states[&v3.plan.key].version, 3);
}

/// A plan belongs to the UTC day of its start: `plans_by_day(d, d)` returns exactly the plans
/// starting in `[d 00:00:00, d 23:59:59]`, ordered by start instant then id, whatever the write order.
pub async fn day_boundaries_and_order(store: &SharedStore) {
    let p = "conf-bounds";
    let d = day("2034-05-15");
    let before = stored(plan(p, 1, 1, "last second before", "2034-05-14T23:59:59", "2034-05-15T01:00:00"), 1);
    let first = stored(plan(p, 1, 2, "first second", "2034-05-15T00:00:00", "2034-05-15T01:00:00"), 1);
    let noon_a = stored(plan(p, 1, 3, "noon a", "2034-05-15T12:00:00", "2034-05-15T13:00:00"), 1);
    let noon_b = stored(plan(p, 1, 4, "noon b", "2034-05-15T12:00:00", "2034-05-15T14:00:00"), 1);
    let noon_c = stored(plan(p, 2, 3, "noon c", "2034-05-15T12:00:00", "2034-05-15T12:30:00"), 1);
    let last = stored(plan(p, 1, 5, "last second", "2034-05-15T23:59:59", "2034-05-16T02:00:00"), 1);
    let after = stored(plan(p, 1, 6, "first second after", "2034-05-16T00:00:00", "2034-05-16T01:00:00"), 1);

    write(
        store,
        &[
            last.clone(),
            noon_c.clone(),
            after.clone(),
            noon_a.clone(),
            before.clone(),
            noon_b.clone(),
            first.clone(),
        ],
    )
    .await;

    let mut noons = vec![row(&noon_a), row(&noon_b), row(&noon_c)];
    noons.sort_by_key(|r| r.id);
    let mut expected_day = vec![row(&first)];
    expected_day.extend(noons.clone());
    expected_day.push(row(&last));
    let got = by_day(store, d, d).await;
    assert_eq!(got, expected_day, "day {d}: exactly its plans, by start then id");
    let ids: Vec<_> = got[1..4].iter().map(|r| r.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "same start: ordered by id");

    let mut expected_range = vec![row(&before)];
    expected_range.extend(expected_day);
    expected_range.push(row(&after));
    assert_eq!(by_day(store, day("2034-05-14"), day("2034-05-16")).await, expected_range);
    assert_eq!(by_day(store, day("2034-05-14"), day("2034-05-14")).await, vec![row(&before)]);
    assert_eq!(by_day(store, day("2034-05-16"), day("2034-05-16")).await, vec![row(&after)]);
    assert!(by_day(store, day("2034-05-17"), day("2034-05-20")).await.is_empty());

    // Instants and local times come back as written.
    let r = &by_day(store, day("2034-05-14"), day("2034-05-14")).await[0];
    assert_eq!(r.start_utc, utc("2034-05-14T23:59:59"));
    assert_eq!(r.end_utc, utc("2034-05-15T01:00:00"));
    assert_eq!(r.start_local, dt("2034-05-14T23:59:59"));
    assert_eq!(r.id, PlanKey::new(p, 1, 1).id());
}

/// Min and max zone prices come back as exact decimals with their scale; `None` without zones.
pub async fn prices_are_exact(store: &SharedStore) {
    let p = "conf-prices";
    let d = day("2035-09-09");
    let mut one = plan(p, 1, 1, "one zone", "2035-09-09T10:00:00", "2035-09-09T11:00:00");
    one.zones = zones(&["20.00"]);
    let mut many = plan(p, 1, 2, "many zones", "2035-09-09T11:00:00", "2035-09-09T12:00:00");
    many.zones = zones(&["20.00", "7.5", "100", "7.50", "0.01"]);
    many.zones[4].capacity = 0; // capacity 0 still counts
    let mut none = plan(p, 1, 3, "no zones", "2035-09-09T12:00:00", "2035-09-09T13:00:00");
    none.zones = Vec::new();
    let mut big = plan(p, 1, 4, "big prices", "2035-09-09T13:00:00", "2035-09-09T14:00:00");
    big.zones = zones(&["123456789.123456789", "999999999999.99"]);
    write(store, &[stored(one, 1), stored(many, 1), stored(none, 1), stored(big, 1)]).await;

    let got = by_day(store, d, d).await;
    let prices: Vec<(Option<String>, Option<String>)> = got
        .iter()
        .map(|r| (r.min_price.map(|m| m.to_string()), r.max_price.map(|m| m.to_string())))
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        prices,
        vec![
            (s("20.00"), s("20.00")),
            (s("0.01"), s("100")),
            (None, None),
            (s("123456789.123456789"), s("999999999999.99")),
        ]
    );
    assert_eq!(got[0].min_price, Some(dec("20.00")));
    assert_eq!(got[0].min_price.unwrap().scale(), 2);
}

/// `load_plan_states` returns hash, event day, version and ever-online of what was written, for
/// every stored plan (offline ones included), with the full u64 range of hashes.
pub async fn plan_states_round_trip(store: &SharedStore) {
    let p = "conf-states";
    let mut a = stored(plan(p, 10, 1, "a", "2036-02-29T10:00:00", "2036-02-29T11:00:00"), 1);
    let mut b = stored(offline(plan(p, 10, 2, "b", "2036-03-01T00:00:00", "2036-03-01T01:00:00")), 1 << 62);
    let mut c =
        stored(plan(p, u32::MAX as u64 + 5, 1642, "c", "2036-12-31T23:59:59", "2037-01-01T01:00:00"), 7);
    a.hash = u64::MAX;
    b.hash = 1 << 63;
    c.hash = 0;
    write(store, &[a.clone(), b.clone(), c.clone()]).await;

    let expected: HashMap<PlanKey, PlanState> = [&a, &b, &c]
        .into_iter()
        .map(|s| {
            let state = PlanState {
                hash: s.hash,
                event_date: s.event_date,
                version: s.version,
                ever_online: s.ever_online,
            };
            (s.plan.key.clone(), state)
        })
        .collect();
    assert_eq!(states_of(store, p).await, expected);
    assert_eq!(expected[&c.plan.key].event_date, day("2036-12-31"));
}

/// First and last event day of ever-online plans; offline-only plans do not count.
pub async fn day_bounds_cover_ever_online_days(store: &SharedStore) {
    let p = "conf-daybounds";
    let first = stored(plan(p, 1, 1, "first day", "1971-01-01T00:00:00", "1971-01-01T02:00:00"), 1);
    let last = stored(plan(p, 1, 2, "last day", "2099-12-31T23:59:59", "2100-01-01T01:00:00"), 1);
    let early_offline =
        stored(offline(plan(p, 1, 3, "offline", "1970-06-01T10:00:00", "1970-06-01T11:00:00")), 1);
    let late_offline =
        stored(offline(plan(p, 1, 4, "offline", "2100-06-01T10:00:00", "2100-06-01T11:00:00")), 1);
    write(store, &[first.clone(), last.clone(), early_offline, late_offline]).await;
    assert_eq!(store.day_bounds().await.expect("day_bounds"), Some((day("1971-01-01"), day("2099-12-31"))));
    assert_eq!(by_day(store, day("1971-01-01"), day("1971-01-01")).await, vec![row(&first)]);
    assert_eq!(by_day(store, day("2099-12-31"), day("2099-12-31")).await, vec![row(&last)]);
}

/// Every valid feed date is stored, ordered and searched exactly: year 1 and year 9999 in UTC and in
/// New York, where the evening of 9999-12-31 is UTC day 10000-01-01 (accepted with its real
/// instant, on its real UTC day) and 0001-01-01 runs on local mean time (-4:56:02).
pub async fn extreme_days_are_stored_ordered_and_searched(store: &SharedStore) {
    let p = "conf-extremes";
    let ny: chrono_tz::Tz = "America/New_York".parse().expect("zone");
    let in_ny = |plan, version| StoredPlan::new(plan, ny, false, version);
    let first = stored(plan(p, 1, 1, "utc first day", "0001-01-01T00:00:00", "0001-01-01T01:00:00"), 1);
    let ny_first =
        in_ny(plan(p, 1, 2, "new york first day", "0001-01-01T10:00:00", "0001-01-01T11:00:00"), 1);
    let normal = stored(plan(p, 1, 3, "normal", "2039-03-03T10:00:00", "2039-03-03T11:00:00"), 1);
    let last = stored(plan(p, 1, 4, "utc last day", "9999-12-31T22:00:00", "9999-12-31T23:59:59"), 1);
    let ny_last =
        in_ny(plan(p, 1, 5, "new york new year's eve", "9999-12-31T20:00:00", "9999-12-31T23:00:00"), 1);
    assert_eq!(ny_last.start_utc, utc("+10000-01-01T01:00:00"));
    assert_eq!(ny_last.event_date, day("+10000-01-01"));
    assert_eq!(ny_first.start_utc, utc("0001-01-01T14:56:02"));
    let all = [first.clone(), ny_first.clone(), normal.clone(), last.clone(), ny_last.clone()];
    write(store, &all).await;
    write(store, &all).await;

    assert_eq!(by_day(store, day("0001-01-01"), day("0001-01-01")).await, vec![row(&first), row(&ny_first)]);
    assert_eq!(by_day(store, day("9999-12-31"), day("9999-12-31")).await, vec![row(&last)]);
    assert_eq!(by_day(store, day("+10000-01-01"), day("+10000-01-01")).await, vec![row(&ny_last)]);
    let everything: Vec<EventRow> = by_day(store, day("0001-01-01"), day("+10000-01-01"))
        .await
        .into_iter()
        .filter(|r| all.iter().any(|a| a.plan.key.id() == r.id))
        .collect();
    assert_eq!(everything, all.iter().map(row).collect::<Vec<_>>(), "ordered by instant, nothing hidden");
    let bounds = store.day_bounds().await.expect("day_bounds").expect("non-empty");
    assert_eq!(bounds, (day("0001-01-01"), day("+10000-01-01")));
    let directory: Vec<(NaiveDate, u64)> = store
        .day_directory()
        .await
        .expect("day_directory")
        .into_iter()
        .filter(|d| d.day < day("1970-01-01") || d.day > day("2105-12-31"))
        .map(|d| (d.day, d.plans))
        .collect();
    assert_eq!(directory, vec![(day("0001-01-01"), 2), (day("9999-12-31"), 1), (day("+10000-01-01"), 1)]);
    let states = states_of(store, p).await;
    assert_eq!(states[&ny_last.plan.key].event_date, day("+10000-01-01"));
    assert_eq!(states[&ny_first.plan.key].event_date, day("0001-01-01"));

    // Moving between the extremes leaves the plan on its new day only, both ways.
    let there = moved(
        plan(p, 1, 5, "moved to year one", "0001-01-02T00:00:00", "0001-01-02T01:00:00"),
        2,
        day("+10000-01-01"),
    );
    write(store, std::slice::from_ref(&there)).await;
    assert!(by_day(store, day("+10000-01-01"), day("+10000-01-01")).await.is_empty());
    assert_eq!(by_day(store, day("0001-01-02"), day("0001-01-02")).await, vec![row(&there)]);
    let back = StoredPlan { version: 3, previous_event_date: Some(day("0001-01-02")), ..ny_last.clone() };
    write(store, std::slice::from_ref(&back)).await;
    assert!(by_day(store, day("0001-01-02"), day("0001-01-02")).await.is_empty());
    assert_eq!(by_day(store, day("+10000-01-01"), day("+10000-01-01")).await, vec![row(&ny_last)]);
}

/// The change feed: every write (a plan's day, the day it moved away from, an ever-online mark)
/// moves the marker past the one read before it and lists its days after that marker; nothing is
/// listed after the newest marker.
pub async fn change_feed_lists_the_days_written_since_a_marker(store: &SharedStore) {
    let p = "conf-changes";
    let changed_after = |since: i64| async move {
        let mut days: Vec<NaiveDate> = store
            .days_changed_since(since)
            .await
            .expect("days_changed_since")
            .into_iter()
            .filter(|c| c.marker > since && c.day.format("%Y").to_string() == "2040")
            .map(|c| c.day)
            .collect();
        days.sort();
        days
    };
    let m0 = store.change_marker().await.expect("change_marker");
    let a = stored(offline(plan(p, 1, 1, "a", "2040-01-01T10:00:00", "2040-01-01T11:00:00")), 1);
    let b = stored(plan(p, 1, 2, "b", "2040-01-02T10:00:00", "2040-01-02T11:00:00"), 1);
    write(store, &[a.clone(), b]).await;
    let m1 = store.change_marker().await.expect("change_marker");
    assert!(m1 > m0, "a write moves the marker: {m0} -> {m1}");
    assert_eq!(changed_after(m0).await, vec![day("2040-01-01"), day("2040-01-02")]);
    assert!(changed_after(m1).await.is_empty(), "nothing after the newest marker");

    let moved_b =
        moved(plan(p, 1, 2, "b moved", "2040-01-05T10:00:00", "2040-01-05T11:00:00"), 2, day("2040-01-02"));
    write(store, &[moved_b]).await;
    let m2 = store.change_marker().await.expect("change_marker");
    assert!(m2 > m1);
    assert_eq!(changed_after(m1).await, vec![day("2040-01-02"), day("2040-01-05")]);

    store.mark_ever_online(&[(a.plan.key.clone(), day("2040-01-01"))]).await.expect("mark_ever_online");
    let m3 = store.change_marker().await.expect("change_marker");
    assert!(m3 > m2);
    assert_eq!(changed_after(m2).await, vec![day("2040-01-01")]);
    let all = store.days_changed_since(m0).await.expect("days_changed_since");
    assert!(all.iter().all(|c| c.marker <= m3));
}

/// The search's day directory: every day holding an ever-online plan's latest version, ascending,
/// with its plan count and title bytes; offline-only days and the old day of a moved plan are not
/// listed.
pub async fn day_directory_lists_ever_online_days_with_sizes(store: &SharedStore) {
    let p = "conf-directory";
    let a = stored(plan(p, 1, 1, "ab", "2038-01-05T10:00:00", "2038-01-05T11:00:00"), 1);
    let b = stored(plan(p, 1, 2, "cde", "2038-01-05T23:00:00", "2038-01-06T01:00:00"), 1);
    let off = stored(offline(plan(p, 1, 3, "offline", "2038-01-06T10:00:00", "2038-01-06T11:00:00")), 1);
    let before = stored(plan(p, 1, 4, "moving", "2038-02-01T10:00:00", "2038-02-01T11:00:00"), 1);
    write(store, &[a, b, off, before]).await;
    let after =
        moved(plan(p, 1, 4, "moved!", "2038-02-03T10:00:00", "2038-02-03T11:00:00"), 2, day("2038-02-01"));
    write(store, &[after]).await;
    let directory: Vec<(NaiveDate, u64, u64)> = store
        .day_directory()
        .await
        .expect("day_directory")
        .into_iter()
        .filter(|d| d.day.format("%Y").to_string() == "2038")
        .map(|d| (d.day, d.plans, d.text_bytes))
        .collect();
    assert_eq!(directory, vec![(day("2038-01-05"), 2, 5), (day("2038-02-03"), 1, 6)]);
    let all = store.day_directory().await.expect("day_directory");
    assert!(all.windows(2).all(|w| w[0].day < w[1].day), "ascending, one entry per day");
}

/// The fetch log keeps every field and lists the newest first.
pub async fn fetch_log_round_trip(store: &SharedStore) {
    let p = "conf-fetch";
    let ok = FetchRecord {
        provider: p.into(),
        started_at: utc("2100-01-01T00:00:01"),
        duration_ms: 1234,
        http_status: Some(200),
        bytes: 5_000_000_000,
        plans_seen: 4000,
        plans_written: 120,
        plans_unchanged: 3870,
        plans_skipped: 10,
        error: None,
        outcome: FetchOutcome::Ok,
        plans_spooled: Some(0),
        plans_dropped: Some(0),
    };
    let failed = FetchRecord {
        provider: p.into(),
        started_at: utc("2100-01-01T00:00:02"),
        duration_ms: 30_000,
        http_status: Some(503),
        bytes: 0,
        error: Some("provider answered 503 service unavailable".into()),
        outcome: FetchOutcome::HttpError,
        plans_spooled: Some(0),
        plans_dropped: Some(0),
        ..Default::default()
    };
    // Some plans spooled, some rejected for good; and a record without counts (as an older
    // build's spool entry comes back).
    let timed_out = FetchRecord {
        provider: p.into(),
        started_at: utc("2100-01-01T00:00:03"),
        duration_ms: 60_000,
        http_status: None,
        bytes: 1_048_576,
        plans_seen: 17,
        plans_written: 10,
        error: Some("timed out reading the body (truncated after 1048576 bytes)".into()),
        outcome: FetchOutcome::StoreRejected,
        plans_spooled: Some(5),
        plans_dropped: Some(2),
        ..Default::default()
    };
    let unknown_counts = FetchRecord {
        provider: p.into(),
        started_at: utc("2100-01-01T00:00:00"),
        outcome: FetchOutcome::Skipped,
        error: Some("circuit open".into()),
        ..Default::default()
    };
    // Recorded out of order: the log lists by start time.
    for f in [&ok, &timed_out, &unknown_counts, &failed] {
        store.record_fetch(f).await.expect("record_fetch");
    }
    assert_eq!(
        store.recent_fetches(4).await.expect("recent_fetches"),
        vec![timed_out.clone(), failed.clone(), ok, unknown_counts]
    );
    assert_eq!(store.recent_fetches(2).await.expect("recent_fetches"), vec![timed_out, failed]);
    assert!(store.recent_fetches(0).await.expect("recent_fetches").is_empty());
}

/// Plans, states and fetches survive closing and reopening the store, and the reopened store
/// keeps applying the version rule to what it had before. Returns the reopened store.
pub async fn restart_keeps_everything<R>(store: SharedStore, reopen: &R) -> SharedStore
where
    R: Fn(SharedStore) -> BoxFuture<'static, SharedStore>,
{
    let p = "conf-restart";
    let d = day("2037-07-07");
    let (s, e) = ("2037-07-07T18:00:00", "2037-07-07T20:00:00");
    let online = stored(plan(p, 1, 1, "online", s, e), 5);
    let gone_offline = stored(offline(plan(p, 1, 2, "gone offline", s, e)), 6);
    let never = stored(offline(plan(p, 1, 3, "never online", s, e)), 5);
    write(&store, &[online.clone(), stored(plan(p, 1, 2, "was online", s, e), 5), never.clone()]).await;
    write(&store, std::slice::from_ref(&gone_offline)).await;
    let fetch = FetchRecord {
        provider: p.into(),
        started_at: utc("2090-05-05T05:05:05"),
        duration_ms: 5,
        http_status: Some(200),
        bytes: 55,
        plans_seen: 3,
        plans_written: 3,
        ..Default::default()
    };
    store.record_fetch(&fetch).await.expect("record_fetch");
    let mut expected = vec![row(&online), row(&gone_offline)];
    expected.sort_by_key(|r| (r.start_utc, r.id));
    let states_before = states_of(&store, p).await;
    assert_eq!(by_day(&store, d, d).await, expected);

    let store = reopen(store).await;
    store.ping().await.expect("ping after reopening");
    assert_eq!(by_day(&store, d, d).await, expected, "plans survive a restart");
    assert_eq!(states_of(&store, p).await, states_before, "plan states survive a restart");
    assert!(!states_before[&never.plan.key].ever_online);
    let fetches = store.recent_fetches(1000).await.expect("recent_fetches");
    assert_eq!(fetches.iter().filter(|f| f.provider == p).collect::<Vec<_>>(), vec![&fetch]);

    // Older versions are still ignored, the sticky flag still holds, newer ones still win.
    write(&store, &[stored(plan(p, 1, 1, "stale", s, e), 4)]).await;
    let newer = stored(offline(plan(p, 1, 1, "newer after restart", s, e)), 7);
    write(&store, std::slice::from_ref(&newer)).await;
    let mut expected = vec![row(&newer), row(&gone_offline)];
    expected.sort_by_key(|r| (r.start_utc, r.id));
    assert_eq!(by_day(&store, d, d).await, expected);
    store
}

/// After `restart_keeps_everything`, the data of the earlier cases is still there (run by
/// `run_all` only).
pub async fn earlier_cases_survive_restart(store: &SharedStore) {
    assert_eq!(store.day_bounds().await.expect("day_bounds"), Some((day("0001-01-01"), day("+10000-01-01"))));
    let far = by_day(store, day("9999-12-31"), day("+10000-01-01")).await;
    assert_eq!(titles(&far), vec!["utc last day", "new york new year's eve"]);
    let prices = by_day(store, day("2035-09-09"), day("2035-09-09")).await;
    assert_eq!(prices.len(), 4);
    assert_eq!(prices[1].min_price.map(|m| m.to_string()).as_deref(), Some("0.01"));
    assert_eq!(titles(&by_day(store, day("2033-03-19"), day("2033-03-19")).await), vec!["moved again"]);
    assert_eq!(states_of(store, "conf-states").await.len(), 3);
    let fetches = store.recent_fetches(3).await.expect("recent_fetches");
    assert_eq!(fetches.len(), 3);
    assert!(fetches.iter().all(|f| f.provider == "conf-fetch"));
}
