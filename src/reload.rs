//! Configuration reload while running.
//!
//! A change of `<config dir>/local.toml` (watched with `notify`) or a `SIGHUP` makes the service load
//! and validate a complete new [`Settings`] first; on any error the old settings stay in force and
//! the error is logged. [`diff`] then compares every key of the old and new settings
//! ([`Settings::keys`]): a changed key that [`LIVE_KEYS`] names becomes an [`Action`] applied at
//! once, every other changed key is reported as taking effect after a restart. No key is left out:
//! a key added to the settings is compared without being listed here. [`Reloader`] owns the
//! current settings and the handles that the actions go to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::ActorRef;

use crate::actors::SupervisorMsg;
use crate::config::{
    ConfigError, ConnectionSettings, ProbeLimitSettings, ProviderSettings, RateLimitSettings, Settings,
};
use crate::http::probes::ProbeLimiter;
use crate::http::rate_limit::SharedRateLimiter;
use crate::http::server::ConnectionLimits;
use crate::search::Searcher;

/// One change that can be applied without a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    RateLimits(RateLimitSettings),
    CacheTtl(Duration),
    StoreDeadline(Duration),
    /// Provider `index` (configuration order) got a new URL, schedule, time zone or timeouts.
    Provider {
        index: usize,
        settings: ProviderSettings,
    },
    Batching {
        batch_size: usize,
        flush_age: Duration,
    },
    Parsers(usize),
    /// `pipeline.min_ingest_share`: the share of its time ingestion keeps however busy the searches.
    MinIngestShare(f64),
    LogLevel(String),
    /// `server.connections`: limits and timeouts of the API's connections.
    Connections(ConnectionSettings),
    /// `server.probe_limit`: the budget of `/ready` and `/metrics`.
    ProbeLimits(ProbeLimitSettings),
    /// `server.shutdown_timeout`: read from the current settings when a stop begins.
    ShutdownTimeout(Duration),
}

/// How a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// At once, through the running component that owns it.
    Live(Live),
    /// From the next start: the key sizes or names something built once.
    Restart,
}

/// The running components a live key goes to; one [`Action`] each, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Live {
    Providers,
    RateLimits,
    Connections,
    ProbeLimits,
    ShutdownTimeout,
    CacheTtl,
    StoreDeadline,
    Batching,
    Parsers,
    MinIngestShare,
    LogLevel,
}

/// The keys a reload applies while the service runs, and where they go. The first pattern that
/// matches a key decides; `*` stands for the rest of a key, `[]` for any entry of a list of tables.
/// A key no pattern matches takes effect after a restart: a new key is safe by default, and only
/// a new *live* key needs a line here (docs/operations.md shows this table to operators).
pub const LIVE_KEYS: &[(&str, Effect)] = &[
    // A provider's name is part of every plan key: a renamed provider is another provider.
    ("provider.name", Effect::Restart),
    ("providers[].name", Effect::Restart),
    // The fetcher and scheduler take a provider's whole settings from their next fetch.
    ("provider.*", Effect::Live(Live::Providers)),
    ("providers[].*", Effect::Live(Live::Providers)),
    ("server.rate_limit.*", Effect::Live(Live::RateLimits)),
    ("server.connections.*", Effect::Live(Live::Connections)),
    ("server.probe_limit.*", Effect::Live(Live::ProbeLimits)),
    ("server.shutdown_timeout", Effect::Live(Live::ShutdownTimeout)),
    ("search.cache_ttl", Effect::Live(Live::CacheTtl)),
    ("search.store_deadline", Effect::Live(Live::StoreDeadline)),
    ("pipeline.batch_size", Effect::Live(Live::Batching)),
    ("pipeline.flush_age", Effect::Live(Live::Batching)),
    ("pipeline.parsers", Effect::Live(Live::Parsers)),
    ("pipeline.min_ingest_share", Effect::Live(Live::MinIngestShare)),
    ("log.level", Effect::Live(Live::LogLevel)),
];

/// How a change of `key` (as [`Settings::keys`] names it) takes effect.
pub fn effect(key: &str) -> Effect {
    let shape = list_shape(key);
    let matches = |pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => shape.starts_with(prefix),
        None => shape == pattern,
    };
    LIVE_KEYS.iter().find(|(pattern, _)| matches(pattern)).map_or(Effect::Restart, |(_, e)| *e)
}

/// `providers[3].url` -> `providers[].url`.
fn list_shape(key: &str) -> String {
    let mut shape = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => in_index = true,
            ']' => {
                in_index = false;
                shape.push_str("[]");
            }
            _ if in_index => {}
            _ => shape.push(c),
        }
    }
    shape
}

/// What a new configuration means for the running service.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadPlan {
    pub actions: Vec<Action>,
    /// Changed keys applied by `actions`.
    pub applied: Vec<String>,
    /// Changed keys whose new value is ignored until the next start.
    pub restart_required: Vec<String>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.applied.is_empty() && self.restart_required.is_empty()
    }
}

/// Compares two valid settings key by key: every changed key is either applied or needs a restart.
pub fn diff(old: &Settings, new: &Settings) -> ReloadPlan {
    let (before, after) = (old.keys(), new.keys());
    let mut plan = ReloadPlan::default();
    let mut live = BTreeSet::new();
    for key in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        match (before.get(key), after.get(key)) {
            (Some(o), Some(n)) if o == n => {}
            (Some(_), Some(_)) => match effect(key) {
                Effect::Live(to) => {
                    live.insert(to);
                    plan.applied.push(key.clone());
                }
                Effect::Restart => plan.restart_required.push(key.clone()),
            },
            // An entry added to or removed from a list of tables (`providers`): another set of
            // pipelines, built at start.
            _ => {
                let list = key.split('[').next().unwrap_or(key).to_string();
                if !plan.restart_required.contains(&list) {
                    plan.restart_required.push(list);
                }
            }
        }
    }
    for to in live {
        actions(to, old, new, &mut plan.actions);
    }
    plan
}

/// The actions that bring `to` from `old` to `new`.
fn actions(to: Live, old: &Settings, new: &Settings, out: &mut Vec<Action>) {
    match to {
        Live::Providers => {
            let (op, np) = (old.effective_providers(), new.effective_providers());
            // Another count or a rename is reported as needing a restart (by its key).
            if op.len() == np.len() {
                for (index, (o, n)) in op.iter().zip(np).enumerate() {
                    if o.name == n.name && *o != n {
                        out.push(Action::Provider { index, settings: n });
                    }
                }
            }
        }
        Live::RateLimits => out.push(Action::RateLimits(new.server.rate_limit.clone())),
        Live::Connections => out.push(Action::Connections(new.server.connections.clone())),
        Live::ProbeLimits => out.push(Action::ProbeLimits(new.server.probe_limit.clone())),
        Live::ShutdownTimeout => out.push(Action::ShutdownTimeout(new.server.shutdown_timeout)),
        Live::CacheTtl => out.push(Action::CacheTtl(new.search.cache_ttl)),
        Live::StoreDeadline => out.push(Action::StoreDeadline(new.search.store_deadline)),
        Live::Batching => out.push(Action::Batching {
            batch_size: new.pipeline.batch_size,
            flush_age: new.pipeline.flush_age,
        }),
        Live::Parsers => out.push(Action::Parsers(new.pipeline.parsers)),
        Live::MinIngestShare => out.push(Action::MinIngestShare(new.pipeline.min_ingest_share)),
        Live::LogLevel => out.push(Action::LogLevel(new.log.level.clone())),
    }
}

/// Replaces the log filter of the running subscriber (set up by the binary).
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration reload rejected, the previous settings stay in force: {0}")]
    Invalid(#[from] ConfigError),
    #[error("cannot watch the configuration folder {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// The current settings and where live changes go. Shared by the watcher and the service.
pub struct Reloader {
    current: Mutex<Settings>,
    pub(crate) limiter: Option<SharedRateLimiter>,
    pub(crate) searcher: Arc<Searcher>,
    pub(crate) pipeline: Option<ActorRef<SupervisorMsg>>,
    log_level: Mutex<Option<LogLevelSetter>>,
    /// The API's connection limits, when this process serves the API.
    connections: std::sync::OnceLock<Arc<ConnectionLimits>>,
    /// The budget of `/ready` and `/metrics`, when this process serves them.
    probes: std::sync::OnceLock<Arc<ProbeLimiter>>,
}

impl Reloader {
    pub(crate) fn new(
        settings: Settings,
        limiter: Option<SharedRateLimiter>,
        searcher: Arc<Searcher>,
        pipeline: Option<ActorRef<SupervisorMsg>>,
    ) -> Self {
        Self {
            current: Mutex::new(settings),
            limiter,
            searcher,
            pipeline,
            log_level: Mutex::new(None),
            connections: Default::default(),
            probes: Default::default(),
        }
    }

    /// Lets reloads change the budget of `/ready` and `/metrics` (set by the service that serves them).
    pub fn set_probe_limits(&self, limits: Arc<ProbeLimiter>) {
        let _ = self.probes.set(limits);
    }

    /// Lets reloads change the API's connection limits (set by the service that serves them).
    pub fn set_connection_limits(&self, limits: Arc<ConnectionLimits>) {
        let _ = self.connections.set(limits);
    }

    /// Lets reloads change the log level (only the binary owns the subscriber).
    pub fn set_log_level_setter(&self, setter: LogLevelSetter) {
        *self.log_level.lock() = Some(setter);
    }

    pub fn current(&self) -> Settings {
        self.current.lock().clone()
    }

    /// Loads `<dir>/local.toml` (and the environment) and applies it; on error nothing changes.
    pub fn reload_from(&self, dir: &Path) -> Result<ReloadPlan, ReloadError> {
        match Settings::load(dir) {
            Ok(new) => Ok(self.apply(new)),
            Err(e) => {
                let e = ReloadError::from(e);
                tracing::error!(error = %e, dir = %dir.display(), "configuration reload failed");
                Err(e)
            }
        }
    }

    /// Applies what can change live and logs what needs a restart. `new` must be valid.
    pub fn apply(&self, new: Settings) -> ReloadPlan {
        let mut current = self.current.lock();
        let plan = diff(&current, &new);
        for action in &plan.actions {
            self.run(action);
        }
        for key in &plan.restart_required {
            tracing::warn!(key = %key, "configuration changed, takes effect after a restart");
        }
        if plan.is_empty() {
            tracing::debug!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(
                applied = ?plan.applied,
                restart_required = ?plan.restart_required,
                "configuration reloaded"
            );
        }
        *current = new;
        plan
    }

    fn run(&self, action: &Action) {
        let pipeline_change =
            matches!(action, Action::Provider { .. } | Action::Batching { .. } | Action::Parsers(_));
        if pipeline_change && self.pipeline.is_none() {
            tracing::debug!(?action, "no ingestion in this process: pipeline setting ignored");
            return;
        }
        match action {
            Action::CacheTtl(ttl) => {
                self.searcher.set_ttl(*ttl);
                tracing::info!(ttl_ms = ttl.as_millis() as u64, "search cache ttl updated");
            }
            Action::StoreDeadline(d) => {
                self.searcher.set_store_deadline(*d);
                tracing::info!(deadline_ms = d.as_millis() as u64, "search store deadline updated");
            }
            Action::Provider { .. } | Action::Batching { .. } | Action::Parsers(_) => {
                self.tell_pipeline(action)
            }
            Action::RateLimits(_) | Action::Connections(_) | Action::ProbeLimits(_) => {
                self.tell_server(action)
            }
            // The stop reads it from the current settings, which this reload replaces.
            Action::ShutdownTimeout(d) => {
                tracing::info!(timeout_ms = d.as_millis() as u64, "shutdown deadline updated")
            }
            Action::MinIngestShare(share) => {
                // Process-wide, like the threads it paces.
                crate::cpu::pace::set_min_share(*share);
                tracing::info!(share, "ingestion's minimum share updated");
            }
            Action::LogLevel(level) => match self.log_level.lock().as_ref() {
                Some(set) => match set(level) {
                    Ok(()) => tracing::info!(level = %level, "log level updated"),
                    Err(e) => tracing::error!(level = %level, error = %e, "log level not updated"),
                },
                None => tracing::warn!(level = %level, "log level cannot change in this process"),
            },
        }
    }

    /// The HTTP server's limits go to the limiters and the accept loop, which apply them to the
    /// next request or connection.
    fn tell_server(&self, action: &Action) {
        match action {
            Action::RateLimits(s) => {
                if let Some(l) = &self.limiter {
                    l.update(s);
                }
                // Connection caps key IPv6 clients by the same prefix as the rate limits.
                if let Some(limits) = self.connections.get() {
                    limits.set_ipv6_prefix(s.ipv6_prefix);
                }
                tracing::info!(
                    per_client_per_second = s.per_client_per_second,
                    per_client_burst = s.per_client_burst,
                    global_per_second = s.global_per_second,
                    global_burst = s.global_burst,
                    "rate limits updated"
                );
            }
            Action::Connections(c) => match self.connections.get() {
                Some(limits) => {
                    limits.update(c);
                    tracing::info!(
                        max_connections = c.max_connections,
                        max_connections_per_client = c.max_connections_per_client,
                        idle_timeout_ms = c.idle_timeout.as_millis() as u64,
                        header_read_timeout_ms = c.header_read_timeout.as_millis() as u64,
                        "connection limits updated"
                    );
                }
                None => tracing::debug!("no API in this process: connection limits ignored"),
            },
            Action::ProbeLimits(p) => {
                if let Some(limiter) = self.probes.get() {
                    limiter.update(p);
                }
                tracing::info!(
                    per_client_per_second = p.per_client_per_second,
                    per_client_burst = p.per_client_burst,
                    global_per_second = p.global_per_second,
                    global_burst = p.global_burst,
                    "probe limits updated"
                );
            }
            _ => {}
        }
    }

    /// Pipeline settings go to the supervisor, which keeps them for restarted actors.
    fn tell_pipeline(&self, action: &Action) {
        let Some(sup) = &self.pipeline else { return };
        match action {
            Action::Provider { index, settings } => {
                let _ = sup.cast(SupervisorMsg::SetProvider { index: *index, settings: settings.clone() });
                tracing::info!(
                    provider = %settings.name, url = %settings.url,
                    interval_ms = settings.interval.as_millis() as u64,
                    jitter_ms = settings.jitter.as_millis() as u64,
                    "provider settings updated"
                );
            }
            Action::Batching { batch_size, flush_age } => {
                let _ =
                    sup.cast(SupervisorMsg::SetBatching { batch_size: *batch_size, flush_age: *flush_age });
                tracing::info!(
                    batch_size,
                    flush_age_ms = flush_age.as_millis() as u64,
                    "writer batching updated"
                );
            }
            Action::Parsers(n) => {
                let _ = sup.cast(SupervisorMsg::SetParsers(*n));
            }
            _ => {}
        }
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads on every change of `<dir>/local.toml` and on `SIGHUP`. A folder that cannot be watched
/// (missing) leaves `SIGHUP` working and is logged.
pub fn watch(reloader: Arc<Reloader>, dir: PathBuf) -> Result<ConfigWatch, ReloadError> {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ReloadError::Signal)?;
    Ok(watch_with(reloader, dir, hup))
}

/// [`watch`] with a `SIGHUP` stream the caller opened, possibly long before: the binary opens it
/// first thing, so a `SIGHUP` that arrives while the service starts is kept and reloads once it
/// runs, instead of ending the process (the signal's default action).
pub fn watch_with(
    reloader: Arc<Reloader>,
    dir: PathBuf,
    mut hup: tokio::signal::unix::Signal,
) -> ConfigWatch {
    use notify::Watcher;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let watcher = {
        let tx = tx.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let ours = event.paths.iter().any(|p| p.file_name().is_some_and(|n| n == "local.toml"));
            if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.try_send(());
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        match watched {
            Ok(w) => Some(w),
            Err(source) => {
                let e = ReloadError::Watch { dir: dir.clone(), source };
                tracing::warn!(error = %e, "local.toml changes are not watched; SIGHUP still reloads");
                None
            }
        }
    };
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = rx.recv() => tracing::debug!("local.toml changed"),
                Some(()) = hup.recv() => tracing::info!("SIGHUP received: reloading the configuration"),
                else => return,
            }
            // Editors and `cp` write in several steps: let them finish, then read once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let reloader = reloader.clone();
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload_from(&dir)).await;
        }
    });
    drop(tx);
    ConfigWatch { _watcher: watcher, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Settings {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with(Path::new("/nonexistent"), env).unwrap()
    }

    #[test]
    fn live_changes_become_actions_and_the_rest_needs_a_restart() {
        let old = load(&[]);
        let new = load(&[
            ("PLANFEED__SERVER__RATE_LIMIT__PER_CLIENT_BURST", "7"),
            ("PLANFEED__PROVIDER__INTERVAL", "2s"),
            ("PLANFEED__PROVIDER__URL", "http://127.0.0.1:1/feed"),
            ("PLANFEED__SEARCH__CACHE_TTL", "1s"),
            ("PLANFEED__PIPELINE__BATCH_SIZE", "10"),
            ("PLANFEED__LOG__LEVEL", "debug"),
            ("PLANFEED__SERVER__LISTEN", "127.0.0.1:9999"),
            ("PLANFEED__PIPELINE__PARSERS", "3"),
            ("PLANFEED__PIPELINE__MIN_INGEST_SHARE", "0.5"),
        ]);
        let plan = diff(&old, &new);
        assert_eq!(plan.restart_required, vec!["server.listen"]);
        assert_eq!(
            plan.applied,
            [
                "log.level",
                "pipeline.batch_size",
                "pipeline.min_ingest_share",
                "pipeline.parsers",
                "provider.interval",
                "provider.url",
                "search.cache_ttl",
                "server.rate_limit.per_client_burst"
            ]
        );
        let mut provider = old.provider.clone();
        provider.interval = Duration::from_secs(2);
        provider.url = "http://127.0.0.1:1/feed".into();
        let mut limits = old.server.rate_limit.clone();
        limits.per_client_burst = 7;
        assert_eq!(
            plan.actions,
            vec![
                Action::Provider { index: 0, settings: provider },
                Action::RateLimits(limits),
                Action::CacheTtl(Duration::from_secs(1)),
                Action::Batching { batch_size: 10, flush_age: old.pipeline.flush_age },
                Action::Parsers(3),
                Action::MinIngestShare(0.5),
                Action::LogLevel("debug".into()),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn a_renamed_provider_or_another_provider_count_needs_a_restart() {
        let old = load(&[]);
        let renamed = load(&[("PLANFEED__PROVIDER__NAME", "other")]);
        let plan = diff(&old, &renamed);
        assert_eq!((plan.actions.len(), plan.restart_required), (0, vec!["provider.name".to_string()]));

        let mut two = old.clone();
        for name in ["a", "b"] {
            two.providers.push(crate::config::ProviderEntry {
                name: name.into(),
                url: "http://127.0.0.1:1/".into(),
                interval: None,
                jitter: None,
                timezone: None,
                connect_timeout: None,
                timeout: None,
                retries: None,
                retry_backoff: None,
                max_body_bytes: None,
                breaker_failures: None,
                breaker_cooldown: None,
            });
        }
        assert_eq!(diff(&old, &two).restart_required, vec!["providers"]);
        let mut renamed = two.clone();
        renamed.providers[1].name = "c".into();
        renamed.providers[0].interval = Some(Duration::from_secs(5));
        let plan = diff(&two, &renamed);
        assert_eq!(
            (plan.applied, plan.restart_required),
            (vec!["providers[0].interval".to_string()], vec!["providers[1].name".to_string()])
        );
        assert!(matches!(plan.actions[..], [Action::Provider { index: 0, .. }]), "{:?}", plan.actions);
    }

    /// A value of the same type as `v` that still validates: numbers and durations move a little,
    /// booleans flip; other strings and empty values take a hand-picked alternative.
    fn another(key: &str, v: &serde_json::Value) -> serde_json::Value {
        use serde_json::{json, Value};
        let picked = [
            ("role", json!("api")),
            ("server.listen", json!("127.0.0.1:8001")),
            ("provider.name", json!("other")),
            ("provider.url", json!("http://127.0.0.1:1/feed")),
            ("provider.timezone", json!("Europe/Madrid")),
            ("store.backend", json!("clickhouse")),
            ("store.clickhouse.url", json!("http://127.0.0.1:8124")),
            ("store.clickhouse.urls", json!(["http://127.0.0.1:8124", "http://127.0.0.1:8125"])),
            ("store.clickhouse.cluster", json!("planfeed")),
            ("server.rate_limit.trusted_proxies", json!(["10.0.0.0/8"])),
            ("log.level", json!("debug")),
            ("log.format", json!("json")),
            ("providers", json!([{"name": "a", "url": "http://127.0.0.1:1/a"}])),
        ];
        if let Some((_, alt)) = picked.iter().find(|(k, _)| *k == key) {
            return alt.clone();
        }
        match v {
            Value::Bool(b) => json!(!b),
            Value::Number(n) if n.is_u64() => json!(n.as_u64().unwrap() + 1),
            Value::Number(n) => json!(n.as_f64().unwrap() / 2.0),
            Value::String(s) => match humantime::parse_duration(s) {
                Ok(d) => json!(humantime::format_duration(d + Duration::from_secs(1)).to_string()),
                Err(_) => json!(format!("{s}2")),
            },
            other => panic!("{key} = {other}: give it an alternative value in `another`"),
        }
    }

    /// `v` written as a TOML value (JSON strings, numbers and arrays are TOML already).
    fn toml(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(fields) => {
                let fields: Vec<_> = fields.iter().map(|(k, v)| format!("{k} = {}", toml(v))).collect();
                format!("{{ {} }}", fields.join(", "))
            }
            serde_json::Value::Array(items) => {
                format!("[{}]", items.iter().map(toml).collect::<Vec<_>>().join(", "))
            }
            other => other.to_string(),
        }
    }

    /// Every key of config/default.toml (and every key the settings have besides, such as
    /// `store.clickhouse.urls` or `providers`), changed alone in `local.toml`, is either applied or
    /// reported as needing a restart: none is ignored in silence.
    #[test]
    fn every_key_is_applied_or_reported_as_needing_a_restart() {
        let defaults: serde_json::Value = config::Config::builder()
            .add_source(config::File::from_str(crate::config::DEFAULT_TOML, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        let mut file_keys = std::collections::BTreeMap::new();
        crate::config::flatten(String::new(), defaults, &mut file_keys);
        let old = load(&[]);
        let mut keys = old.keys();
        for key in file_keys.keys() {
            assert!(keys.contains_key(key), "{key} of default.toml is not a setting");
        }
        keys.retain(|k, _| !k.starts_with("providers["));
        assert!(keys.len() >= 50, "{} keys", keys.len());

        let dir = tempfile::tempdir().unwrap();
        let (mut live, mut restart) = (0, 0);
        for (key, value) in &keys {
            let line = format!("{key} = {}\n", toml(&another(key, value)));
            std::fs::write(dir.path().join("local.toml"), &line).unwrap();
            let new = Settings::load_with(dir.path(), std::iter::empty())
                .unwrap_or_else(|e| panic!("{line}: {e}: give {key} a valid value in `another`"));
            let plan = diff(&old, &new);
            let shape = match effect(key) {
                Effect::Live(_) => {
                    live += 1;
                    assert!(!plan.actions.is_empty(), "{line}: applied by no action");
                    (vec![key.clone()], vec![])
                }
                Effect::Restart => {
                    restart += 1;
                    assert!(plan.actions.is_empty(), "{line}: {:?}", plan.actions);
                    (vec![], vec![key.clone()])
                }
            };
            assert_eq!((plan.applied, plan.restart_required), shape, "{line}");
        }
        // The live table holds nothing but keys that exist.
        for (pattern, _) in LIVE_KEYS {
            let prefix = pattern.trim_end_matches('*').replace("[]", "");
            assert!(
                old.keys().keys().any(|k| k.starts_with(&prefix)) || pattern.starts_with("providers[]"),
                "{pattern} names no setting"
            );
        }
        assert!(live >= 20 && restart >= 20, "{live} live, {restart} restart");
    }

    /// docs/operations.md shows operators the live table.
    #[test]
    fn the_operations_guide_lists_every_live_key() {
        let guide = include_str!("../docs/operations.md");
        for (pattern, effect) in LIVE_KEYS {
            let row = format!("| `{pattern}` |");
            let line = guide.lines().find(|l| l.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("docs/operations.md has no row {row}"));
            let live = line.contains("| live");
            assert_eq!(live, matches!(effect, Effect::Live(_)), "{line}");
        }
    }
}
