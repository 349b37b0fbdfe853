//! Freshness: invalidations of the days written (this process's delivery layer, or the change feed of
//! other processes, announced as the same event), reloads.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use tokio::sync::watch;

use super::day::DayEntry;
use super::state::{DayInfo, Inner, RunLoad};
use crate::delivery::Events;
use crate::store::{DayChange, StoreError};

/// Reads of the same days an invalidation makes before it returns (a read that raced with a later
/// write is repeated; a store written faster than it is read is not chased forever).
pub(super) const RELOAD_ROUNDS: usize = 3;

/// The copies an invalidation is reloading: searches serve them meanwhile. Cleared on drop, so an
/// invalidation that is cancelled or gives up never leaves a copy served as if it were reloading.
pub(super) struct Reloading(Vec<Arc<DayEntry>>);

impl Reloading {
    pub(super) fn mark(entries: Vec<Arc<DayEntry>>) -> Self {
        for e in &entries {
            e.reloading.store(true, Ordering::Release);
        }
        Self(entries)
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        for e in &self.0 {
            e.reloading.store(false, Ordering::Release);
        }
    }
}

impl Inner {
    pub(super) async fn follow_changes(
        self: Arc<Self>,
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
            let result = self.poll_changes(&mut marker).await;
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
    async fn poll_changes(&self, marker: &mut Option<i64>) -> Result<Vec<DayChange>, StoreError> {
        match *marker {
            None => {
                let asked = Instant::now();
                match self.store.change_marker().await {
                    Ok(m) => {
                        *marker = Some(m);
                        // A directory read before the marker may miss a write made in between.
                        let _ = self.load_directory(Some(asked)).await;
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            }
            Some(since) => self.store.days_changed_since(since).await,
        }
    }

    pub(super) async fn invalidate(self: &Arc<Self>, days: &[NaiveDate]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut used = Vec::new();
        for day in days {
            if let Some(entry) = self.days.get(day).await {
                // Reloading before dirty: a search never finds a used copy dirty and not reloading.
                if entry.used.load(Ordering::Relaxed) && !self.store_down() {
                    entry.reloading.store(true, Ordering::Release);
                    used.push((*day, entry.clone()));
                }
                entry.dirty.store(true, Ordering::Release);
            }
        }
        if let Some(dir) = self.directory.write().as_mut() {
            for day in days {
                dir.days.entry(*day).or_insert(DayInfo::UNKNOWN);
            }
        }
        if !used.is_empty() {
            used.sort_unstable_by_key(|(d, _)| *d);
            self.reload(used).await;
        }
    }

    /// Reloads the `marked` days (ascending, cached, dirty and marked reloading) once each, joining
    /// reads already in flight,
    /// while searches keep serving their previous copies; returns once the new copies are cached,
    /// or at the store deadline (the reads go on, searches then wait for them as for any miss). A
    /// read that raced with a later write leaves its copy dirty: it is read again, up to
    /// [`RELOAD_ROUNDS`] times, so the copies cached on return hold every write before the call.
    pub(super) async fn reload(self: &Arc<Self>, marked: Vec<(NaiveDate, Arc<DayEntry>)>) {
        let deadline = Instant::now() + self.store_deadline();
        let days: Vec<NaiveDate> = marked.iter().map(|(d, _)| *d).collect();
        let mut entries = marked;
        for round in 0..RELOAD_ROUNDS {
            if round > 0 {
                entries.clear();
                for day in &days {
                    if let Some(e) = self.days.get(day).await.filter(|e| e.dirty.load(Ordering::Acquire)) {
                        entries.push((*day, e));
                    }
                }
            }
            if entries.is_empty() {
                return;
            }
            let reloading = Reloading::mark(entries.iter().map(|(_, e)| e.clone()).collect());
            self.counters.reloaded_days.fetch_add(entries.len() as u64, Ordering::Relaxed);
            let todo = self.runs_of(entries.iter().map(|(d, _)| *d));
            let mut loads: Vec<(u64, RunLoad)> = self.start_runs(&todo).into_values().collect();
            loads.sort_by_key(|(id, _)| *id);
            loads.dedup_by_key(|(id, _)| *id);
            let all = futures::future::join_all(loads.into_iter().map(|(_, l)| l));
            let done = self.by_deadline(all, deadline).await;
            drop(reloading);
            if done.is_none_or(|results| results.iter().any(Result::is_err)) {
                return;
            }
        }
    }
}
