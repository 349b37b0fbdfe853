//! `planfeed ingest --once`: one fetch through the whole pipeline, with a spinner on a terminal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{open_store, Service, ServiceError};
use crate::config::Settings;
use crate::delivery::WriterCounters;
use crate::domain::FetchRecord;

/// How long `ingest --once` waits for its store to answer before giving up.
const INGEST_ONCE_STORE_WAIT: Duration = Duration::from_secs(30);

/// `planfeed ingest --once`: runs the pipeline (no API) for one fetch of `url` (or the configured
/// provider): the scheduler asks for that one fetch, and the run ends when the writer announces
/// its record (every plan written, spooled or dropped). Returns that record.
pub async fn ingest_once(
    mut settings: Settings,
    url: Option<String>,
    provider: Option<String>,
    progress: bool,
) -> Result<FetchRecord, ServiceError> {
    let mut p = settings.effective_providers().remove(0);
    if let Some(url) = url {
        p.url = url;
    }
    if let Some(name) = provider {
        p.name = name;
    }
    p.validate().map_err(ServiceError::Invalid)?;
    settings.provider = p;
    settings.providers.clear();
    settings.role = crate::config::Role::Ingest;
    let store = open_store(&settings).await?;
    // A one-shot run has nothing to serve meanwhile: wait a while for the store, then say why not.
    let deadline = tokio::time::Instant::now() + INGEST_ONCE_STORE_WAIT;
    while let Err(e) = store.ping().await {
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::Store(e));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Service::launch(settings, store, None, Some(tx)).await?;
    let bar = progress.then(|| Progress::new(service.counters.clone()));
    let record = loop {
        tokio::select! {
            record = rx.recv() => break record,
            _ = tokio::time::sleep(Duration::from_millis(200)), if bar.is_some() => {
                bar.iter().for_each(Progress::update);
            }
        }
    };
    service.shutdown().await;
    let record =
        record.ok_or_else(|| ServiceError::Pipeline("the pipeline stopped before the fetch ended".into()))?;
    if let Some(bar) = bar {
        bar.finish(&record);
    }
    Ok(record)
}

/// The spinner `ingest --once` shows on a terminal.
struct Progress {
    bar: indicatif::ProgressBar,
    counters: Arc<WriterCounters>,
}

impl Progress {
    fn new(counters: Arc<WriterCounters>) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar, counters }
    }

    fn update(&self) {
        let c = &self.counters;
        self.bar.set_message(format!(
            "{} plans read, {} written, {} unchanged, {} skipped",
            c.plans_seen.load(Ordering::Relaxed),
            c.plans_written.load(Ordering::Relaxed),
            c.plans_unchanged.load(Ordering::Relaxed),
            c.plans_skipped.load(Ordering::Relaxed)
        ));
    }

    fn finish(self, record: &FetchRecord) {
        self.bar.finish_with_message(format!(
            "{} plans read, {} written, {} unchanged, {} skipped, {} bytes in {} ms",
            record.plans_seen,
            record.plans_written,
            record.plans_unchanged,
            record.plans_skipped,
            record.bytes,
            record.duration_ms
        ));
    }
}
