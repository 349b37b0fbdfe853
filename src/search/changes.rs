//! The store's change feed, for processes whose own writer does not announce the days written
//! (role `api`): every interval, the days changed since the last poll are announced as the same
//! event the delivery layer publishes, which the cache follows like its own writer's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use tokio::sync::watch;

use super::counters::SearchCounters;
use super::directory::Directory;
use crate::delivery::Events;
use crate::store::{DayChange, SharedStore, StoreError};

/// Polls the store's change feed ([`ChangeFeed::follow`]).
#[derive(Clone)]
pub(super) struct ChangeFeed {
    store: SharedStore,
    /// Read again after the first poll takes the store's marker.
    directory: Arc<Directory>,
    counters: Arc<SearchCounters>,
}

impl ChangeFeed {
    pub(super) fn new(store: SharedStore, directory: Arc<Directory>, counters: Arc<SearchCounters>) -> Self {
        Self { store, directory, counters }
    }

    /// Announces on `written`, every `interval` until `shutdown` turns true, the days changed
    /// since the previous poll; ends at once when the store keeps no change feed.
    pub(super) async fn follow(
        self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
        written: Events,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut marker: Option<i64> = None;
        // The days of the last poll with their markers: a store that returns an overlap window
        // before the marker returns them again, and they are not invalidated twice.
        let mut seen: HashMap<NaiveDate, i64> = HashMap::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            self.counters.change_polls.fetch_add(1, Ordering::Relaxed);
            let result = self.poll(&mut marker).await;
            let changes = match result {
                Ok(changes) => changes,
                Err(e) if !e.is_transient() && marker.is_none() => {
                    tracing::warn!(error = %e, "no change feed: cached days follow other processes' writes by TTL only");
                    return;
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "change feed poll failed; retrying every interval");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                tracing::info!("change feed polls answer again");
            }
            let Some(since) = marker else { continue };
            let days: Vec<NaiveDate> = changes
                .iter()
                .filter(|c| c.marker > since || seen.get(&c.day) != Some(&c.marker))
                .map(|c| c.day)
                .collect();
            marker = Some(changes.iter().map(|c| c.marker).max().unwrap_or(since).max(since));
            seen = changes.iter().map(|c| (c.day, c.marker)).collect();
            if !days.is_empty() {
                self.counters.changed_days.fetch_add(days.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    days = days.len(),
                    marker = marker.unwrap_or(since),
                    "days changed by another process"
                );
                written.publish(days).await;
            }
        }
    }

    /// One poll of the change feed: the first takes the store's marker (and reads the directory,
    /// which a write made before the marker may have missed), the next ones the days changed since.
    async fn poll(&self, marker: &mut Option<i64>) -> Result<Vec<DayChange>, StoreError> {
        match *marker {
            None => {
                let asked = Instant::now();
                match self.store.change_marker().await {
                    Ok(m) => {
                        *marker = Some(m);
                        // A directory read before the marker may miss a write made in between.
                        let _ = self.directory.load(Some(asked)).await;
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            }
            Some(since) => self.store.days_changed_since(since).await,
        }
    }
}
