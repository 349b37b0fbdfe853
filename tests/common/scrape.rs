//! Reading a running planfeed from the outside: `/metrics` samples and its JSON log lines.

use std::time::{Duration, Instant};

/// The text of `GET {base}/metrics` (panics unless it answers 200).
pub async fn metrics_text(base: &str) -> String {
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200, "/metrics");
    res.text().await.unwrap()
}

/// The value of the sample `series` (`name{labels}` exactly as rendered) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series).map(|(_, v)| v.parse().unwrap()))
}

/// Waits until `series` reaches `at_least` on `base` (a safety net of `super::PATIENCE`).
pub async fn wait_sample(base: &str, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + super::PATIENCE;
    loop {
        if let Some(v) = sample(&metrics_text(base).await, series).filter(|v| *v >= at_least) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} did not reach {at_least} within {:?}", super::PATIENCE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON log lines of `log` whose message is `message`.
pub fn log_lines(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// The metric families `text` exports (from its `# TYPE` lines) and those with a `# HELP` line.
pub fn families(text: &str) -> (Vec<String>, Vec<String>) {
    let names = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    (names("# TYPE "), names("# HELP "))
}
