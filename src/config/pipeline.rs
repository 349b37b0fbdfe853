//! `[pipeline]`: parser pool, chunk and batch sizes, ingest threads.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// Smallest `pipeline.queue_bytes`: room for a chunk and a part of its plans at the smallest
/// `chunk_bytes`.
pub const MIN_QUEUE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    pub parsers: usize,
    pub chunk_bytes: usize,
    pub max_base_plan_bytes: usize,
    /// Chunks between the download and the writer's batch.
    pub queue_chunks: usize,
    /// Memory between the download and the writer's batch: chunks' bytes and the estimated memory
    /// of their parsed plans not yet in a batch (see [`crate::actors::parser`]). A chunk larger
    /// than this takes all of it.
    pub queue_bytes: usize,
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// Threads that parse and hash chunks (0: every core but one); see [`crate::cpu`].
    pub ingest_threads: usize,
    /// Niceness those threads add to the process's (0 to 19): searches get the CPU first.
    pub ingest_nice: i32,
    /// Those threads under Linux `SCHED_IDLE`: a search thread waking up takes the core at once.
    #[serde(default)]
    pub ingest_idle_policy: bool,
    /// The share of the time it wants that ingestion keeps however busy the searches (0 < share
    /// <= 1; 1: never yields to searches); see [`crate::cpu::share`].
    pub min_ingest_share: f64,
}

impl PipelineSettings {
    /// The size of the ingestion thread pool these settings ask for.
    pub fn cpu_pool(&self) -> crate::cpu::PoolSize {
        crate::cpu::PoolSize {
            threads: self.ingest_threads,
            nice: self.ingest_nice,
            idle: self.ingest_idle_policy,
        }
    }
}

impl Settings {
    /// Pipeline sizes, ages and ingest thread settings are in range.
    pub(super) fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let pl = &self.pipeline;
        if pl.parsers == 0 || pl.parsers > 256 {
            return bad(format!("pipeline.parsers must be between 1 and 256, got {}", pl.parsers));
        }
        if pl.chunk_bytes < 1024 {
            return bad(format!("pipeline.chunk_bytes must be at least 1024, got {}", pl.chunk_bytes));
        }
        if pl.max_base_plan_bytes < pl.chunk_bytes {
            return bad("pipeline.max_base_plan_bytes must be at least pipeline.chunk_bytes".into());
        }
        if pl.queue_chunks == 0 || pl.batch_size == 0 {
            return bad("pipeline.queue_chunks and pipeline.batch_size must be positive".into());
        }
        // Permits are taken in `u32` amounts.
        if !(MIN_QUEUE_BYTES..=u32::MAX as usize).contains(&pl.queue_bytes) {
            return bad(format!(
                "pipeline.queue_bytes must be between {MIN_QUEUE_BYTES} and {}, got {}",
                u32::MAX,
                pl.queue_bytes
            ));
        }
        if pl.flush_age.is_zero() {
            return bad("pipeline.flush_age must be positive".into());
        }
        if pl.ingest_threads > 256 || !(0..=19).contains(&pl.ingest_nice) {
            return bad(format!(
                "pipeline.ingest_threads must be 0 to 256 and pipeline.ingest_nice 0 to 19, got {} and {}",
                pl.ingest_threads, pl.ingest_nice
            ));
        }
        if !(pl.min_ingest_share > 0.0 && pl.min_ingest_share <= 1.0) {
            return bad(format!(
                "pipeline.min_ingest_share must be above 0 and at most 1, got {}",
                pl.min_ingest_share
            ));
        }
        Ok(())
    }
}
