//! Prometheus metrics for `GET /metrics`.
//!
//! Request metrics are recorded as they happen; pipeline and cache outcomes are kept in plain atomic
//! counters by their owners and copied into the registry when `/metrics` is scraped; the process's
//! own metrics are read from `/proc` then ([`process`]).
//!
//! Every family is exported from the process's start in the roles that have it: a family whose
//! samples come from events (a refusal, a retry, a fetch outcome) is registered at zero for each
//! of its known label values ([`register_api`], [`register_ingest`], [`start_provider`]), so
//! `rate()` and alerts see a series before its first event. Every family has a `# HELP` text
//! ([`catalog`]).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;

use crate::domain::FetchOutcome;

pub mod catalog;
mod latency;
mod process;

pub use latency::ShardedCounter;

use latency::SearchStats;

/// The process-wide recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FETCH_DURATION.into()), FETCH_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, catalog::describe);
        // Another recorder may already be global (embedding applications): then ours renders empty.
        let _ = metrics::set_global_recorder(recorder);
        let commit = option_env!("PLANFEED_COMMIT").unwrap_or("unknown");
        metrics::gauge!("planfeed_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => commit)
            .set(1.0);
        handle
    })
}

/// A part of planfeed that keeps its outcomes in its own atomics (the search cache, the writer)
/// and copies them into the registry when `/metrics` is scraped. Implemented by the owners, so this
/// module imports none of them.
pub trait Collect: Send + Sync {
    fn collect(&self);
}

/// Everything `/metrics` reports.
#[derive(Clone)]
pub struct MetricsSource {
    pub parts: Vec<Arc<dyn Collect>>,
    /// The pipeline's chunk permits, to report the queue depth.
    pub permits: Option<(Arc<Semaphore>, usize)>,
}

impl MetricsSource {
    pub fn render(&self) -> String {
        for part in &self.parts {
            part.collect();
        }
        if let Some((sem, capacity)) = &self.permits {
            metrics::gauge!("planfeed_pipeline_chunks_in_flight")
                .set((capacity - sem.available_permits().min(*capacity)) as f64);
        }
        // Searches are counted only where they are answered ([`register_api`]).
        let search = SEARCH_HANDLES.get();
        for (i, (_, counter)) in search.iter().flat_map(|s| s.by_status.iter().enumerate()) {
            counter.absolute(search.map_or(0, |s| s.stats.status_total(i)));
        }
        let mut text = handle().render();
        if let Some(search) = search {
            catalog::header(SEARCH_DURATION, &mut text);
            search.stats.render(SEARCH_DURATION, &mut text);
        }
        if self.permits.is_some() {
            // Seconds, a float: the exporter's counters are integers.
            catalog::header(INGEST_PACED, &mut text);
            let _ = writeln!(text, "{INGEST_PACED} {}", crate::cpu::paced_seconds());
            catalog::header(CPU_LOST, &mut text);
            for (cause, seconds) in crate::cpu::cpu_lost_seconds() {
                let _ = writeln!(text, "{CPU_LOST}{{cause=\"{cause}\"}} {seconds}");
            }
        }
        process::render(&mut text);
        text
    }
}

/// Seconds the ingestion threads rested by the cap ([`crate::cpu::pace`]).
const INGEST_PACED: &str = "planfeed_ingest_paced_seconds_total";

/// CPU seconds the machine lost to a hypervisor or a quota ([`crate::cpu::cpu_lost_seconds`]).
const CPU_LOST: &str = "planfeed_cpu_lost_seconds_total";

/// The latency histogram of `/search` answers (rendered by [`MetricsSource::render`]).
const SEARCH_DURATION: &str = "planfeed_search_duration_seconds";

/// Records one answered search.
pub fn record_search(status: warp::http::StatusCode, took: std::time::Duration) {
    let handles = search_handles();
    let usual = handles.by_status.iter().position(|(s, _)| *s == status);
    if usual.is_none() {
        search_counter(status).increment(1);
    }
    handles.stats.record(usual, took);
}

/// `/search`'s metric handles, resolved once: looking a labelled counter up per request (a label
/// string made, its key hashed, the registry searched) cost a measurable share of a cached answer.
/// The usual statuses and the latency are counted in [`SearchStats`] (per-thread shards) and
/// copied into the exporter's counters when `/metrics` is scraped.
struct SearchHandles {
    by_status: Vec<(warp::http::StatusCode, metrics::Counter)>,
    stats: SearchStats,
}

static SEARCH_HANDLES: OnceLock<SearchHandles> = OnceLock::new();

fn search_handles() -> &'static SearchHandles {
    SEARCH_HANDLES.get_or_init(|| {
        // Resolved against our recorder: it is installed first.
        handle();
        let by_status = latency::STATUSES
            .map(|s| warp::http::StatusCode::from_u16(s).expect("a valid status"))
            .map(|s| (s, search_counter(s)))
            .into();
        SearchHandles { by_status, stats: SearchStats::default() }
    })
}

fn search_counter(status: warp::http::StatusCode) -> metrics::Counter {
    metrics::counter!("planfeed_http_requests_total", "path" => "/search", "status" => status.as_u16().to_string())
}

/// What waits in the spool now (set by the spool when it opens and on every change), and its bound.
pub fn record_spool(entries: u64, plans: u64, bytes: u64, max_bytes: u64) {
    metrics::gauge!("planfeed_spool_max_bytes").set(max_bytes as f64);
    metrics::gauge!("planfeed_spool_entries").set(entries as f64);
    metrics::gauge!("planfeed_spool_plans").set(plans as f64);
    metrics::gauge!("planfeed_spool_bytes").set(bytes as f64);
}

/// Counts one refused store call, by the refusal's label (`credentials`, `space`, …).
pub fn record_store_refusal(reason: &'static str) {
    metrics::counter!("planfeed_store_refusals_total", "reason" => reason).increment(1);
}

/// Whether the store refuses writes now (1) or takes them (0).
pub fn set_store_refusing(refusing: bool) {
    metrics::gauge!("planfeed_store_refusing").set(if refusing { 1.0 } else { 0.0 });
}

/// Counts a damaged spool file (`file`) or an undecodable entry (`entry`) moved aside.
pub fn record_spool_set_aside(what: &'static str) {
    metrics::counter!("planfeed_spool_set_aside_total", "what" => what).increment(1);
}

/// Counts one retry of `operation` (see the `retry` module).
pub fn record_retry(operation: &'static str) {
    metrics::counter!("planfeed_retries_total", "operation" => operation).increment(1);
}

/// A fetch's duration, download to record, by provider (a histogram with [`FETCH_BUCKETS`]).
const FETCH_DURATION: &str = "planfeed_fetch_duration_seconds";
const FETCH_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// When a provider's last fetch succeeded (`ok`), in unix seconds: the one signal that its data
/// goes stale. Set to the process's start when the process starts, so staleness counts from then.
const LAST_SUCCESS: &str = "planfeed_last_successful_fetch_timestamp_seconds";

/// Records one fetch outcome, by reason, and its duration.
pub fn record_fetch(provider: &str, outcome: FetchOutcome, took: std::time::Duration) {
    let provider = provider.to_string();
    metrics::counter!("planfeed_fetches_total", "provider" => provider.clone(), "outcome" => outcome.label())
        .increment(1);
    metrics::histogram!(FETCH_DURATION, "provider" => provider.clone()).record(took.as_secs_f64());
    if outcome == FetchOutcome::Ok {
        metrics::gauge!(LAST_SUCCESS, "provider" => provider).set(unix_now());
    }
}

/// Starts the staleness clock of `provider` at the process's start (see [`LAST_SUCCESS`]), and
/// its fetch counts (every [`FetchOutcome`]) and durations at zero.
pub fn start_provider(provider: &str) {
    metrics::gauge!(LAST_SUCCESS, "provider" => provider.to_string()).set(unix_now());
    for outcome in FetchOutcome::ALL {
        metrics::counter!("planfeed_fetches_total", "provider" => provider.to_string(), "outcome" => outcome.label())
            .increment(0);
    }
    let _ = metrics::histogram!(FETCH_DURATION, "provider" => provider.to_string());
}

/// Registers what every role exports (an HTTP server and its connections, `/ready`'s pings), at
/// zero: the recorder is installed first.
pub fn register_common(clickhouse: bool) {
    handle();
    for reason in ["total_limit", "client_limit"] {
        metrics::counter!("planfeed_http_connections_refused_total", "reason" => reason).increment(0);
    }
    for reason in ["done", "idle", "header_timeout", "client_gone", "bad_request", "timeout", "io_error"] {
        metrics::counter!("planfeed_http_connections_closed_total", "reason" => reason).increment(0);
    }
    metrics::gauge!("planfeed_http_connections_open").increment(0.0);
    metrics::counter!("planfeed_probe_refusals_total").increment(0);
    metrics::counter!("planfeed_readiness_pings_total").increment(0);
    if clickhouse {
        metrics::counter!("planfeed_retries_total", "operation" => "store_connect").increment(0);
    }
}

/// Registers what a process answering searches exports.
pub fn register_api() {
    search_handles();
    metrics::counter!("planfeed_answer_starvation_promotions_total").increment(0);
}

/// Registers what a process running ingestion exports, besides its providers' ([`start_provider`]).
pub fn register_ingest() {
    handle();
    for operation in ["fetch", "store_write", "held_batch", "spool_replay", "load_plan_states", "restart"] {
        metrics::counter!("planfeed_retries_total", "operation" => operation).increment(0);
    }
    for reason in [
        "credentials",
        "permission",
        "space",
        "missing_table",
        "read_only",
        "quota",
        "proxy",
        "io",
        "unproven",
    ] {
        metrics::counter!("planfeed_store_refusals_total", "reason" => reason).increment(0);
    }
    for what in ["file", "entry"] {
        metrics::counter!("planfeed_spool_set_aside_total", "what" => what).increment(0);
    }
    metrics::counter!("planfeed_ingest_starvation_promotions_total").increment(0);
    for reason in ["spare", "searches_delayed", "hurry"] {
        metrics::counter!("planfeed_ingest_periods_total", "reason" => reason).increment(0);
    }
    metrics::gauge!("planfeed_ingest_cap").set(crate::cpu::pace::cap());
    metrics::gauge!("planfeed_ingest_share_got").set(1.0);
    metrics::gauge!("planfeed_ingest_promoted").set(0.0);
    metrics::gauge!("planfeed_ingest_search_wait_seconds").set(0.0);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Counts a `/ready` or `/metrics` request refused over `server.probe_limit`.
pub fn record_probe_refused() {
    metrics::counter!("planfeed_probe_refusals_total").increment(1);
}

/// Counts a store ping sent by `/ready`.
pub fn record_readiness_ping() {
    metrics::counter!("planfeed_readiness_pings_total").increment(1);
}

/// Records a connection refused at accept time (`reason`: `total_limit`, `client_limit`).
pub fn record_connection_refused(reason: &'static str) {
    metrics::counter!("planfeed_http_connections_refused_total", "reason" => reason).increment(1);
}

/// Records how a served connection ended (`done`, `idle`, `header_timeout`, `client_gone`, …).
pub fn record_connection_closed(reason: &'static str) {
    metrics::counter!("planfeed_http_connections_closed_total", "reason" => reason).increment(1);
}

/// The number of open API connections.
pub fn set_connections_open(n: usize) {
    metrics::gauge!("planfeed_http_connections_open").set(n as f64);
}

/// Whether ClickHouse replica `endpoint` answered its last statement or probe (1) or not (0).
pub fn record_store_endpoint(endpoint: &str, up: bool) {
    metrics::gauge!("planfeed_clickhouse_endpoint_up", "endpoint" => endpoint.to_string()).set(if up {
        1.0
    } else {
        0.0
    });
}
