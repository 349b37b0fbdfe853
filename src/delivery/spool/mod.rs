//! The durable spool: where the delivery layer puts what the store does not take, and where its
//! replayer takes it from, oldest first, once the store does — the way a log shipper's disk
//! buffer works. It survives a restart of planfeed: entries are replayed
//! on start.
//!
//! One SQLite file (WAL, `synchronous = FULL`: an append is fsync'd before [`Spool::append`]
//! returns, so nothing is acknowledged that is not on disk), one row per entry in insertion order.
//! The file is created on the first append only, so a service whose store never fails never
//! writes one. Its payload is bounded by `spool.max_bytes`: a full spool refuses appends
//! ([`SpoolError::Full`]), and the writer then holds its batch, which stops the download
//! (backpressure) instead of losing anything.
//!
//! The file is named after the store it feeds ([`Spool::file_for`]), so a spool is never replayed
//! into another store.
//!
//! A damaged spool never stops the service: a file that cannot be opened or read at start is moved
//! aside (kept beside it, renamed with the time), logged with both paths and counted in
//! `planfeed_spool_set_aside_total{what="file"}`, and a new spool starts. An entry that cannot be
//! decoded is moved into a side file of the same shape ([`Spool::set_aside`],
//! `{what="entry"}`), so nothing is deleted that an operator may want to read back.

pub mod codec;
mod entry;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::Notify;

pub use entry::Entry;

use crate::domain::{PlanKey, PlanState};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Appending would pass `spool.max_bytes`.
    #[error("spool full: {held} of {max} bytes held, entry of {entry} bytes refused")]
    Full { held: u64, max: u64, entry: u64 },
    /// The file cannot be created, written or read (disk full, permissions, I/O error).
    #[error("spool {path} unusable: {message}")]
    Io { path: String, message: String },
    /// An entry that cannot be decoded (a damaged file).
    #[error("spool entry {seq} unreadable: {message}")]
    Corrupt { seq: i64, message: String },
}

impl SpoolError {
    /// Stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SpoolError::Full { .. } => "full",
            SpoolError::Io { .. } => "io",
            SpoolError::Corrupt { .. } => "corrupt",
        }
    }
}

pub type SpoolResult<T> = Result<T, SpoolError>;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS entries (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  TEXT    NOT NULL,
    plans INTEGER NOT NULL,
    body  BLOB    NOT NULL
)";

pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    /// Opened on the first append, or at start when the file exists.
    conn: Mutex<Option<Connection>>,
    /// Payload bytes and entries held now.
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Plans held now (for metrics).
    plans: AtomicU64,
    /// Woken on every append, so the replayer sleeps while the spool is empty.
    appended: Notify,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).field("entries", &self.entries()).finish()
    }
}

impl Spool {
    /// The spool file in `dir` for the store at `location` (see [`crate::store::Store::location`]).
    pub fn file_for(dir: &Path, store_name: &str, location: &str) -> PathBuf {
        let digest = xxhash_rust::xxh3::xxh3_64(location.as_bytes());
        dir.join(format!("{store_name}-{digest:016x}.sqlite"))
    }

    /// Opens the spool at `path`, reading what an earlier run left; creates nothing yet. A file
    /// that cannot be opened or read is set aside and a new spool started: this fails only when
    /// even that cannot be done (the folder is not writable).
    pub fn open(path: PathBuf, max_bytes: u64) -> SpoolResult<Self> {
        let spool = Self {
            path,
            max_bytes,
            conn: Mutex::new(None),
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            plans: AtomicU64::new(0),
            appended: Notify::new(),
        };
        if spool.path.exists() {
            if let Err(e) = spool.read_existing() {
                let kept = spool.move_damaged_file()?;
                crate::metrics::record_spool_set_aside("file");
                tracing::error!(
                    path = %spool.path.display(), kept = %kept.display(), error = %e,
                    "spool file unreadable: moved aside, a new spool starts (its entries are not replayed)"
                );
            }
        }
        spool.report();
        Ok(spool)
    }

    /// Opens the file an earlier run left and counts what it holds.
    fn read_existing(&self) -> SpoolResult<()> {
        let conn = self.connect()?;
        let (entries, bytes, plans): (i64, i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(body)), 0), coalesce(sum(plans), 0) FROM entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.io(e))?;
        let ok: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(|e| self.io(e))?;
        if ok != "ok" {
            return Err(self.io(format!("integrity check: {ok}")));
        }
        self.entries.store(entries as u64, Ordering::Relaxed);
        self.bytes.store(bytes as u64, Ordering::Relaxed);
        self.plans.store(plans as u64, Ordering::Relaxed);
        *self.conn.lock() = Some(conn);
        if entries > 0 {
            tracing::info!(path = %self.path.display(), entries, bytes, plans, "spool holds entries from an earlier run: replaying");
        }
        Ok(())
    }

    /// Renames the spool file (and its WAL and shared-memory files) to `<name>.damaged-<time>`;
    /// returns the new path of the main file.
    fn move_damaged_file(&self) -> SpoolResult<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let kept = PathBuf::from(format!("{}.damaged-{stamp}", self.path.display()));
        std::fs::rename(&self.path, &kept)
            .map_err(|e| self.io(format!("cannot move the damaged file aside: {e}")))?;
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", self.path.display()));
            if side.exists() {
                let _ = std::fs::rename(&side, format!("{}{suffix}", kept.display()));
            }
        }
        Ok(kept)
    }

    /// The file where entries that cannot be decoded are kept.
    pub fn set_aside_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.set-aside", self.path.display()))
    }

    /// Moves entry `seq`, as it is stored, into [`Spool::set_aside_path`] and removes it here.
    pub async fn set_aside(self: &Arc<Self>, seq: i64) -> SpoolResult<()> {
        let me = self.clone();
        blocking(move || me.set_aside_blocking(seq)).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries waiting. While any does, new batches queue behind them (strict order).
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn plans(&self) -> u64 {
        self.plans.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends `entry` durably (fsync'd on return). Blocking work runs off the runtime's threads.
    pub async fn append(self: &Arc<Self>, entry: Arc<Entry>) -> SpoolResult<()> {
        let me = self.clone();
        blocking(move || me.append_blocking(&entry)).await?;
        self.appended.notify_one();
        Ok(())
    }

    /// The oldest entry, if any.
    pub async fn first(self: &Arc<Self>) -> SpoolResult<Option<(i64, Entry)>> {
        let me = self.clone();
        blocking(move || me.first_blocking()).await
    }

    /// Removes entry `seq` (delivered, or dropped for good).
    pub async fn remove(self: &Arc<Self>, seq: i64) -> SpoolResult<()> {
        let me = self.clone();
        blocking(move || me.remove_blocking(seq)).await
    }

    /// Waits until something is appended (returns at once if an append happened since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// The writer's bookkeeping for every spooled plan (the newest version of each key), so a
    /// restarted writer counts them as pending: an unchanged re-observation is not written twice.
    pub async fn plan_states(self: &Arc<Self>) -> SpoolResult<Vec<(PlanKey, PlanState)>> {
        let me = self.clone();
        blocking(move || me.plan_states_blocking()).await
    }

    fn connect(&self) -> SpoolResult<Connection> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| self.io(e))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.io(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| self.io(e))?;
        let _: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| self.io(e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| self.io(e))?;
        conn.execute(SCHEMA, []).map_err(|e| self.io(e))?;
        Ok(conn)
    }

    fn with_conn<T>(
        &self,
        create: bool,
        f: impl FnOnce(&Connection) -> SpoolResult<T>,
    ) -> SpoolResult<Option<T>> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            if !create {
                return Ok(None);
            }
            *guard = Some(self.connect()?);
        }
        f(guard.as_ref().expect("connection opened above")).map(Some)
    }

    fn append_blocking(&self, entry: &Entry) -> SpoolResult<()> {
        let (kind, body) = codec::encode(entry).map_err(|e| self.io(e))?;
        let len = body.len() as u64;
        let held = self.bytes.load(Ordering::Relaxed);
        if held + len > self.max_bytes {
            return Err(SpoolError::Full { held, max: self.max_bytes, entry: len });
        }
        let plans = entry.plans() as u64;
        self.with_conn(true, |conn| {
            conn.execute(
                "INSERT INTO entries (kind, plans, body) VALUES (?1, ?2, ?3)",
                params![kind, plans as i64, body],
            )
            .map_err(|e| self.io(e))
        })?;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        self.plans.fetch_add(plans, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Release);
        self.report();
        Ok(())
    }

    fn first_blocking(&self) -> SpoolResult<Option<(i64, Entry)>> {
        let row = self.with_conn(false, |conn| {
            conn.query_row("SELECT seq, kind, body FROM entries ORDER BY seq LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .optional()
            .map_err(|e| self.io(e))
        })?;
        let Some((seq, kind, body)) = row.flatten() else { return Ok(None) };
        let entry = codec::decode(&kind, &body).map_err(|message| SpoolError::Corrupt { seq, message })?;
        Ok(Some((seq, entry)))
    }

    fn set_aside_blocking(&self, seq: i64) -> SpoolResult<()> {
        let side = self.set_aside_path();
        self.with_conn(false, |conn| {
            conn.execute("ATTACH DATABASE ?1 AS aside", [side.display().to_string()]).map_err(|e| self.io(e))?;
            let copied = conn
                .execute_batch(&SCHEMA.replace("TABLE IF NOT EXISTS entries", "TABLE IF NOT EXISTS aside.entries"))
                .and_then(|()| {
                    conn.execute(
                        "INSERT INTO aside.entries (kind, plans, body) SELECT kind, plans, body FROM entries WHERE seq = ?1",
                        [seq],
                    )
                });
            let detached = conn.execute("DETACH DATABASE aside", []);
            copied.map_err(|e| self.io(e))?;
            detached.map_err(|e| self.io(e))?;
            Ok(())
        })?;
        crate::metrics::record_spool_set_aside("entry");
        tracing::error!(seq, kept = %side.display(), "undecodable spool entry moved aside");
        self.remove_blocking(seq)
    }

    fn remove_blocking(&self, seq: i64) -> SpoolResult<()> {
        let removed = self.with_conn(false, |conn| {
            conn.query_row("DELETE FROM entries WHERE seq = ?1 RETURNING length(body), plans", [seq], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(|e| self.io(e))
        })?;
        if let Some((len, plans)) = removed.flatten() {
            self.bytes.fetch_sub(len as u64, Ordering::Relaxed);
            self.plans.fetch_sub(plans as u64, Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Release);
            self.report();
        }
        Ok(())
    }

    fn plan_states_blocking(&self) -> SpoolResult<Vec<(PlanKey, PlanState)>> {
        let bodies = self.with_conn(false, |conn| {
            let mut stmt = conn
                .prepare("SELECT seq, body FROM entries WHERE kind = ?1 ORDER BY seq")
                .map_err(|e| self.io(e))?;
            let rows = stmt
                .query_map([codec::KIND_BATCH], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .map_err(|e| self.io(e))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.io(e))
        })?;
        let mut states = std::collections::HashMap::<PlanKey, PlanState>::new();
        for (seq, body) in bodies.unwrap_or_default() {
            // The replayer sets an undecodable entry aside when it reaches it.
            let Ok(Entry::Batch { plans, .. }) = codec::decode(codec::KIND_BATCH, &body) else {
                tracing::warn!(seq, "spool entry unreadable: not counted as pending");
                continue;
            };
            for p in plans {
                let state = PlanState {
                    hash: p.hash,
                    event_date: p.event_date,
                    version: p.version,
                    ever_online: p.ever_online,
                };
                match states.get(&p.plan.key) {
                    Some(s) if s.version > p.version => {}
                    _ => {
                        states.insert(p.plan.key, state);
                    }
                }
            }
        }
        Ok(states.into_iter().collect())
    }

    fn report(&self) {
        crate::metrics::record_spool(self.entries(), self.plans(), self.bytes(), self.max_bytes);
    }

    fn io(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Io { path: self.path.display().to_string(), message: e.to_string() }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> SpoolResult<T> + Send + 'static) -> SpoolResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SpoolError::Io { path: String::new(), message: format!("spool task failed: {e}") })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FetchOutcome, FetchRecord, Plan, StoredPlan, Zone};
    use chrono::NaiveDateTime;

    fn plan(plan_id: u64, version: u64) -> StoredPlan {
        let dt = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
        let plan = Plan {
            key: PlanKey::new("p", 1, plan_id),
            title: "Title \"quoted\" ñ".into(),
            online: true,
            organizer_company_id: None,
            start: dt("2030-05-01T20:00:00"),
            end: dt("2030-05-01T22:00:00"),
            sell_from: Some(dt("2030-01-01T00:00:00")),
            sell_to: None,
            sold_out: false,
            zones: vec![Zone {
                zone_id: 3,
                name: "Pit".into(),
                capacity: 0,
                price: "20.50".parse().unwrap(),
                numbered: true,
            }],
        };
        StoredPlan::new(plan, chrono_tz::UTC, false, version)
    }

    /// The oldest entry, removed from the spool.
    async fn take_first(spool: &Arc<Spool>) -> Entry {
        let (seq, entry) = spool.first().await.unwrap().unwrap();
        spool.remove(seq).await.unwrap();
        entry
    }

    #[tokio::test]
    async fn entries_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let spool = Arc::new(Spool::open(path.clone(), 1 << 20).unwrap());
        assert!(!path.exists(), "nothing is created before the first append");
        assert_eq!(spool.first().await.unwrap(), None);
        let batch = Entry::Batch {
            plans: vec![plan(1, 10), plan(2, 10)],
            marks: vec![(PlanKey::new("p", 1, 9), plan(9, 1).event_date)],
        };
        let fetch = Entry::Fetch(FetchRecord {
            provider: "p".into(),
            plans_seen: 2,
            error: Some("x".into()),
            outcome: FetchOutcome::BadFeed,
            plans_spooled: Some(2),
            plans_dropped: Some(0),
            ..Default::default()
        });
        spool.append(Arc::new(batch.clone())).await.unwrap();
        spool.append(Arc::new(fetch.clone())).await.unwrap();
        spool.append(Arc::new(Entry::Batch { plans: vec![plan(1, 5)], marks: vec![] })).await.unwrap();
        assert_eq!((spool.entries(), spool.plans()), (3, 3));
        drop(spool);

        let spool = Arc::new(Spool::open(path, 1 << 20).unwrap());
        assert_eq!((spool.entries(), spool.plans()), (3, 3));
        let states: std::collections::HashMap<_, _> =
            spool.plan_states().await.unwrap().into_iter().collect();
        assert_eq!(states[&PlanKey::new("p", 1, 1)].version, 10, "the newest version of a key wins");
        assert_eq!(states.len(), 2);
        assert_eq!(take_first(&spool).await, batch);
        assert_eq!(take_first(&spool).await, fetch);
        assert_eq!(spool.entries(), 1);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_frees_space_on_remove() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Arc::new(Entry::Batch { plans: vec![plan(1, 1)], marks: vec![] });
        let one = codec::encode(&entry).unwrap().1.len() as u64;
        let spool = Arc::new(Spool::open(dir.path().join("s.sqlite"), one * 3 / 2).unwrap());
        spool.append(entry.clone()).await.unwrap();
        assert_eq!(spool.bytes(), one);
        let err = spool.append(entry.clone()).await.unwrap_err();
        assert!(matches!(err, SpoolError::Full { held, .. } if held == one), "{err}");
        assert_eq!(err.label(), "full");
        let (seq, _) = spool.first().await.unwrap().unwrap();
        spool.remove(seq).await.unwrap();
        assert_eq!(spool.bytes(), 0);
        spool.append(entry).await.unwrap();
    }

    #[tokio::test]
    async fn an_unwritable_place_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let spool = Arc::new(Spool::open(file.join("s.sqlite"), 1 << 20).unwrap());
        let err = spool
            .append(Arc::new(Entry::Batch { plans: vec![plan(1, 1)], marks: vec![] }))
            .await
            .unwrap_err();
        assert_eq!(err.label(), "io", "{err}");
    }

    /// A spool file an earlier build left (`tests/fixtures/spool/`, written when the fetch record
    /// still had its own mirror type in the codec) is read back entry for entry: the on-disk format
    /// is the spool's promise across upgrades, whatever the codec's types.
    #[tokio::test]
    async fn a_spool_file_from_an_earlier_build_is_read_back() {
        let fixture =
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool/before-serde-fetch-record.sqlite");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        std::fs::copy(fixture, &path).unwrap();
        let spool = Arc::new(Spool::open(path, 1 << 20).unwrap());
        assert_eq!((spool.entries(), spool.plans()), (2, 2));
        let batch = Entry::Batch {
            plans: vec![plan(1, 10), plan(2, 11)],
            marks: vec![(PlanKey::new("p", 1, 9), plan(9, 1).event_date)],
        };
        let fetch = Entry::Fetch(FetchRecord {
            provider: "fever".into(),
            started_at: chrono::DateTime::parse_from_rfc3339("2026-11-30T12:34:56.789Z").unwrap().to_utc(),
            duration_ms: 1234,
            http_status: Some(503),
            bytes: 56789,
            plans_seen: 40,
            plans_written: 30,
            plans_unchanged: 8,
            plans_skipped: 2,
            error: Some("provider answered HTTP 503 Service Unavailable (after 2 retries)".into()),
            // Not in the file: derived from the error.
            outcome: FetchOutcome::HttpError,
            plans_spooled: None,
            plans_dropped: None,
        });
        assert_eq!(take_first(&spool).await, batch);
        assert_eq!(take_first(&spool).await, fetch);
        assert_eq!(spool.first().await.unwrap(), None);
    }
}
