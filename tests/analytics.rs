//! Every query of `docs/analytics.md` runs against a real ClickHouse server filled by the real
//! pipeline (the fixture snapshots and a fourth, ingested one after the other, and two fetches that
//! fail), and answers what that data says.

mod common;

use std::path::Path;

use planfeed::config::Settings;
use planfeed::domain::FetchOutcome;

fn documented_queries() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/analytics.md")).unwrap();
    let mut out = Vec::new();
    let mut title = String::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("### ") {
            title = t.to_string();
        } else if line.trim() == "```sql" {
            let sql: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push((title.clone(), sql.join("\n")));
        }
    }
    out
}

async fn query(url: &str, database: &str, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let res = reqwest::Client::new()
        .post(format!("{url}/?database={database}&wait_end_of_query=1"))
        .body(format!("{sql}\nFORMAT TabSeparated"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect())
}

/// A fourth snapshot after the three fixtures: plan 291 moves to the next day (a tombstone stays
/// on its old day) with new zones, base plan 322 goes offline (its plan 1642 sold out, 1643 left
/// out of the feed), and a plan that was never on sale online appears.
const FOURTH_SNAPSHOT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<planList version="1.0">
   <output>
      <base_plan base_plan_id="291" sell_mode="online" title="Camela en concierto">
         <plan plan_start_date="2021-07-01T21:00:00" plan_end_date="2021-07-01T22:00:00" plan_id="291" sell_from="2020-07-01T00:00:00" sell_to="2021-07-01T20:00:00" sold_out="false">
            <zone zone_id="40" capacity="150" price="25.00" name="Platea" numbered="true" />
            <zone zone_id="38" capacity="0" price="17.50" name="Grada 2" numbered="false" />
         </plan>
      </base_plan>
      <base_plan base_plan_id="322" sell_mode="offline" organizer_company_id="2" title="Pantomima Full">
         <plan plan_start_date="2021-02-10T20:00:00" plan_end_date="2021-02-10T21:30:00" plan_id="1642" sell_from="2021-01-01T00:00:00" sell_to="2021-02-09T19:50:00" sold_out="true">
            <zone zone_id="311" capacity="0" price="55.00" name="A42" numbered="true" />
         </plan>
      </base_plan>
      <base_plan base_plan_id="900" sell_mode="offline" title="Never on sale">
         <plan plan_start_date="2021-07-01T10:00:00" plan_end_date="2021-07-01T11:00:00" plan_id="901" sell_from="2021-06-01T00:00:00" sell_to="2021-07-01T09:00:00" sold_out="false">
            <zone zone_id="1" capacity="0" price="1.00" name="Pista" numbered="false" />
         </plan>
      </base_plan>
   </output>
</planList>
"#;

/// Fetches one feed through the real pipeline with `env` (the store's settings); its record.
async fn ingest(env: &[(String, String)], feed: &Path) -> planfeed::domain::FetchRecord {
    let mut env = env.to_vec();
    env.push(("PLANFEED__PIPELINE__FLUSH_AGE".to_string(), "20ms".to_string()));
    let settings = Settings::load_with(Path::new("/nonexistent"), env).unwrap();
    let feed = format!("file://{}", feed.display());
    planfeed::service::ingest_once(settings, Some(feed), None, false).await.unwrap()
}

/// Ingests the three fixture snapshots and a fourth (see [`FOURTH_SNAPSHOT`]), then two fetches
/// that fail (a truncated body, a missing file), with `env` (the store's settings); then runs
/// every documented query on `url` and checks the answers.
async fn ingest_and_query(env: Vec<(String, String)>, url: &str, after_ingest: impl FnOnce()) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider");
    let dir = tempfile::tempdir().unwrap();
    let (fourth, truncated) = (dir.path().join("response_4.xml"), dir.path().join("truncated.xml"));
    std::fs::write(&fourth, FOURTH_SNAPSHOT).unwrap();
    std::fs::write(&truncated, "<planList><output>").unwrap();
    let mut feeds: Vec<_> = ["response_1.xml", "response_2.xml", "response_3.derived.xml"]
        .map(|f| fixtures.join(f).canonicalize().unwrap())
        .to_vec();
    feeds.push(fourth);
    for feed in &feeds {
        let record = ingest(&env, feed).await;
        assert_eq!((record.error.as_deref(), record.outcome), (None, FetchOutcome::Ok), "{}", feed.display());
    }
    let record = ingest(&env, &truncated).await;
    assert_eq!(record.outcome, FetchOutcome::Truncated, "{record:?}");
    let record = ingest(&env, &dir.path().join("missing.xml")).await;
    assert_eq!(record.outcome, FetchOutcome::Connect, "{record:?}");
    after_ingest();

    let queries = documented_queries();
    assert_eq!(queries.len(), 10, "docs/analytics.md documents {} queries", queries.len());
    let mut results = std::collections::HashMap::new();
    for (title, sql) in &queries {
        for needless in [
            "toFloat64",
            "toDecimal",
            "bitShiftRight",
            "intDiv(",
            "OrNull(",
            "FINAL",
            "superseded",
            "max(version)",
        ] {
            assert!(!sql.contains(needless), "query {title:?} needs {needless}");
        }
        let rows =
            query(url, "analytics", sql).await.unwrap_or_else(|e| panic!("query {title:?} failed: {e}"));
        results.insert(title.split('.').next().unwrap().to_string(), rows);
    }
    check_answers(&results);
}

/// The answers of the documented queries (by number) after [`ingest_and_query`]'s fetches.
fn check_answers(results: &std::collections::HashMap<String, Vec<Vec<String>>>) {
    let rows = |n: &str, columns: &[usize]| -> Vec<String> {
        results[n]
            .iter()
            .map(|r| columns.iter().map(|&c| r[c].as_str()).collect::<Vec<_>>().join(" "))
            .collect()
    };
    // 1. Plans per day: plan 291 moved to July 1 (its old day is empty: the tombstone is no plan),
    //    the offline plan 1642 stays searchable, the plan never on sale online is not counted.
    assert_eq!(rows("1", &[0, 1]), ["2021-02-10 1", "2021-02-11 1", "2021-07-01 1", "2021-07-31 1"]);
    // 2. Plan 291 changed in every snapshot: four versions, capacities as fed, prices as numbers,
    //    fetch times as instants of this run.
    assert_eq!(rows("2", &[5]), ["243", "100", "90", "240", "50", "90", "200", "0", "80", "150", "0"]);
    assert_eq!(rows("2", &[2, 3, 6])[..3], ["0 40 20.0000", "1 38 15.0000", "2 30 30.0000"]);
    let this_year = chrono::Utc::now().format("%Y-").to_string();
    assert!(results["2"].iter().all(|r| r[0].starts_with(&this_year)), "{:?}", results["2"]);
    // 3. Every sample plan is in the past.
    assert!(results["3"].is_empty(), "{:?}", results["3"]);
    // 4. Sold-out zones of the latest versions, with their plan; not the never-online plan's.
    assert_eq!(
        results["4"],
        [
            ["fever", "291", "291", "Camela en concierto", "2021-07-01 21:00:00", "38", "Grada 2", "17.5000"],
            ["fever", "322", "1642", "Pantomima Full", "2021-02-10 20:00:00", "311", "A42", "55.0000"],
            ["fever", "1591", "1642", "Los Morancos", "2021-07-31 20:00:00", "186", "Amfiteatre", "75.0000"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    // 5. Six fetches, two failed.
    let sum = |n: &str, c: usize| results[n].iter().map(|r| r[c].parse::<u64>().unwrap()).sum::<u64>();
    assert_eq!((sum("5", 2), sum("5", 3)), (6, 2));
    // 6. By outcome: the metric's labels, what each fetch wrote; nothing spooled or dropped.
    assert_eq!(
        rows("6", &[0, 2, 3, 5, 6]),
        ["fever connect 1 0 0", "fever ok 4 0 0", "fever truncated 1 0 0"]
    );
    assert!(results["6"][1][4].parse::<u64>().unwrap() >= 9, "{:?}", results["6"]);
    // 7. Base plan 322 went offline: plan 1642 was in its last observation, 1643 was not.
    assert_eq!(rows("7", &[1, 2, 3, 4]), ["322 1642 Pantomima Full 2021-02-10 20:00:00"]);
    // 8. Plan 291's cheapest zone went from 15 to 17.50 over its four versions.
    assert!(
        rows("8", &[1, 2, 3, 4, 5]).contains(&"291 291 15.0000 17.5000 4".to_string()),
        "{:?}",
        results["8"]
    );
    // 9. Seats left in the latest versions, fewest first.
    assert_eq!(rows("9", &[1, 2, 3, 4]), ["322 1642 0 1", "322 1643 2 1", "1591 1642 12 2", "291 291 150 2"]);
    // 10. Price ranges of the latest versions, computed on the numbers.
    assert_eq!(
        rows("10", &[1, 2, 4, 5, 6]),
        [
            "1591 1642 65.0000 75.0000 10.0000",
            "291 291 17.5000 25.0000 7.5000",
            "322 1642 55.0000 55.0000 0.0000",
            "322 1643 55.0000 55.0000 0.0000"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_query_runs_and_answers_from_ingested_data() {
    let Some(server) = common::clickhouse::ClickHouseServer::start() else { return };
    let env = vec![
        ("PLANFEED__STORE__BACKEND".to_string(), "clickhouse".to_string()),
        ("PLANFEED__STORE__CLICKHOUSE__URL".to_string(), server.url()),
        ("PLANFEED__STORE__CLICKHOUSE__DATABASE".to_string(), "analytics".to_string()),
    ];
    ingest_and_query(env, &server.url(), || ()).await;
}

/// The same on a two-replica cluster: written through the failover store, read on the replica
/// that was not written to first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_query_runs_on_a_replica_of_the_cluster() {
    let Some(cluster) = common::cluster::Cluster::start(2) else { return };
    ingest_and_query(cluster.env("analytics"), &cluster.nodes[1].url(), || {
        cluster.sync_replicas("analytics")
    })
    .await;
}
