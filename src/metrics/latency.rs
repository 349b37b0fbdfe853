//! `/search`'s per-request metrics: answers by status and the latency histogram, counted in
//! fixed per-thread shards of plain atomics and summed when `/metrics` is scraped.
//!
//! Why not the exporter's own handles: its histogram keeps every sample (a lock-free list of
//! blocks, a block allocated every few dozen requests) until the next scrape, so its memory grows
//! with the traffic between scrapes, and its counters are one atomic that every core writes. On
//! the `304` path, a few hundred nanoseconds in all, those shared lines were a visible share.
//! Here a request adds to three counters of its thread's shard (status, bucket, sum), which no
//! other core writes, and the memory is fixed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds, and as rendered (seconds): the
/// interesting range is 50 µs .. 100 ms.
const BOUNDS: [(u64, &str); 13] = [
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
];

/// The statuses counted here; any other goes to the exporter's counter directly (see
/// `metrics::record_search`).
pub(super) const STATUSES: [u16; 6] = [200, 304, 400, 429, 500, 503];

/// Shards: more than the threads that answer requests on a small machine, so two threads
/// rarely share one.
const SHARDS: usize = 8;

/// One thread's counts, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    statuses: [AtomicU64; STATUSES.len()],
    /// One per bound, then the overflow (`+Inf`).
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Answers by status and their latency histogram (`planfeed_search_duration_seconds`).
#[derive(Default)]
pub(super) struct SearchStats {
    shards: [Shard; SHARDS],
}

/// A counter that every core adds to on a request's path: one atomic per shard, each alone on
/// its cache lines, so two threads adding at once do not move a line between their cores.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    shards: [Padded; SHARDS],
}

#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded(AtomicU64);

impl ShardedCounter {
    pub fn add(&self, n: u64) {
        self.shards[shard_index()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of every thread's additions.
    pub fn total(&self) -> u64 {
        self.shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The calling thread's shard, picked once per thread in turn.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl SearchStats {
    /// Counts one answer with `status` (its index in [`STATUSES`], if there) that took `took`.
    pub(super) fn record(&self, status: Option<usize>, took: Duration) {
        let shard = &self.shards[shard_index()];
        if let Some(i) = status {
            shard.statuses[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS.iter().position(|&(bound, _)| nanos <= bound).unwrap_or(BOUNDS.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Answers counted with the status at `index` in [`STATUSES`].
    pub(super) fn status_total(&self, index: usize) -> u64 {
        self.shards.iter().map(|s| s.statuses[index].load(Ordering::Relaxed)).sum()
    }

    /// Appends the samples of the histogram `name` in the Prometheus text format, as the exporter
    /// writes them (the caller writes its `# HELP` and `# TYPE` lines).
    pub(super) fn render(&self, name: &str, out: &mut String) {
        let mut counts = [0u64; BOUNDS.len() + 1];
        let mut sum_nanos = 0u64;
        for shard in &self.shards {
            for (count, bucket) in counts.iter_mut().zip(&shard.buckets) {
                *count += bucket.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let mut cumulative = 0;
        for (count, (_, le)) in counts.iter().zip(BOUNDS) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += counts[BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_bucket_and_render_cumulatively() {
        let stats = SearchStats::default();
        stats.record(Some(1), Duration::from_micros(50));
        stats.record(Some(1), Duration::from_micros(70));
        stats.record(Some(0), Duration::from_millis(3));
        stats.record(None, Duration::from_secs(2));
        std::thread::scope(|s| {
            s.spawn(|| stats.record(Some(1), Duration::from_micros(80)));
        });
        assert_eq!((stats.status_total(0), stats.status_total(1), stats.status_total(2)), (1, 3, 0));
        let mut text = String::new();
        stats.render("x_seconds", &mut text);
        let value = |series: &str| {
            text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(str::to_owned)
        };
        assert!(text.starts_with("x_seconds_bucket{le=\"0.00005\"} 1\n"), "{text}");
        assert_eq!(value("x_seconds_bucket{le=\"0.00005\"}").as_deref(), Some("1"));
        assert_eq!(value("x_seconds_bucket{le=\"0.0001\"}").as_deref(), Some("3"));
        assert_eq!(value("x_seconds_bucket{le=\"0.0025\"}").as_deref(), Some("3"));
        assert_eq!(value("x_seconds_bucket{le=\"0.005\"}").as_deref(), Some("4"));
        assert_eq!(value("x_seconds_bucket{le=\"1\"}").as_deref(), Some("4"));
        assert_eq!(value("x_seconds_bucket{le=\"+Inf\"}").as_deref(), Some("5"));
        assert_eq!(value("x_seconds_count").as_deref(), Some("5"));
        assert_eq!(value("x_seconds_sum").as_deref(), Some("2.0032"));
    }
}
