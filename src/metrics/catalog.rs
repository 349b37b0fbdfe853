//! Every metric planfeed exports, with its `# HELP` text: described to the recorder once, when it
//! is installed, so each family carries its help however late its first sample comes. The
//! families rendered by hand (the search latency, the pacing seconds, the process's own) take
//! their help line from here too. docs/operations.md's metric table lists the same names, and a
//! test holds the two and a running process's output together.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Name, kind and help of each family.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("planfeed_build_info", Kind::Gauge, "Always 1; the labels name the running version and commit."),
    ("planfeed_http_requests_total", Kind::Counter, "Answered searches by path and status."),
    ("planfeed_search_duration_seconds", Kind::Histogram, "Time to answer a search, from its request to its answer."),
    ("planfeed_search_cache_hits_total", Kind::Counter, "Per-day cache lookups answered from the cache."),
    ("planfeed_search_cache_misses_total", Kind::Counter, "Per-day cache lookups that read the store."),
    ("planfeed_search_body_hits_total", Kind::Counter, "Searches answered with a whole answer kept from an earlier identical search."),
    ("planfeed_search_stale_served_total", Kind::Counter, "Answers served from the cache because the store failed."),
    ("planfeed_search_store_errors_total", Kind::Counter, "Store reads of searches that failed."),
    ("planfeed_search_store_deadlines_total", Kind::Counter, "Store reads a search stopped waiting for at search.store_deadline."),
    ("planfeed_search_previous_served_total", Kind::Counter, "Day lookups answered with the copy from before a write while the write's invalidation reloaded the day."),
    ("planfeed_search_reloaded_days_total", Kind::Counter, "Searched days an invalidation read again at once."),
    ("planfeed_http_connections_open", Kind::Gauge, "Open HTTP connections."),
    ("planfeed_http_connections_refused_total", Kind::Counter, "Connections refused at accept time, by the limit they were over."),
    ("planfeed_http_connections_closed_total", Kind::Counter, "Served connections by how they ended."),
    ("planfeed_probe_refusals_total", Kind::Counter, "Requests to /ready and /metrics refused over server.probe_limit."),
    ("planfeed_readiness_pings_total", Kind::Counter, "Store pings sent by /ready (at most one a second, whatever the callers)."),
    ("planfeed_fetches_total", Kind::Counter, "Fetches by provider and outcome."),
    ("planfeed_fetch_duration_seconds", Kind::Histogram, "A fetch's duration, from the download's start to its record, by provider."),
    ("planfeed_last_successful_fetch_timestamp_seconds", Kind::Gauge, "Unix time of the provider's last ok fetch (the process's start until the first)."),
    ("planfeed_retries_total", Kind::Counter, "Retries by who retries."),
    ("planfeed_plans_total", Kind::Counter, "Plans by what the writer did with them."),
    ("planfeed_store_refusals_total", Kind::Counter, "Store calls refused for a reason of the store's own, by reason."),
    ("planfeed_store_refusing", Kind::Gauge, "1 while the store refuses this process's writes, else 0."),
    ("planfeed_writer_batches_total", Kind::Counter, "Batches written to the store."),
    ("planfeed_writer_batches_dropped_total", Kind::Counter, "Batches with plans the store rejected for good."),
    ("planfeed_spool_entries", Kind::Gauge, "Batches waiting in the spool for the store."),
    ("planfeed_spool_plans", Kind::Gauge, "Plans waiting in the spool for the store."),
    ("planfeed_spool_bytes", Kind::Gauge, "Bytes waiting in the spool for the store."),
    ("planfeed_spool_max_bytes", Kind::Gauge, "The spool's bound (spool.max_bytes)."),
    ("planfeed_spool_set_aside_total", Kind::Counter, "Damaged spool files and undecodable entries moved aside, by what."),
    ("planfeed_spool_replayed_total", Kind::Counter, "Spool entries delivered to the store."),
    ("planfeed_spool_refusals_total", Kind::Counter, "Times the spool refused a batch while the store did too."),
    ("planfeed_clickhouse_endpoint_up", Kind::Gauge, "1 while a ClickHouse replica answers its statements and probes, else 0."),
    ("planfeed_pipeline_chunks_in_flight", Kind::Gauge, "Chunks between the download and the writer."),
    ("planfeed_ingest_paced_seconds_total", Kind::Counter, "Seconds the ingestion threads rested after jobs, by the cap that follows the searches' waits."),
    ("planfeed_answer_starvation_promotions_total", Kind::Counter, "Times the answer threads left SCHED_IDLE because they waited far longer for a core than they ran."),
    ("planfeed_ingest_starvation_promotions_total", Kind::Counter, "Times the ingestion threads left SCHED_IDLE because they got less than pipeline.min_ingest_share."),
    ("planfeed_ingest_cap", Kind::Gauge, "The share of the time each ingestion thread may work now (1: no rests), between pipeline.min_ingest_share and 1."),
    ("planfeed_ingest_share_got", Kind::Gauge, "The share of the time it wanted that ingestion got, about the last second."),
    ("planfeed_ingest_promoted", Kind::Gauge, "1 while the ingestion threads are out of SCHED_IDLE to keep their minimum share, else 0."),
    ("planfeed_ingest_periods_total", Kind::Counter, "100 ms periods of the ingestion CPU controller, by why the cap is where it is."),
    ("planfeed_cpu_lost_seconds_total", Kind::Counter, "Seconds the cgroup's CPU quota paused the process (cause=quota; beside searches it lowers the ingestion cap) and CPU seconds a hypervisor took from the machine (cause=steal)."),
    ("planfeed_ingest_search_wait_seconds", Kind::Gauge, "Mean time a run of a search thread waited for a core, over the last 100 ms."),
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the process in bytes."),
    ("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory of the process in bytes."),
    ("process_open_fds", Kind::Gauge, "Open file descriptors of the process."),
    ("process_max_fds", Kind::Gauge, "The process's limit of open file descriptors."),
    ("process_cpu_seconds_total", Kind::Counter, "CPU time the process used, user and system, in seconds."),
    ("process_start_time_seconds", Kind::Gauge, "Unix time the process started."),
];

/// Tells the recorder every family's help.
pub(super) fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family rendered by hand.
pub(super) fn header(name: &str, out: &mut String) {
    let (kind, help) = METRICS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, kind, help)| (kind, help))
        .unwrap_or_else(|| panic!("{name} is not in the catalog"));
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
