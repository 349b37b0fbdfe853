//! Configuration reload while running.
//!
//! A change of `<config dir>/local.toml` (watched with `notify`) or a `SIGHUP` makes the service load
//! and validate a complete new [`Settings`] first; on any error the old settings stay in force and
//! the error is logged. [`diff`] then compares old and new settings and yields the [`Action`]s that
//! can be applied live (rate limits, cache TTL, per-provider URL/schedule/timeouts, writer batching,
//! parser pool size, log level) and the keys that only take effect after a restart (listen address,
//! store, role, providers list, queue and chunk sizes, cache size, log format). [`Reloader`] owns the
//! current settings and the handles that the actions go to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::ActorRef;

use crate::actors::SupervisorMsg;
use crate::config::{ConfigError, ConnectionSettings, ProviderSettings, RateLimitSettings, Settings};
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
    /// `pipeline.ingest_share`: the ingestion threads' pacing while searches are answered.
    IngestShare(f64),
    LogLevel(String),
    /// `server.connections`: limits and timeouts of the API's connections.
    Connections(ConnectionSettings),
}

/// What a new configuration means for the running service.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadPlan {
    pub actions: Vec<Action>,
    /// Keys whose new value is ignored until the next start.
    pub restart_required: Vec<String>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.restart_required.is_empty()
    }
}

/// Compares two valid settings.
pub fn diff(old: &Settings, new: &Settings) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let mut restart = |key: &str, changed: bool| {
        if changed {
            plan.restart_required.push(key.to_string());
        }
    };
    restart("role", old.role != new.role);
    restart("server.listen", old.server.listen != new.server.listen);
    restart("store", old.store != new.store);
    restart("pipeline.chunk_bytes", old.pipeline.chunk_bytes != new.pipeline.chunk_bytes);
    restart(
        "pipeline.max_base_plan_bytes",
        old.pipeline.max_base_plan_bytes != new.pipeline.max_base_plan_bytes,
    );
    restart("pipeline.queue_chunks", old.pipeline.queue_chunks != new.pipeline.queue_chunks);
    restart("pipeline.ingest_threads", old.pipeline.cpu_pool() != new.pipeline.cpu_pool());
    restart("search.cache_bytes", old.search.cache_bytes != new.search.cache_bytes);
    restart("search.change_poll", old.search.change_poll != new.search.change_poll);
    restart("log.format", old.log.format != new.log.format);

    diff_providers(old, new, &mut plan);
    if old.server.rate_limit != new.server.rate_limit {
        plan.actions.push(Action::RateLimits(new.server.rate_limit.clone()));
    }
    if old.server.connections != new.server.connections {
        plan.actions.push(Action::Connections(new.server.connections.clone()));
    }
    if old.search.cache_ttl != new.search.cache_ttl {
        plan.actions.push(Action::CacheTtl(new.search.cache_ttl));
    }
    if old.search.store_deadline != new.search.store_deadline {
        plan.actions.push(Action::StoreDeadline(new.search.store_deadline));
    }
    if (old.pipeline.batch_size, old.pipeline.flush_age) != (new.pipeline.batch_size, new.pipeline.flush_age)
    {
        plan.actions.push(Action::Batching {
            batch_size: new.pipeline.batch_size,
            flush_age: new.pipeline.flush_age,
        });
    }
    if old.pipeline.parsers != new.pipeline.parsers {
        plan.actions.push(Action::Parsers(new.pipeline.parsers));
    }
    if old.pipeline.ingest_share != new.pipeline.ingest_share {
        plan.actions.push(Action::IngestShare(new.pipeline.ingest_share));
    }
    if old.log.level != new.log.level {
        plan.actions.push(Action::LogLevel(new.log.level.clone()));
    }
    plan
}

/// The providers' part of [`diff`]: a changed count or name needs a restart, other changes are
/// applied to the provider's fetcher.
fn diff_providers(old: &Settings, new: &Settings, plan: &mut ReloadPlan) {
    let (op, np) = (old.effective_providers(), new.effective_providers());
    if op.len() != np.len() {
        plan.restart_required.push("providers".to_string());
        return;
    }
    for (index, (o, n)) in op.iter().zip(np).enumerate() {
        if o.name != n.name {
            // The name is part of every plan key: a rename is a new provider.
            plan.restart_required.push(format!("provider name {:?}", o.name));
        } else if *o != n {
            plan.actions.push(Action::Provider { index, settings: n });
        }
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
        }
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
            tracing::warn!(key = %key, "configuration changed but needs a restart to take effect");
        }
        if plan.is_empty() {
            tracing::debug!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(
                applied = plan.actions.len(),
                restart_required = plan.restart_required.len(),
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
            Action::RateLimits(s) => {
                if let Some(l) = &self.limiter {
                    l.update(s);
                }
                tracing::info!(
                    per_client_per_second = s.per_client_per_second,
                    per_client_burst = s.per_client_burst,
                    global_per_second = s.global_per_second,
                    global_burst = s.global_burst,
                    "rate limits updated"
                );
            }
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
            Action::IngestShare(share) => {
                // Process-wide, like the threads it paces.
                crate::cpu::pace::set_share(*share);
                tracing::info!(share, "ingestion pacing updated");
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
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ReloadError::Signal)?;
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
    Ok(ConfigWatch { _watcher: watcher, task })
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
            ("PLANFEED__PIPELINE__INGEST_SHARE", "0.5"),
        ]);
        let plan = diff(&old, &new);
        assert_eq!(plan.restart_required, vec!["server.listen"]);
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
                Action::IngestShare(0.5),
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
        assert_eq!(
            (plan.actions.len(), plan.restart_required),
            (0, vec!["provider name \"fever\"".to_string()])
        );

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
    }
}
