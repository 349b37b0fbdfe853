//! Every role is observable: an `ingest` process serves `/health`, `/ready` and `/metrics` (and no
//! `/search`), and what each role exports at `/metrics` is exactly what docs/operations.md's metric
//! table documents for it, each family with its `# HELP`.

mod common;

use std::path::{Path, PathBuf};

use common::binary::{free_port, local_toml, Planfeed};
use common::scrape::{families, metrics_text, sample, wait_sample};
use planfeed::simulator::{self, Simulator};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider").join(name)
}

/// A `planfeed serve` in `role`, fetching `url`, in `dir`.
fn serve(dir: &Path, role: &str, url: &str) -> Planfeed {
    let port = free_port();
    let toml = format!("role = \"{role}\"\n{}", local_toml(dir, port, url, ""));
    std::fs::write(dir.join("local.toml"), toml).unwrap();
    Planfeed::serve(dir, port)
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_process_serves_probes_and_its_pipeline_metrics_but_no_search() {
    let sim = Simulator::from_files(&[fixture("response_1.xml")]).unwrap();
    let url = simulator::spawn_local(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pf = serve(dir.path(), "ingest", &url);
    pf.wait_ready().await;

    assert_eq!(get(&pf.base, "/ready").await, (200, r#"{"status":"ready"}"#.to_string()));
    assert_eq!(get(&pf.base, "/health").await, (200, r#"{"status":"ok"}"#.to_string()));
    let (status, body) = get(&pf.base, "/search").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");

    let ok = r#"planfeed_fetches_total{provider="fever",outcome="ok"}"#;
    assert_eq!(wait_sample(&pf.base, ok, 1.0).await, 1.0);
    let text = metrics_text(&pf.base).await;
    assert_eq!(sample(&text, r#"planfeed_plans_total{outcome="written"}"#), Some(4.0), "{text}");
    assert!(
        sample(&text, r#"planfeed_last_successful_fetch_timestamp_seconds{provider="fever"}"#).unwrap() > 0.0
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&text, "process_open_fds").unwrap() > 0.0);
    assert!(!text.contains("planfeed_search_"), "no search metrics without searches:\n{text}");
    assert!(!text.contains("planfeed_http_requests_total"), "{text}");
}

/// Rows of docs/operations.md's metric table: (name, column *in*).
fn documented() -> Vec<(String, String)> {
    let guide = include_str!("../docs/operations.md");
    let section = guide.split("\n## Metrics\n").nth(1).unwrap().split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].trim_matches('`').to_string(), cells[3].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exported_are_the_documented_ones() {
    let rows = documented();
    assert!(rows.len() >= 40, "{rows:?}");
    for (name, within) in &rows {
        assert!(["all", "api", "ingest", "clickhouse"].contains(&within.as_str()), "{name}: in = {within}");
    }
    let sim = Simulator::from_files(&[fixture("response_1.xml")]).unwrap();
    let url = simulator::spawn_local(sim).await.unwrap();
    for (role, has) in [
        ("both", ["all", "api", "ingest"]),
        ("api", ["all", "api", "all"]),
        ("ingest", ["all", "ingest", "all"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut pf = serve(dir.path(), role, &url);
        pf.wait_ready().await;
        // The first scrape: every family of the role is there from the start.
        let (exported, helped) = families(&metrics_text(&pf.base).await);
        let mut expected: Vec<String> = rows
            .iter()
            .filter(|(_, within)| has.contains(&within.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        expected.sort();
        let missing: Vec<_> = expected.iter().filter(|n| !exported.contains(n)).collect();
        let undocumented: Vec<_> = exported.iter().filter(|n| !expected.contains(n)).collect();
        assert!(
            missing.is_empty() && undocumented.is_empty(),
            "role {role}: documented but not exported {missing:?}; exported but not documented for it {undocumented:?}"
        );
        assert_eq!(helped, exported, "role {role}: every family has a # HELP line");
    }
}
