//! Every query of `docs/analytics.md` runs against a real ClickHouse server filled by the real
//! pipeline (the fixture snapshots, ingested one after the other).

mod common;

use std::path::Path;

use planfeed::config::Settings;

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

/// Ingests the three fixture snapshots with `env` (the store's settings), then runs every documented
/// query on `url` and checks the answers.
async fn ingest_and_query(env: Vec<(String, String)>, url: &str, after_ingest: impl FnOnce()) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider");
    for file in ["response_1.xml", "response_2.xml", "response_3.derived.xml"] {
        let mut env = env.clone();
        env.push(("PLANFEED__PIPELINE__FLUSH_AGE".to_string(), "20ms".to_string()));
        let settings = Settings::load_with(Path::new("/nonexistent"), env).unwrap();
        let feed = format!("file://{}", fixtures.join(file).canonicalize().unwrap().display());
        let record = planfeed::service::ingest_once(settings, Some(feed), None, false).await.unwrap();
        assert_eq!(record.error, None, "{file}");
    }
    after_ingest();

    let queries = documented_queries();
    assert!(queries.len() >= 9, "docs/analytics.md documents {} queries", queries.len());
    let mut results = std::collections::HashMap::new();
    for (title, sql) in &queries {
        for conversion in ["toFloat64", "toDecimal", "bitShiftRight", "intDiv(", "OrNull("] {
            assert!(!sql.contains(conversion), "query {title:?} converts with {conversion}");
        }
        let rows =
            query(url, "analytics", sql).await.unwrap_or_else(|e| panic!("query {title:?} failed: {e}"));
        results.insert(title.split('.').next().unwrap().to_string(), rows);
    }

    // 1. Plans per day: the four searchable plans on their four days.
    let per_day: Vec<(String, String)> = results["1"].iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let expected = [("2021-02-10", "1"), ("2021-02-11", "1"), ("2021-06-30", "1"), ("2021-07-31", "1")];
    assert_eq!(per_day, expected.map(|(d, n)| (d.to_string(), n.to_string())));
    // 2. Plan 291 changed in every snapshot: three versions of three zones, capacities as fed, prices
    //    as numbers, fetch times as instants of this run.
    let caps: Vec<&str> = results["2"].iter().map(|r| r[3].as_str()).collect();
    assert_eq!(caps, ["243", "100", "90", "240", "50", "90", "200", "0", "80"]);
    assert_eq!(results["2"][0][4], "20.0000");
    let this_year = chrono::Utc::now().format("%Y-").to_string();
    assert!(results["2"].iter().all(|r| r[0].starts_with(&this_year)), "{:?}", results["2"]);
    // 4. Capacity-0 zones of the latest versions.
    let sold_out: Vec<String> = results["4"].iter().map(|r| format!("{}/{}/{}", r[1], r[2], r[3])).collect();
    assert_eq!(sold_out, ["291/291/38", "1591/1642/186"]);
    // 5. Three successful fetches.
    let fetches: u64 = results["5"].iter().map(|r| r[2].parse::<u64>().unwrap()).sum();
    let failed: u64 = results["5"].iter().map(|r| r[3].parse::<u64>().unwrap()).sum();
    assert_eq!((fetches, failed), (3, 0));
    // 6. Nothing went offline in the samples (444 was never valid).
    assert!(results["6"].is_empty());
    // 8. Seats left in the latest version of 1591/1642: 0 + 12.
    assert!(
        results["8"].iter().any(|r| r[1] == "1591" && r[2] == "1642" && r[3] == "12"),
        "{:?}",
        results["8"]
    );
    // 9. The widest price range is plan 291's, computed on the numbers.
    assert_eq!(
        results["9"][0][..7],
        ["fever", "291", "291", "Camela en concierto", "15.0000", "30.0000", "15.0000"]
    );
    assert_eq!(results["9"].len(), 4);
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
