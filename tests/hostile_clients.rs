//! Hostile clients and feeds, second round (issue 29), against the real binary: client identity
//! behind a trusted proxy (forged `X-Forwarded-For`, one IPv6 /64 rotating addresses) and ids the
//! stores cannot hold. Counts are small; `scripts/hostile.py` runs the full-size cases.

mod common;

use std::time::{Duration, Instant};

use common::binary::Planfeed;
use common::PATIENCE;
use planfeed::simulator::{self, Faults, FeedSource, Simulator};

/// Starts the binary on a provider serving `body`, with `extra` TOML after `listen`.
async fn start(body: String, extra: &str) -> (Planfeed, tempfile::TempDir) {
    let sim = Simulator::new(FeedSource::Rotation(vec![body.into()]), Faults::default());
    let url = simulator::spawn_local(sim).await.unwrap();
    let s = Planfeed::start(&url, extra, |toml| toml).await;
    (s.pf, s.dir)
}

fn feed(base_plans: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><planList version="1.0"><output>{base_plans}</output></planList>"#
    )
}

fn plan(id: &str, day: u32, zone_id: &str) -> String {
    format!(
        r#"<plan plan_id="{id}" plan_start_date="2021-06-{day:02}T20:00:00" plan_end_date="2021-06-{day:02}T22:00:00"><zone zone_id="{zone_id}" price="10.00"/></plan>"#
    )
}

/// `[server.rate_limit]` for these tests: a burst of `burst`, then one request a second.
fn limits(burst: u32, identity: &str) -> String {
    format!(
        "[server.rate_limit]\nper_client_per_second = 1\nper_client_burst = {burst}\n\
         global_per_second = 100000\nglobal_burst = 100000\n{identity}\n"
    )
}

/// Sends `n` searches through one keep-alive connection, the `i`-th with `X-Forwarded-For:
/// forwarded(i)`; returns how many were answered 200 and how long they took. Every other answer
/// must be the contract's 429.
async fn searches(base: &str, n: usize, forwarded: impl Fn(usize) -> String) -> (usize, Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut ok = 0;
    for i in 0..n {
        let r = client
            .get(format!("{base}/search"))
            .header("x-forwarded-for", forwarded(i))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
            }
            other => panic!("status {other}"),
        }
    }
    (ok, started.elapsed())
}

/// The burst plus what one request a second refills during `took` (the machine may be slow).
fn at_most(burst: usize, took: Duration) -> usize {
    burst + took.as_secs() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_behind_a_trusted_proxy_is_limited_as_its_real_client() {
    let identity = "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\nipv6_prefix = 64";
    let body = feed(&format!(
        r#"<base_plan base_plan_id="1" sell_mode="online" title="T">{}</base_plan>"#,
        plan("1", 1, "1")
    ));
    let (pf, _dir) = start(body, &limits(20, identity)).await;

    // The client writes a fresh address per request; the trusted proxies append what they saw.
    let (ok, took) = searches(&pf.base, 60, |i| format!("198.51.100.{i}, 203.0.113.9, 10.1.2.3")).await;
    assert!((20..=at_most(20, took)).contains(&ok), "{ok} of 60 forged requests admitted in {took:?}");

    // 60 addresses of one IPv6 /64 are one client; the next /64 is another.
    let (ok, took) =
        searches(&pf.base, 60, |i| format!("2001:db8:1:2:{:x}:{i:x}::1", (i * 7919) & 0xffff)).await;
    assert!((20..=at_most(20, took)).contains(&ok), "{ok} of 60 requests of one /64 admitted in {took:?}");
    let (ok, _) = searches(&pf.base, 1, |_| "2001:db8:1:3::1".to_owned()).await;
    assert_eq!(ok, 1, "another /64 is another client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Only 10.0.0.0/8 is trusted: the test's own connections (127.0.0.1) are the client.
    let identity = "trusted_proxies = [\"10.0.0.0/8\"]";
    let body = feed(&format!(
        r#"<base_plan base_plan_id="1" sell_mode="online" title="T">{}</base_plan>"#,
        plan("1", 1, "1")
    ));
    let (pf, _dir) = start(body, &limits(10, identity)).await;
    let (ok, took) = searches(&pf.base, 30, |i| format!("198.51.100.{i}")).await;
    assert!((10..=at_most(10, took)).contains(&ok), "{ok} of 30 admitted in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_the_stores_cannot_hold_are_skipped_at_parse_time_without_an_error() {
    let over = |i: u64| (i64::MAX as u64 + i).to_string();
    let max = i64::MAX.to_string();
    let bad_plans: String = (1..=30).map(|i| plan(&over(i), 2, "1")).collect();
    let body = feed(&format!(
        r#"<base_plan base_plan_id="{max}" sell_mode="online" title="Max">{}{bad_plans}{}</base_plan>
           <base_plan base_plan_id="{}" sell_mode="online" title="Over">{}</base_plan>"#,
        plan(&max, 1, &max),
        plan("5", 3, &over(1)),
        over(2),
        plan("6", 4, "1"),
    ));
    let (pf, _dir) = start(body, "").await;
    let deadline = Instant::now() + PATIENCE;
    let summed_up = "invalid plans skipped, summed up once per fetch";
    let summary = "more invalid plans skipped than logged one by one";
    while !(pf.log_text().contains(summed_up) || pf.log_text().contains(summary)) {
        assert!(Instant::now() < deadline, "no skip summary within {PATIENCE:?}:\n{}", pf.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The fetch's last chunk is done: its plans were handed to the writer. The plan of the
    // largest ids the stores hold is served.
    let deadline = Instant::now() + PATIENCE;
    let events = loop {
        let answer = reqwest::get(format!("{}/search", pf.base)).await.unwrap().text().await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        match answer["data"]["events"].as_array() {
            Some(events) if !events.is_empty() => break events.clone(),
            _ => assert!(Instant::now() < deadline, "nothing served within {PATIENCE:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let titles: Vec<&str> = events.iter().map(|e| e["title"].as_str().unwrap()).collect();
    assert_eq!(titles, vec!["Max"]);

    let log = pf.log_text();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "an ERROR line:\n{log}");
    match lines.iter().find(|l| l["fields"]["message"] == summed_up) {
        // One line for the fetch: the count and an example.
        Some(line) => {
            assert_eq!(line["fields"]["kind"], "id_out_of_range");
            assert_eq!(line["fields"]["skipped"], 32);
            let one_by_one = lines.iter().filter(|l| l["fields"]["kind"] == "id_out_of_range").count();
            assert_eq!(one_by_one, 1, "only the summed-up line names the kind");
        }
        // The fetch's skip log without the summed-up kinds: per plan for the first 20, then counted.
        None => {
            let line = lines.iter().find(|l| l["fields"]["message"] == summary).unwrap();
            assert_eq!(line["fields"]["by_kind"], "id_out_of_range=32");
        }
    }
}

/// Waits until `/search` (asked from 127.0.0.3) lists `n` events.
async fn wait_for_plans(base: &str, n: usize) {
    let client = reqwest::Client::builder().local_address(Some([127, 0, 0, 3].into())).build().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = client.get(format!("{base}/search")).send().await.unwrap().text().await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        if answer["data"]["events"].as_array().is_some_and(|e| e.len() == n) {
            return;
        }
        assert!(Instant::now() < deadline, "{n} events not served within {PATIENCE:?}: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_ranges_with_gzip_run_out_of_their_work_budget_and_another_client_is_served() {
    // 60 plans in June: a month's answer is several kilobytes, each new range built and gzipped.
    let plans: String = (1..=60).map(|i| plan(&i.to_string(), 1 + i % 28, "1")).collect();
    let body = feed(&format!(
        r#"<base_plan base_plan_id="1" sell_mode="online" title="A title long enough">{plans}</base_plan>"#
    ));
    // A work budget of 200 KB and 1 byte a second after it; request limits far away.
    let rate = "[server.rate_limit]\nper_client_per_second = 100000\nper_client_burst = 100000\n\
                global_per_second = 100000\nglobal_burst = 100000\n\
                per_client_work_per_second = 1\nper_client_work_burst = 200000\n";
    let (pf, _dir) = start(body, rate).await;
    wait_for_plans(&pf.base, 60).await;
    let client =
        reqwest::Client::builder().no_gzip().local_address(Some([127, 0, 0, 1].into())).build().unwrap();
    let ask = |client: &reqwest::Client, us: u32| {
        let url =
            format!("{}/search?starts_at=2021-06-01T00:00:00.{us:06}Z&ends_at=2021-07-01T00:00:00Z", pf.base);
        client.get(url).header("accept-encoding", "gzip").send()
    };
    let mut statuses = Vec::new();
    for us in 0..20 {
        let r = ask(&client, us).await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.headers()["content-encoding"], "gzip");
        }
        statuses.push(r.status().as_u16());
    }
    let ok = statuses.iter().take_while(|s| **s == 200).count();
    assert!((1..20).contains(&ok), "{statuses:?}");
    assert!(statuses[ok..].iter().all(|s| *s == 429), "refused once over budget, then on: {statuses:?}");
    let other =
        reqwest::Client::builder().no_gzip().local_address(Some([127, 0, 0, 2].into())).build().unwrap();
    assert_eq!(ask(&other, 0).await.unwrap().status(), 200, "another client has its own budget");
}
