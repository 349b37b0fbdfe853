//! `[store]`, `[store.clickhouse]` and `[spool]`: where plans are written, and where batches wait
//! when the store refuses them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Clickhouse,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    pub path: PathBuf,
    pub clickhouse: ClickHouseConfig,
}

/// `[spool]`: where batches the store refuses wait until it answers again (see [`crate::delivery::spool`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Cluster mode: replicas that must hold a write before it is acknowledged (0 or 1: the one
    /// that took it). See [`ClickHouseSettings::insert_quorum`].
    #[serde(default)]
    pub insert_quorum: u32,
    /// Keep the table copies the upgrades left (`plans_v1`, `plans_v2`, `zones_v1`) instead of
    /// dropping them once their rows are verified. See [`ClickHouseSettings::keep_superseded_tables`].
    #[serde(default)]
    pub keep_superseded_tables: bool,
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
            insert_quorum: self.insert_quorum,
            keep_superseded_tables: self.keep_superseded_tables,
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
    /// Replicas that must hold an `INSERT` before it is acknowledged (ClickHouse's
    /// `insert_quorum`); 0 or 1 leaves it to the replica that took it. With 2 on two replicas, no
    /// acknowledged row is out of sight while one replica is down, but every write is refused
    /// (and spooled) while one is (ADR 10).
    pub insert_quorum: u32,
    /// Keep the full copies migrations 002 and 004 left of the tables they rebuilt (`plans_v1`,
    /// `plans_v2`, `zones_v1`). By default migration `006_drop_copies` drops them, once every row
    /// of each is verified to be in the current tables; while this is set that migration waits
    /// (it runs at the first start without it).
    pub keep_superseded_tables: bool,
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
            insert_quorum: 0,
            keep_superseded_tables: false,
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
        if self.insert_quorum > 1 && self.insert_quorum as usize > self.endpoints().len() {
            return Err(format!(
                "clickhouse insert_quorum {} exceeds the {} replicas listed in urls",
                self.insert_quorum,
                self.endpoints().len()
            ));
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

impl Settings {
    /// The chosen store backend is configured.
    pub(super) fn validate_store(&self) -> Result<(), ConfigError> {
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
    pub(super) fn validate_spool(&self) -> Result<(), ConfigError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_quorum_needs_as_many_replicas() {
        let two = ClickHouseSettings {
            urls: vec!["http://a:8123".into(), "http://b:8123".into()],
            insert_quorum: 2,
            ..Default::default()
        };
        assert_eq!(two.validate(), Ok(()));
        let three = ClickHouseSettings { insert_quorum: 3, ..two.clone() };
        assert!(three.validate().unwrap_err().contains("insert_quorum 3 exceeds the 2 replicas"));
        assert_eq!(ClickHouseSettings { insert_quorum: 1, ..Default::default() }.validate(), Ok(()));
    }
}
