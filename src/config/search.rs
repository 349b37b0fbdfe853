//! `[search]`: the search cache and how long `/search` waits for the store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSettings {
    /// Upper bound of the per-day cache, in bytes of prepared JSON.
    pub cache_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How often an `api` process polls the store's change feed for days written by another process.
    #[serde(with = "humantime_serde", default = "default_change_poll")]
    pub change_poll: Duration,
    /// How long a search waits for the store before it answers from the cache (stale or not), or
    /// with an error when nothing is cached and the store does not answer a ping either.
    #[serde(with = "humantime_serde", default = "default_store_deadline")]
    pub store_deadline: Duration,
}

fn default_change_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_store_deadline() -> Duration {
    Duration::from_millis(100)
}

impl Settings {
    /// The search cache has a budget and positive durations.
    pub(super) fn validate_search(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.search.cache_bytes < 1024 * 1024 {
            return bad(format!(
                "search.cache_bytes must be at least 1048576, got {}",
                self.search.cache_bytes
            ));
        }
        if self.search.cache_ttl.is_zero() {
            return bad("search.cache_ttl must be positive".into());
        }
        if self.search.change_poll.is_zero() {
            return bad("search.change_poll must be positive".into());
        }
        if self.search.store_deadline.is_zero() {
            return bad("search.store_deadline must be positive".into());
        }
        Ok(())
    }
}
