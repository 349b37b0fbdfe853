//! `[provider]` and `[[providers]]`: what to fetch, how often, and how patiently.

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub name: String,
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    pub timezone: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts within one fetch after a transient failure (connect error, no response in
    /// time, 5xx or 429), only before any of the body was handed on.
    pub retries: u32,
    /// First delay between attempts; doubles per attempt (jittered), capped at [`MAX_RETRY_BACKOFF`].
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// A body larger than this (after decompression) fails the fetch; what was already cut into
    /// whole base plans is kept. Guards the store and memory against a runaway or hostile feed.
    pub max_body_bytes: u64,
    /// Consecutive failed fetches that open the circuit breaker (0 disables it).
    pub breaker_failures: u32,
    /// While open, no request is sent; after this, one probe decides whether it closes.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

/// Upper bound of the delay between two attempts of one fetch.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// One entry of `[[providers]]`: `name` and `url` are required, the rest defaults to `[provider]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub name: String,
    pub url: String,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retry_backoff: Option<Duration>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub breaker_cooldown: Option<Duration>,
}

impl ProviderSettings {
    pub fn validate(&self) -> Result<(), String> {
        let p = self;
        if p.name.trim().is_empty() || p.name.contains('/') {
            return Err(format!("provider.name must be non-empty and without '/', got {:?}", p.name));
        }
        match reqwest::Url::parse(&p.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https" | "file") => {}
            _ => {
                return Err(format!(
                    "provider.url of {:?} must be an http(s) or file URL, got {:?}",
                    p.name, p.url
                ))
            }
        }
        if p.timezone.parse::<Tz>().is_err() {
            return Err(format!(
                "provider.timezone of {:?} must be an IANA zone such as \"Europe/Madrid\", got {:?}",
                p.name, p.timezone
            ));
        }
        if p.interval < Duration::from_millis(10) {
            return Err(format!("provider.interval must be at least 10ms, got {:?}", p.interval));
        }
        if p.connect_timeout.is_zero() || p.timeout.is_zero() {
            return Err("provider.connect_timeout and provider.timeout must be positive".into());
        }
        if p.retries > 20 {
            return Err(format!("provider.retries of {:?} must be at most 20, got {}", p.name, p.retries));
        }
        if p.retry_backoff.is_zero() || p.retry_backoff > MAX_RETRY_BACKOFF {
            return Err(format!(
                "provider.retry_backoff of {:?} must be between 1ms and {MAX_RETRY_BACKOFF:?}, got {:?}",
                p.name, p.retry_backoff
            ));
        }
        if p.max_body_bytes < 1024 {
            return Err(format!(
                "provider.max_body_bytes of {:?} must be at least 1024, got {}",
                p.name, p.max_body_bytes
            ));
        }
        if p.breaker_failures > 0 && p.breaker_cooldown.is_zero() {
            return Err(format!(
                "provider.breaker_cooldown of {:?} must be positive when breaker_failures is set",
                p.name
            ));
        }
        Ok(())
    }

    /// The provider's time zone; `validate` guarantees it parses.
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(Tz::UTC)
    }
}

impl Settings {
    /// The providers to ingest: `providers` when given, else the single `provider`.
    pub fn effective_providers(&self) -> Vec<ProviderSettings> {
        if self.providers.is_empty() {
            return vec![self.provider.clone()];
        }
        let d = &self.provider;
        self.providers
            .iter()
            .map(|e| ProviderSettings {
                name: e.name.clone(),
                url: e.url.clone(),
                interval: e.interval.unwrap_or(d.interval),
                jitter: e.jitter.unwrap_or(d.jitter),
                timezone: e.timezone.clone().unwrap_or_else(|| d.timezone.clone()),
                connect_timeout: e.connect_timeout.unwrap_or(d.connect_timeout),
                timeout: e.timeout.unwrap_or(d.timeout),
                retries: e.retries.unwrap_or(d.retries),
                retry_backoff: e.retry_backoff.unwrap_or(d.retry_backoff),
                max_body_bytes: e.max_body_bytes.unwrap_or(d.max_body_bytes),
                breaker_failures: e.breaker_failures.unwrap_or(d.breaker_failures),
                breaker_cooldown: e.breaker_cooldown.unwrap_or(d.breaker_cooldown),
            })
            .collect()
    }
    /// Provider names are unique and each provider is valid.
    pub(super) fn validate_providers(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let providers = self.effective_providers();
        let mut names = std::collections::HashSet::new();
        for p in &providers {
            if !names.insert(p.name.as_str()) {
                return bad(format!("provider names must be unique, {:?} appears twice", p.name));
            }
            p.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}
