//! The `planfeed` command: parse the CLI, load the configuration, call into the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use planfeed::config::{LogFormat, Settings};
use planfeed::service::Service;

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
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config_dir)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { action: ConfigAction::Check } => {
            println!("{settings:#?}");
            println!("configuration is valid");
            Ok(())
        }
        Command::Serve => {
            init_logging(&settings);
            runtime()?.block_on(serve(settings))
        }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn init_logging(settings: &Settings) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&settings.log.level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(settings).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining the pipeline and finishing in-flight requests");
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
