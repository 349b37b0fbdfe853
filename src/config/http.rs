//! `[http]`: what `/search` answers tell HTTP caches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`: what `/search` answers tell HTTP caches (see docs/adr/0011-http-caching.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `Cache-Control: max-age` of `/search` answers, in whole seconds.
    #[serde(with = "humantime_serde")]
    pub cache_max_age: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { cache_max_age: Duration::from_secs(1) }
    }
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.cache_max_age.subsec_nanos() != 0 {
            return Err(format!(
                "http.cache_max_age must be whole seconds (Cache-Control counts seconds), got {:?}",
                self.cache_max_age
            ));
        }
        Ok(())
    }
}
