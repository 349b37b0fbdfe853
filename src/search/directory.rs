//! The day directory: which event days hold plans, loaded once from the store and kept current.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use futures::future::FutureExt;

use super::day::DayEntry;
use super::state::{DayInfo, Directory, DirectoryLoad, Inner};
use crate::store::StoreError;

impl Inner {
    /// `days` (ascending) with what the directory knows of each and whether it continues the run
    /// of the one before (the directory lists no day between them).
    pub(super) fn runs_of(&self, days: impl Iterator<Item = NaiveDate>) -> Vec<(NaiveDate, DayInfo, bool)> {
        let guard = self.directory.read();
        let mut out: Vec<(NaiveDate, DayInfo, bool)> = Vec::new();
        for day in days {
            let (info, before) = match guard.as_ref() {
                Some(dir) => (
                    dir.days.get(&day).copied().unwrap_or(DayInfo::UNKNOWN),
                    dir.days.range(..day).next_back().map(|(d, _)| *d),
                ),
                None => (DayInfo::UNKNOWN, None),
            };
            let continues = out.last().is_some_and(|(prev, _, _)| Some(*prev) == before);
            out.push((day, info, continues));
        }
        out
    }

    /// The directory's non-empty days between `first` and `last` (open ends: every day), with when
    /// the directory was read and whether it is a stale copy.
    pub(super) async fn days_in(
        self: &Arc<Self>,
        first: Option<NaiveDate>,
        last: Option<NaiveDate>,
        deadline: Instant,
    ) -> Result<(Vec<(NaiveDate, DayInfo)>, Instant, bool), StoreError> {
        let stale = self.directory_days(deadline).await?;
        let lo = first.map_or(Bound::Unbounded, Bound::Included);
        let hi = last.map_or(Bound::Unbounded, Bound::Included);
        let guard = self.directory.read();
        let dir = guard.as_ref().ok_or_else(|| StoreError::Unavailable("day directory vanished".into()))?;
        let days = dir.days.range((lo, hi)).map(|(d, i)| (*d, *i)).collect();
        Ok((days, dir.loaded_at, stale))
    }

    /// Makes sure a directory is loaded: a fresh one is used as is (refreshed in the background past
    /// half its TTL); an expired one is read again, or served stale when the store is down or does
    /// not answer by `deadline`. Returns whether the directory in place is a stale copy.
    pub(super) async fn directory_days(self: &Arc<Self>, deadline: Instant) -> Result<bool, StoreError> {
        let ttl = self.ttl();
        let loaded_at = self.directory.read().as_ref().map(|d| d.loaded_at);
        if let Some(at) = loaded_at {
            let age = at.elapsed();
            if age < ttl {
                if age >= ttl / 2 && !self.directory_refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.load_directory(Some(at)).await;
                        me.directory_refreshing.store(false, Ordering::Release);
                    });
                }
                return Ok(false);
            }
            if self.store_down() {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let load = self.directory_task();
        if loaded_at.is_none() {
            return self.answer_or_hung(load, deadline).await;
        }
        match self.by_deadline(load, deadline).await {
            Some(result) => result,
            None => {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// The directory load under way, or a new one in a task of its own: a search waits for it
    /// only until its deadline, and the load (and its lock) never holds a search longer.
    pub(super) fn directory_task(self: &Arc<Self>) -> DirectoryLoad {
        let mut task = self.directory_task.lock();
        if let Some((running, load)) = task.as_ref() {
            if !running.is_finished() {
                return load.clone();
            }
        }
        let me = self.clone();
        let handle = tokio::spawn(async move { me.load_directory(None).await });
        let running = handle.abort_handle();
        let load: DirectoryLoad = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("day directory task failed: {e}"))))
        }
        .boxed()
        .shared();
        *task = Some((running, load.clone()));
        load
    }

    /// Reads the directory unless another caller did meanwhile (a load newer than `older_than`, or
    /// any fresh one). On failure the last copy is served when there is one.
    pub(super) async fn load_directory(&self, older_than: Option<Instant>) -> Result<bool, StoreError> {
        let _single = self.directory_load.lock().await;
        if let Some(at) = self.directory.read().as_ref().map(|d| d.loaded_at) {
            let replaced = older_than.is_some_and(|t| at > t);
            if replaced || (older_than.is_none() && at.elapsed() < self.ttl()) {
                return Ok(false);
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.store.day_directory().await {
            Ok(sizes) => {
                self.store_answered();
                let mut days: BTreeMap<NaiveDate, DayInfo> =
                    sizes.iter().map(|s| (s.day, DayInfo::of(s))).collect();
                let mut guard = self.directory.write();
                if self.epoch.load(Ordering::Acquire) != epoch {
                    // An invalidation raced with the read: keep every day the old copy knew (a day
                    // listed in excess costs one empty read, a day missing would hide plans).
                    if let Some(old) = guard.as_ref() {
                        for (d, i) in &old.days {
                            days.entry(*d).or_insert(*i);
                        }
                    }
                }
                tracing::debug!(days = days.len(), "day directory loaded");
                *guard = Some(Directory { days, loaded_at: Instant::now() });
                Ok(false)
            }
            Err(e) => {
                self.store_failed(&e);
                if self.directory.read().is_some() {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// What a read of `from..=to` showed: exact sizes of the days it found, and (unless a write
    /// raced with it) no listing for the days it found empty.
    pub(super) fn update_directory(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        entries: &BTreeMap<NaiveDate, Arc<DayEntry>>,
        raced: bool,
    ) {
        let mut guard = self.directory.write();
        let Some(dir) = guard.as_mut() else { return };
        if !raced {
            let empty: Vec<NaiveDate> =
                dir.days.range(from..=to).map(|(d, _)| *d).filter(|d| !entries.contains_key(d)).collect();
            for d in empty {
                dir.days.remove(&d);
            }
        }
        for (day, entry) in entries {
            dir.days.insert(
                *day,
                DayInfo { plans: entry.spans.len() as u64, bytes: entry.joined.len() as u64 + 1 },
            );
        }
    }
}
