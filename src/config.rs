//! Typed settings. Layers, later wins: `config/default.toml` (compiled in), an optional
//! `local.toml` in the config folder, then `PLANFEED__SECTION__KEY` environment variables.
//! Unknown keys are rejected and [`Settings::validate`] runs before anything starts.
//!
//! Over 500 lines: every section's typed settings, defaults and checks sit here so a key is found
//! in one file; a split into `config/` by section waits for the pending edits to this file to land.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Both,
    Api,
    Ingest,
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Role::Both | Role::Api)
    }
    pub fn runs_ingest(self) -> bool {
        matches!(self, Role::Both | Role::Ingest)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub role: Role,
    pub server: ServerSettings,
    /// The single provider, and the defaults of every entry of `providers`.
    pub provider: ProviderSettings,
    /// Several providers at once; when empty, `provider` alone is used.
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
    pub pipeline: PipelineSettings,
    pub store: StoreSettings,
    pub spool: SpoolSettings,
    pub search: SearchSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub http: HttpSettings,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub connections: ConnectionSettings,
}

/// Limits that keep one client's sockets from starving the others (see `http::server`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// Open connections in total; beyond, new ones get a `503` and are closed.
    pub max_connections: usize,
    /// Open connections from one client IP; beyond, new ones get a `503` and are closed.
    pub max_connections_per_client: usize,
    /// A connection with no byte either way and no request being answered is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request's headers must be complete within this long of their first byte.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_client: 256,
            idle_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err("server.connections limits must be positive".into());
        }
        if self.idle_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err("server.connections timeouts must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_client_per_second: u32,
    pub per_client_burst: u32,
    pub global_per_second: u32,
    pub global_burst: u32,
    pub trust_forwarded_for: bool,
}

impl RateLimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        if [self.per_client_per_second, self.per_client_burst, self.global_per_second, self.global_burst]
            .contains(&0)
        {
            return Err("server.rate_limit values must all be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    pub parsers: usize,
    pub chunk_bytes: usize,
    pub max_base_plan_bytes: usize,
    pub queue_chunks: usize,
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// Threads that parse and hash chunks (0: every core but one); see [`crate::cpu`].
    pub ingest_threads: usize,
    /// Niceness those threads add to the process's (0 to 19): searches get the CPU first.
    pub ingest_nice: i32,
}

impl PipelineSettings {
    /// The size of the ingestion thread pool these settings ask for.
    pub fn cpu_pool(&self) -> crate::cpu::PoolSize {
        crate::cpu::PoolSize { threads: self.ingest_threads, nice: self.ingest_nice }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Clickhouse,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    pub path: PathBuf,
    pub clickhouse: ClickHouseConfig,
}

/// `[spool]`: where batches the store refuses wait until it answers again (see [`crate::spool`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// Folder of the spool files, one per store (named after it).
    pub path: PathBuf,
    /// Payload bytes a spool holds at most; a full spool holds the download instead.
    pub max_bytes: u64,
    /// A store write slower than this counts as failed (a hung store), so the spool takes over.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

/// `[store.clickhouse]`. The password is never read from files: set `PLANFEED_CLICKHOUSE_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    /// Apply pending migrations when the service starts (else run `planfeed migrate`).
    pub migrate_on_start: bool,
    /// Several replicas' HTTP interfaces; when given, `url` is not used (see [`ClickHouseSettings`]).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Cluster mode: the `<remote_servers>` cluster the migrations run `ON CLUSTER` on.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Longest wait for one statement on one replica before trying the next.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
}

fn default_query_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ClickHouseConfig {
    pub const PASSWORD_ENV: &'static str = "PLANFEED_CLICKHOUSE_PASSWORD";

    pub fn settings(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: std::env::var(Self::PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
            urls: self.urls.clone(),
            cluster: self.cluster.clone().filter(|c| !c.is_empty()),
            query_timeout: self.query_timeout,
        }
    }
}

/// How to reach the ClickHouse store: what [`ClickHouseConfig::settings`] hands the store (the
/// password from the environment included).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Created on connect when missing.
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// Replicas of one shard (HTTP interfaces), tried in this order: reads and writes go to the
    /// first healthy one and fail over to the next. Empty: `url` alone.
    pub urls: Vec<String>,
    /// Cluster mode: migrations run `ON CLUSTER` this cluster with replicated engines.
    pub cluster: Option<String>,
    /// Longest wait for one statement on one replica before trying the next.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "planfeed".into(),
            user: "default".into(),
            password: None,
            urls: Vec::new(),
            cluster: None,
            query_timeout: default_query_timeout(),
        }
    }
}

impl ClickHouseSettings {
    /// The replicas to talk to: `urls` when given, else `url`.
    pub fn endpoints(&self) -> Vec<String> {
        let urls = if self.urls.is_empty() { std::slice::from_ref(&self.url) } else { &self.urls[..] };
        urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        // Built without TLS: put a TLS-terminating proxy in front of a remote server if needed.
        if let Some(url) = self.endpoints().into_iter().find(|u| !u.starts_with("http://")) {
            return Err(format!("clickhouse url must start with http:// (no TLS support), got {url:?}"));
        }
        if self.urls.len() > 16 {
            return Err(format!("clickhouse urls lists {} replicas; at most 16", self.urls.len()));
        }
        if self.query_timeout.is_zero() {
            return Err("clickhouse query_timeout must be positive".into());
        }
        let valid_name = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some(cluster) = self.cluster.as_deref().filter(|c| !valid_name(c)) {
            return Err(format!(
                "clickhouse cluster must be letters, digits and underscores, got {cluster:?}"
            ));
        }
        if !valid_name(&self.database) {
            return Err(format!(
                "clickhouse database must be letters, digits and underscores, got {:?}",
                self.database
            ));
        }
        if self.user.is_empty() {
            return Err("clickhouse user must not be empty".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// `[http]`: what `/search` answers tell HTTP caches (see docs/adr/0011-http-caching.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

impl Settings {
    /// Defaults, then `<dir>/local.toml` when present, then the environment.
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        Self::load_with(config_dir, std::env::vars())
    }

    /// Like [`Settings::load`] with explicit environment variables (tests don't touch the process's).
    pub fn load_with(
        config_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("PLANFEED__")).collect();
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .add_source(config::File::from(config_dir.join("local.toml")).required(false))
            .add_source(
                config::Environment::with_prefix("PLANFEED")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("store.clickhouse.urls")
                    .source(Some(env)),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

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

    /// Checks what types alone cannot: ranges, URLs, zone names (one check per section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_providers()?;
        self.validate_pipeline()?;
        self.validate_store()?;
        self.validate_spool()?;
        self.server.rate_limit.validate().map_err(ConfigError::Invalid)?;
        self.server.connections.validate().map_err(ConfigError::Invalid)?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.validate_search()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::Invalid(format!(
                "log.level is not a valid filter: {:?}",
                self.log.level
            )));
        }
        Ok(())
    }

    /// Provider names are unique and each provider is valid.
    fn validate_providers(&self) -> Result<(), ConfigError> {
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

    /// Pipeline sizes, ages and ingest thread settings are in range.
    fn validate_pipeline(&self) -> Result<(), ConfigError> {
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
        if pl.flush_age.is_zero() {
            return bad("pipeline.flush_age must be positive".into());
        }
        if pl.ingest_threads > 256 || !(0..=19).contains(&pl.ingest_nice) {
            return bad(format!(
                "pipeline.ingest_threads must be 0 to 256 and pipeline.ingest_nice 0 to 19, got {} and {}",
                pl.ingest_threads, pl.ingest_nice
            ));
        }
        Ok(())
    }

    /// The chosen store backend is configured.
    fn validate_store(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.store.backend == Backend::Embedded && self.store.path.as_os_str().is_empty() {
            return bad("store.path must be set for the embedded store".into());
        }
        if self.store.backend == Backend::Clickhouse {
            self.store
                .clickhouse
                .settings()
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("store.clickhouse: {e}")))?;
        }
        Ok(())
    }

    /// The spool has a path, room and a write timeout.
    fn validate_spool(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.spool.path.as_os_str().is_empty()
            || self.spool.max_bytes < 1024 * 1024
            || self.spool.write_timeout.is_zero()
        {
            return bad(format!(
                "spool.path must be set, spool.max_bytes at least 1048576 and spool.write_timeout positive, got {:?}, {} and {:?}",
                self.spool.path, self.spool.max_bytes, self.spool.write_timeout
            ));
        }
        Ok(())
    }

    /// The search cache has a budget and positive durations.
    fn validate_search(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_suit_production() {
        let s = Settings::load_with(Path::new("/nonexistent"), env(&[])).unwrap();
        assert_eq!(s.provider.url, "https://provider.code-challenge.feverup.com/api/events");
        assert_eq!(s.provider.interval, Duration::from_secs(30));
        assert!(s.pipeline.flush_age <= Duration::from_secs(1));
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(s.store.backend, Backend::Embedded);
        assert_eq!(s.store.path, PathBuf::from("./data/planfeed.db"));
        assert_eq!(s.role, Role::Both);
        let p = &s.provider;
        assert_eq!((p.retries, p.retry_backoff), (3, Duration::from_millis(500)));
        assert_eq!(p.max_body_bytes, 1 << 30);
        assert_eq!((p.breaker_failures, p.breaker_cooldown), (5, Duration::from_secs(60)));
    }

    #[test]
    fn environment_overrides_files() {
        let s = Settings::load_with(
            Path::new("/nonexistent"),
            env(&[
                ("PLANFEED__PROVIDER__URL", "http://127.0.0.1:9/feed"),
                ("PLANFEED__PROVIDER__INTERVAL", "250ms"),
                ("PLANFEED__PIPELINE__PARSERS", "4"),
                ("OTHER__PROVIDER__URL", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.provider.url, "http://127.0.0.1:9/feed");
        assert_eq!(s.provider.interval, Duration::from_millis(250));
        assert_eq!(s.pipeline.parsers, 4);
    }

    #[test]
    fn local_file_overrides_defaults_and_unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("local.toml"), "[provider]\ntimezone = \"Europe/Madrid\"\n").unwrap();
        let s = Settings::load_with(dir.path(), env(&[])).unwrap();
        assert_eq!(s.provider.tz(), chrono_tz::Europe::Madrid);

        std::fs::write(dir.path().join("local.toml"), "[provider]\ntimezon = \"UTC\"\n").unwrap();
        let err = Settings::load_with(dir.path(), env(&[])).unwrap_err().to_string();
        assert!(err.contains("timezon"), "{err}");
    }

    #[test]
    fn several_providers_take_defaults_from_the_single_provider_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.toml"),
            "[provider]\ninterval = \"10s\"\n[[providers]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/a\"\n\
             [[providers]]\nname = \"b\"\nurl = \"http://127.0.0.1:1/b\"\ntimezone = \"Europe/Madrid\"\ninterval = \"1m\"\n",
        )
        .unwrap();
        let s = Settings::load_with(dir.path(), env(&[])).unwrap();
        let p = s.effective_providers();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].interval, p[0].timezone.as_str()),
            ("a", Duration::from_secs(10), "UTC")
        );
        assert_eq!(
            (p[1].name.as_str(), p[1].interval, p[1].timezone.as_str()),
            ("b", Duration::from_secs(60), "Europe/Madrid")
        );

        std::fs::write(
            dir.path().join("local.toml"),
            "[[providers]]\nname = \"a\"\nurl = \"http://x/a\"\n[[providers]]\nname = \"a\"\nurl = \"http://x/b\"\n",
        )
        .unwrap();
        let err = Settings::load_with(dir.path(), env(&[])).unwrap_err().to_string();
        assert!(err.contains("unique"), "{err}");

        std::fs::write(
            dir.path().join("local.toml"),
            "[provider]\nretries = 1\n[[providers]]\nname = \"a\"\nurl = \"http://x/a\"\n\
             [[providers]]\nname = \"b\"\nurl = \"http://x/b\"\nretries = 0\nretry_backoff = \"50ms\"\n\
             max_body_bytes = 4096\nbreaker_failures = 2\nbreaker_cooldown = \"1s\"\n",
        )
        .unwrap();
        let p = Settings::load_with(dir.path(), env(&[])).unwrap().effective_providers();
        assert_eq!(
            (p[0].retries, p[0].retry_backoff, p[0].breaker_failures),
            (1, Duration::from_millis(500), 5)
        );
        assert_eq!(
            (
                p[1].retries,
                p[1].retry_backoff,
                p[1].max_body_bytes,
                p[1].breaker_failures,
                p[1].breaker_cooldown
            ),
            (0, Duration::from_millis(50), 4096, 2, Duration::from_secs(1))
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("PLANFEED__PROVIDER__TIMEZONE", "Mars/Base", "provider.timezone"),
            ("PLANFEED__PROVIDER__URL", "ftp://x", "provider.url"),
            ("PLANFEED__PIPELINE__PARSERS", "0", "pipeline.parsers"),
            ("PLANFEED__PROVIDER__INTERVAL", "soon", "interval"),
            ("PLANFEED__PROVIDER__RETRY_BACKOFF", "1m", "provider.retry_backoff"),
            ("PLANFEED__PROVIDER__MAX_BODY_BYTES", "10", "provider.max_body_bytes"),
            ("PLANFEED__PROVIDER__RETRIES", "100", "provider.retries"),
        ];
        for (k, v, expected) in cases {
            let err = Settings::load_with(Path::new("/nonexistent"), env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(expected), "{k}={v}: {err}");
        }
    }
}
