//! `cargo bench --bench http`: `/search` over real HTTP, closed loop, side by side in one run: warm
//! 1-day and 1-month answers plain vs gzip (with the compressed size of each), the `304` path of
//! `If-None-Match`, and a bare warp handler serving the same bytes (the ceiling of any handler on
//! this machine) for the plain 1-day answer and for a bodiless `304`, the ratios to it measured A/B
//! interleaved: several rounds of (bare, planfeed) a few seconds each, in turn order (bare first in
//! odd rounds, planfeed first in even ones), every round printed with the load average, and the
//! median round reported.
//!
//! The store is an embedded file of 300,000 generated plans over 5 years (about 160 a day: a 1-month
//! answer of about 1 MB, as the marketplace sees). planfeed's routes run under the service's own
//! server (`http::run`, metrics recorder installed) on a 2-thread runtime, each bare warp handler
//! under `warp::serve` on the same kind of runtime, and the load comes from 64 keep-alive
//! connections on one client thread in this process, each sending its next request as soon as the
//! previous answer is read. `PLANFEED_HTTP_BENCH_SECS` sets the seconds per run (default 3),
//! `PLANFEED_HTTP_BENCH_ROUNDS` the interleaved rounds (default 5), and
//! `PLANFEED_HTTP_BENCH_CONNECTIONS` the connections (default 64).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use planfeed::config::{ConnectionSettings, RateLimitSettings, SearchSettings};
use planfeed::feed::{feed_shaped_stored_plan, random_stored_plan};
use planfeed::http::params::parse_range;
use planfeed::http::rate_limit::Limiter;
use planfeed::http::ApiState;
use planfeed::metrics::MetricsSource;
use planfeed::search::Searcher;
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warp::http::{HeaderValue, StatusCode};
use warp::Filter;

const PLANS: u64 = 300_000;
const YEARS: i64 = 5;
const DAY: &str = "starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z";
const MONTH: &str = "starts_at=2023-06-01T00:00:00Z&ends_at=2023-07-01T00:00:00Z";

fn main() {
    let env =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let secs = env("PLANFEED_HTTP_BENCH_SECS", 3);
    let rounds = env("PLANFEED_HTTP_BENCH_ROUNDS", 5) as usize;
    let connections = env("PLANFEED_HTTP_BENCH_CONNECTIONS", 64) as usize;
    let run_for = Duration::from_secs(secs);
    let server_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (planfeed, day_body) = server_rt.block_on(start_planfeed(&dir.path().join("bench.db"), false));
    let bare_day = server_rt.block_on(start_bare(StatusCode::OK, day_body.clone()));

    let day_tag = client_rt.block_on(fetch(planfeed, DAY, "")).etag;
    let bare_304 = server_rt.block_on(start_bare(StatusCode::NOT_MODIFIED, Bytes::new()));
    let not_modified = format!("if-none-match: {day_tag}\r\n");
    let gzip = "accept-encoding: gzip\r\n";
    println!(
        "GET /search over HTTP/1.1, closed loop, {connections} connections, {secs} s per run, \
         {PLANS} plans ({} cores, load {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    let run = |label: &str, addr: SocketAddr, query: &str, headers: &str| {
        let first = client_rt.block_on(fetch(addr, query, headers));
        let result = client_rt.block_on(closed_loop(addr, request(query, headers), run_for, connections));
        assert_eq!(result.errors, 0, "{label}: {} errors", result.errors);
        println!("{label:<28} {:>10.0} {:>6} {:>12}", result.rps, first.status, first.body_len);
        (result.rps, first.body_len)
    };
    println!("{:<28} {:>10} {:>6} {:>12}", "run", "req/s", "status", "answer bytes");
    let sizes: Vec<(f64, usize)> = [
        ("1-day plain", DAY, ""),
        ("1-day gzip", DAY, gzip),
        ("1-month plain", MONTH, ""),
        ("1-month gzip", MONTH, gzip),
    ]
    .into_iter()
    .map(|(label, query, headers)| run(label, planfeed, query, headers))
    .collect();
    summary_coding(&sizes);
    // The generated plans above differ in every title, minute and price; the provider's feed
    // repeats shows over days at one hour with round prices. Sizes of the same ranges on such data:
    let (feed_shaped, _) = server_rt.block_on(start_planfeed(&dir.path().join("feed.db"), true));
    let size =
        |query: &str, headers: &str| client_rt.block_on(fetch(feed_shaped, query, headers)).body_len as f64;
    println!(
        "gzip size on feed-shaped plans, 1-day: {:.1} % of plain; 1-month: {:.1} % of {:.0} bytes (target <= 15 %)",
        100.0 * size(DAY, gzip) / size(DAY, ""),
        100.0 * size(MONTH, gzip) / size(MONTH, ""),
        size(MONTH, "")
    );
    // The ratios to the bare handler, A/B interleaved: on a shared machine the load changes from
    // second to second, so each round runs the two side by side and the median round is reported.
    let (mut day_ratios, mut not_modified_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!("round {round} of {rounds} (load {})", load());
        // Each pair in turn order: bare first in odd rounds, planfeed first in even ones, so
        // whatever favours the first or the second run of a pair cancels out over the rounds.
        let pair = |bare: (&str, SocketAddr), ours: (&str, SocketAddr), headers: &str| {
            let (first, second) = if round % 2 == 1 { (bare, ours) } else { (ours, bare) };
            let a = run(first.0, first.1, DAY, headers).0;
            let b = run(second.0, second.1, DAY, headers).0;
            if round % 2 == 1 {
                b / a
            } else {
                a / b
            }
        };
        day_ratios.push(pair(("  bare warp, 1-day bytes", bare_day), ("  1-day plain", planfeed), ""));
        // The same request as planfeed's, answered with the same head (see `start_bare`).
        not_modified_ratios.push(pair(
            ("  bare warp, 304", bare_304),
            ("  1-day If-None-Match (304)", planfeed),
            &not_modified,
        ));
        println!("  ratios: 1-day {:.2}, 304 {:.2}", day_ratios[round - 1], not_modified_ratios[round - 1]);
    }
    println!(
        "plain 1-day / bare warp 1-day bytes: median {:.2} of rounds {} (target >= 0.80)",
        median(&day_ratios),
        listed(&day_ratios)
    );
    println!(
        "304 path / bare warp 304: median {:.2} of rounds {} (target >= 0.90)",
        median(&not_modified_ratios),
        listed(&not_modified_ratios)
    );
    drop(dir);
}

/// The 1-minute, 5-minute and 15-minute load averages.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn listed(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")
}

/// The compression figures, from the runs of 1-day plain, 1-day gzip, 1-month plain, 1-month gzip.
fn summary_coding(runs: &[(f64, usize)]) {
    let size = |gz: usize, plain: usize| 100.0 * runs[gz].1 as f64 / runs[plain].1 as f64;
    println!("gzip size, 1-day: {:.1} % of plain; 1-month: {:.1} % (target <= 15 %)", size(1, 0), size(3, 2));
    println!(
        "gzip req/s / plain req/s, 1-day: {:.2}; 1-month: {:.2} (target >= 0.80)",
        runs[1].0 / runs[0].0,
        runs[3].0 / runs[2].0
    );
}

/// planfeed's routes on a filled, warm store; returns their address and the 1-day body.
/// `feed_shaped` fills it as the provider's feed looks (`feed_shaped_stored_plan`), else at random.
async fn start_planfeed(db: &std::path::Path, feed_shaped: bool) -> (SocketAddr, Bytes) {
    let store: SharedStore = Arc::new(SqliteStore::open(db).unwrap());
    let mut rng = StdRng::seed_from_u64(PLANS);
    let span_minutes = YEARS * 365 * 24 * 60;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..PLANS {
        batch.push(if feed_shaped {
            feed_shaped_stored_plan(i, span_minutes)
        } else {
            random_stored_plan(&mut rng, i, span_minutes)
        });
        if batch.len() == 10_000 {
            store.write_plans(&batch).await.unwrap();
            batch.clear();
        }
    }
    let settings = SearchSettings {
        cache_bytes: 1 << 30,
        cache_ttl: Duration::from_secs(3600),
        change_poll: Duration::from_secs(1),
        // The warm-up reads the whole store at once, on a machine other builds may be loading.
        store_deadline: Duration::from_secs(60),
    };
    let searcher = Arc::new(Searcher::new(store.clone(), &settings));
    searcher.search(Default::default()).await.unwrap();
    let day_body = searcher.search(parse_range(DAY).unwrap()).await.unwrap();
    let unlimited = u32::MAX / 2;
    let limits = RateLimitSettings {
        per_client_per_second: unlimited,
        per_client_burst: unlimited,
        global_per_second: unlimited,
        global_burst: unlimited,
        ..RateLimitSettings::default()
    };
    planfeed::metrics::handle();
    let state = ApiState {
        searcher: searcher.clone(),
        limiter: Limiter::new(&limits),
        metrics: MetricsSource { parts: vec![searcher.clone()], permits: None },
        readiness: Arc::new(planfeed::readiness::Readiness::new(searcher, store, None)),
        cache_control: planfeed::http::cache_control(Duration::from_secs(1)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = planfeed::http::server::ConnectionLimits::new(&ConnectionSettings::default());
    tokio::spawn(planfeed::http::run(listener, state, connections, std::future::pending()));
    (addr, day_body)
}

/// A bare warp handler answering `GET /search` with `status` and `body` (as
/// `examples/baseline_server.rs` does) and the head planfeed gives that status: `Content-Type` on a
/// `200`; `ETag`, `Cache-Control` and `Vary` on both. The same bytes on the wire both ways, so a
/// ratio to it measures the handlers, not the length of their heads.
async fn start_bare(status: StatusCode, body: Bytes) -> SocketAddr {
    let route = warp::path!("search").and(warp::get()).map(move || {
        let mut res = warp::reply::Response::new(body.clone().into());
        *res.status_mut() = status;
        let h = res.headers_mut();
        if status == StatusCode::OK {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        }
        h.insert("etag", HeaderValue::from_static("\"0123456789abcdef0123456789abcdef\""));
        h.insert("cache-control", planfeed::http::cache_control(Duration::from_secs(1)));
        h.insert("vary", HeaderValue::from_static("accept-encoding"));
        res
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

fn request(query: &str, headers: &str) -> Arc<[u8]> {
    format!("GET /search?{query} HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}\r\n").into_bytes().into()
}

struct Response {
    status: u16,
    etag: String,
    body_len: usize,
}

/// One request on a fresh connection (it also makes the answer warm: cached, compressed).
async fn fetch(addr: SocketAddr, query: &str, headers: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(&request(query, headers)).await.unwrap();
    read_response(&mut stream, &mut buf).await.unwrap()
}

/// Reads one response (its body sized by `content-length`) into `buf`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Response> {
    buf.clear();
    let head_end = loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII head").to_ascii_lowercase();
    let status = head[9..12].parse().expect("a status code");
    let field = |name: &str| {
        head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
    };
    let body_len: usize = field("content-length:").parse().unwrap_or(0);
    while buf.len() < head_end + body_len {
        read_more(stream, buf).await?;
    }
    Ok(Response { status, etag: field("etag:"), body_len })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(64 * 1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

struct Outcome {
    rps: f64,
    errors: u64,
}

/// `connections` keep-alive connections sending `request` back to back for `run_for`.
async fn closed_loop(addr: SocketAddr, request: Arc<[u8]>, run_for: Duration, connections: usize) -> Outcome {
    let started = Instant::now();
    let until = started + run_for;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(1 << 20);
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < until {
                    stream.write_all(&request).await.unwrap();
                    match read_response(&mut stream, &mut buf).await {
                        Ok(r) if r.status == 200 || r.status == 304 => done += 1,
                        _ => errors += 1,
                    }
                }
                (done, errors)
            })
        })
        .collect();
    let (mut done, mut errors) = (0, 0);
    for task in tasks {
        let (d, e) = task.await.unwrap();
        done += d;
        errors += e;
    }
    Outcome { rps: done as f64 / started.elapsed().as_secs_f64(), errors }
}
