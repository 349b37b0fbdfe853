//! The `planfeed` command: parse the CLI, load the configuration, call into the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use planfeed::config::{LogFormat, Settings};
use planfeed::reload::LogLevelSetter;
use planfeed::service::Service;

/// glibc's malloc maps and unmaps the big buffers of a 61 MB feed every round (the address space's
/// lock taken for writing, page faults on every thread, the searches' included); mimalloc keeps
/// and reuses its segments (ADR 12, third pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "planfeed",
    version,
    about = "Pulls a ticketing provider's XML feed into a store and serves GET /search over it"
)]
struct Cli {
    /// Folder holding local.toml (optional overrides of the built-in defaults).
    #[arg(long, global = true, default_value = "config", env = "PLANFEED_CONFIG_DIR")]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default): ingestion and/or the API, as `role` says.
    Serve,
    /// Apply pending ClickHouse migrations (clickhouse/*.sql) and exit.
    Migrate,
    /// Ingest one feed into the configured store and exit (non-zero if the fetch failed).
    Ingest {
        /// Required for now: ingest a single feed, then exit.
        #[arg(long)]
        once: bool,
        /// Read the feed from this file instead of the provider.
        #[arg(long, conflicts_with = "url")]
        file: Option<PathBuf>,
        /// Fetch the feed from this URL instead of the configured one.
        #[arg(long)]
        url: Option<String>,
        /// Provider name the plans are stored under (default: the configured provider's).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Serve provider feeds over HTTP (fixture files in rotation or a generated feed), with faults.
    SimulateProvider(planfeed::simulator::cli::SimulateArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Load and validate the configuration, print the effective settings, exit non-zero on error.
    Check,
}

fn main() -> anyhow::Result<()> {
    // Before any SQLite connection (the spool's or the store's).
    planfeed::store::sqlite::configure_library();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Serve = command {
        return serve_main(cli.config_dir);
    }
    let settings = Settings::load(&cli.config_dir)?;
    match command {
        Command::Config { action: ConfigAction::Check } => {
            println!("{settings:#?}");
            println!("configuration is valid");
            Ok(())
        }
        Command::Serve => unreachable!("served above"),
        Command::Ingest { once, file, url, provider } => {
            anyhow::ensure!(once, "only `ingest --once` is supported: use `serve` to ingest on a schedule");
            init_logging(&settings);
            let url = match (file, url) {
                (Some(f), _) => {
                    let abs =
                        std::fs::canonicalize(&f).with_context(|| format!("cannot read {}", f.display()))?;
                    Some(format!("file://{}", abs.display()))
                }
                (None, u) => u,
            };
            let record =
                runtime()?.block_on(planfeed::service::ingest_once(settings, url, provider, true))?;
            match record.error {
                None => Ok(()),
                Some(e) => anyhow::bail!("ingestion failed: {e}"),
            }
        }
        Command::Migrate => {
            init_logging(&settings);
            runtime()?.block_on(async {
                let cfg = &settings.store.clickhouse;
                let store = planfeed::store::clickhouse::ClickHouseStore::connect(cfg.settings()).await?;
                let applied = store.migrate().await?;
                if applied.is_empty() {
                    println!("database {} is up to date", cfg.database);
                } else {
                    println!("applied to {}: {}", cfg.database, applied.join(", "));
                }
                anyhow::Ok(())
            })
        }
        Command::SimulateProvider(args) => {
            init_logging(&settings);
            runtime()?.block_on(planfeed::simulator::cli::run(args))
        }
    }
}

/// The main runtime: it answers searches, so its threads are watched by the ingestion threads'
/// CPU controller (`planfeed::cpu::share`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(target_os = "linux")]
    builder.on_thread_start(planfeed::cpu::watch_search_thread).on_thread_stop(planfeed::cpu::unwatch_thread);
    builder.enable_all().build().context("cannot start the async runtime")
}

/// Installs the subscriber; the returned setter lets a configuration reload change the level.
fn init_logging(settings: &Settings) -> LogLevelSetter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

    let filter = EnvFilter::try_new(&settings.log.level).unwrap_or_else(|_| "info".into());
    let (filter, handle) = reload::Layer::new(filter);
    let output = match settings.log.format {
        LogFormat::Json => fmt::layer().json().boxed(),
        // Colours only for a terminal: log files and shippers get plain text.
        LogFormat::Text => fmt::layer().with_ansi(std::io::stdout().is_terminal()).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(output).init();
    Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log.level {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// `planfeed serve`. Signals are handled before anything else is done: `SIGHUP` (a reload, whose
/// default action would end the process) is ignored from the first instruction, then kept by its
/// handler until the service runs and reloads; `SIGTERM` and `SIGINT` are caught before the
/// configuration is even read.
fn serve_main(config_dir: PathBuf) -> anyhow::Result<()> {
    // SAFETY: setting a signal's disposition to "ignore" has no handler to be unsafe in; no other
    // thread exists yet.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let runtime = runtime()?;
    let signals = {
        let _entered = runtime.enter();
        Signals::new().context("cannot handle signals")?
    };
    let settings = Settings::load(&config_dir)?;
    let log_level = init_logging(&settings);
    runtime.block_on(serve(settings, config_dir, log_level, signals))
}

/// The signals `serve` acts on, each caught from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// The next `SIGTERM` or `SIGINT`: its name and the exit status of a process it ends at once.
async fn stop_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> (&'static str, i32) {
    tokio::select! {
        _ = term.recv() => ("SIGTERM", 128 + libc::SIGTERM),
        _ = int.recv() => ("SIGINT", 128 + libc::SIGINT),
    }
}

async fn serve(
    settings: Settings,
    config_dir: PathBuf,
    log_level: LogLevelSetter,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals { mut term, mut int, hup } = signals;
    let service = tokio::select! {
        started = Service::start(settings) => started?,
        (signal, _) = stop_signal(&mut term, &mut int) => {
            tracing::info!(signal, "stopped before start-up finished");
            return Ok(());
        }
    };
    let reloader = service.reloader();
    reloader.set_log_level_setter(log_level);
    let watch = planfeed::reload::watch_with(reloader.clone(), config_dir, hup);
    let (signal, _) = stop_signal(&mut term, &mut int).await;
    drop(watch);
    // As the last reload left it.
    let deadline = reloader.current().server.shutdown_timeout;
    tracing::info!(
        signal,
        deadline_ms = deadline.as_millis() as u64,
        "shutting down: draining the pipeline and finishing in-flight requests; a second signal exits at once"
    );
    let counters = service.counters.clone();
    tokio::select! {
        completed = service.shutdown_within(deadline) => {
            if !completed {
                std::process::exit(1);
            }
        }
        (signal, status) = stop_signal(&mut term, &mut int) => {
            tracing::warn!(signal, "second signal: exiting at once, without finishing the stop");
            std::process::exit(status);
        }
    }
    // Tests and operators compare this with the store: every accepted plan must be there.
    tracing::info!(plans_written = counters.plans_written.load(Ordering::Relaxed), "stopped");
    Ok(())
}
