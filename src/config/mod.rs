//! Typed settings. Layers, later wins: `config/default.toml` (compiled in), an optional
//! `local.toml` in the config folder, then `PLANFEED__SECTION__KEY` environment variables.
//! Unknown keys are rejected and [`Settings::validate`] runs before anything starts.
//!
//! One file per section: [`providers`], [`pipeline`], [`store`] (with the spool), [`search`],
//! [`server`], [`http`]; each holds its typed settings, defaults and checks. This file holds the
//! root [`Settings`], loading and the order of the checks.

mod http;
mod pipeline;
mod providers;
mod search;
mod server;
mod store;

pub use http::HttpSettings;
pub use pipeline::PipelineSettings;
pub use providers::{ProviderEntry, ProviderSettings, MAX_RETRY_BACKOFF};
pub use search::SearchSettings;
pub use server::{ConnectionSettings, ProbeLimitSettings, RateLimitSettings, ServerSettings};
pub use store::{Backend, ClickHouseConfig, ClickHouseSettings, SpoolSettings, StoreSettings};

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
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
    /// Every key of these settings with its value: `section.key` (`server.rate_limit.global_burst`),
    /// `list[i].key` for an entry of a list of tables (`providers[0].url`); a list of plain values is
    /// one key. Durations read as in the files (`"30s"`). Derived from the types themselves, so a
    /// reload compares a key added to any section without a list of keys to keep up to date.
    pub fn keys(&self) -> BTreeMap<String, serde_json::Value> {
        let mut keys = BTreeMap::new();
        // Plain structs, strings, numbers and durations: serializing them cannot fail.
        let value = serde_json::to_value(self).expect("settings serialize to JSON");
        flatten(String::new(), value, &mut keys);
        keys
    }

    /// Checks what types alone cannot: ranges, URLs, zone names (one check per section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_providers()?;
        self.validate_pipeline()?;
        self.validate_store()?;
        self.validate_spool()?;
        self.server.validate().map_err(ConfigError::Invalid)?;
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
}

/// Adds `value`'s leaves to `keys`, named by their path from `key`.
pub(crate) fn flatten(key: String, value: serde_json::Value, keys: &mut BTreeMap<String, serde_json::Value>) {
    use serde_json::Value;
    let child = |name: &str| if key.is_empty() { name.to_string() } else { format!("{key}.{name}") };
    match value {
        Value::Object(fields) => {
            for (name, v) in fields {
                flatten(child(&name), v, keys);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(format!("{key}[{i}]"), v, keys);
            }
        }
        leaf => {
            keys.insert(key, leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

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
            ("PLANFEED__PIPELINE__MIN_INGEST_SHARE", "0", "pipeline.min_ingest_share"),
            ("PLANFEED__PIPELINE__MIN_INGEST_SHARE", "1.5", "pipeline.min_ingest_share"),
        ];
        for (k, v, expected) in cases {
            let err = Settings::load_with(Path::new("/nonexistent"), env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(expected), "{k}={v}: {err}");
        }
    }
}
