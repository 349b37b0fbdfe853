//! The embedded store's connections: one writer behind a mutex (SQLite admits one writer at a
//! time anyway) and a few readers, so searches proceed while a batch is being written (under WAL a
//! reader sees the last committed batch and never waits for the writer). rusqlite calls block, so
//! every read runs on tokio's blocking pool and every write on ingestion's low-priority threads
//! ([`crate::cpu`]), never on the runtime's threads.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, OpenFlags};

use super::error::SqlContext;
use crate::store::{StoreError, StoreResult};

/// Reader connections: searches of different days run in parallel up to this many.
const READERS: usize = 4;
/// How long a statement waits for a lock held by another connection or process before giving up
/// with `StoreError::Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size of new database files, in bytes.
const PAGE_SIZE: i64 = 16 * 1024;
/// WAL pages (256 MiB) past which the writer checkpoints by itself: only when the background
/// checkpointer falls that far behind.
const WRITER_CHECKPOINT_PAGES: i64 = 16 * 1024;
/// Size the WAL file is cut back to after a checkpoint emptied it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// The writer's page cache, in KiB (SQLite's `-N` form): the upper levels of the table and of its
/// indexes stay in memory while a batch's rows land on pages all over `plans_by_day` (rows arrive
/// in feed order, the index is in day order); 2 MiB (SQLite's default) read most of them back
/// from the file for every row.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// The writer and the readers of one database file.
pub(super) struct Pool {
    pub(super) writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl Pool {
    /// Opens the readers beside an already opened (and migrated) writer.
    pub(super) fn new(path: &Path, writer: Connection) -> StoreResult<Self> {
        let readers = (0..READERS)
            .map(|_| open_connection(path, true).map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Self { writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0) })
    }

    /// A free reader if there is one, else waits for the next one in turn.
    pub(super) fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        (0..n)
            .find_map(|i| self.readers[(start + i) % n].try_lock())
            .unwrap_or_else(|| self.readers[start % n].lock())
    }
}

/// Runs `f` on tokio's blocking pool, below the workers' priority (a read for a search is a few
/// milliseconds of CPU at least: [`crate::cpu::lower_for_answers`]).
pub(super) async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    let lowered = move || {
        crate::cpu::lower_for_answers();
        f()
    };
    tokio::task::spawn_blocking(lowered).await.map_err(|e| {
        if e.is_cancelled() {
            StoreError::Unavailable("sqlite task cancelled: runtime shutting down".into())
        } else {
            StoreError::Permanent(format!("sqlite task panicked: {e}"))
        }
    })?
}

pub(super) fn open_connection(path: &Path, reader: bool) -> StoreResult<Connection> {
    let what = || format!("opening {}", path.display());
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).ctx(what)?;
    conn.busy_timeout(BUSY_TIMEOUT).ctx(what)?;
    conn.set_prepared_statement_cache_capacity(32);
    if reader {
        conn.pragma_update(None, "query_only", true).ctx(what)?;
    } else {
        // A plan row carries its zones' JSON (16 KB for 200 zones): 16 KiB pages hold most rows
        // without overflow chains, which writes a feed of such plans a quarter faster than the
        // default 4 KiB. Only takes effect when the file is new (before the first table).
        conn.pragma_update(None, "page_size", PAGE_SIZE).ctx(what)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES).ctx(what)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT).ctx(what)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB).ctx(what)?;
        // The statement journal of an upsert (the pages one row's statement changed, to undo it
        // alone) in memory: as a temporary file it wrote every page a row touched once more.
        conn.pragma_update(None, "temp_store", "MEMORY").ctx(what)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).ctx(what)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Permanent(format!(
                "{} refuses WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
    }
    // A commit is on disk when it returns: the writer then counts its plans as written and the
    // spool lets go of the entries it delivered, so a commit lost to a power cut or a kernel crash
    // (WAL with `NORMAL` keeps only an application crash's) would lose plans for good. One fsync of
    // the WAL per batch; the checkpoint syncs as before.
    conn.pragma_update(None, "synchronous", "FULL").ctx(what)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_syncs_every_commit_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans.db");
        let writer = open_connection(&path, false).unwrap();
        let int = |pragma: &str| writer.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0));
        // 2 is FULL: the WAL is synced at every commit, not only before a checkpoint (NORMAL, 1).
        assert_eq!(int("synchronous").unwrap(), 2);
        let mode: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(int("page_size").unwrap(), PAGE_SIZE);
    }
}
