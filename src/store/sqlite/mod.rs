//! Embedded store: one SQLite file (WAL), the default when no ClickHouse is configured.
//!
//! The store keeps one row per plan key holding its latest version, so a plan whose start date moved
//! simply changes its `event_date` and is found only on its new day. Event days are integers (days
//! since 1970-01-01), so every valid day from year 1 to the UTC day after 9999-12-31 orders as a
//! number.
//!
//! One file per job: `schema` (migrations), `pool` (the writer, the readers and the blocking pool),
//! `checkpoint` (the background WAL checkpoint), `write` and `read` (the statements), `rows` (the
//! column codec), `json` (the zones column), `error` (transient or permanent). This file ties them
//! to the [`Store`] trait.

mod checkpoint;
mod error;
mod json;
mod pool;
mod read;
mod rows;
mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::Connection;

use self::checkpoint::Checkpointer;
use self::pool::{blocking, open_connection, Pool};
use super::{DayChange, DaySize, Store, StoreError, StoreResult};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState, StoredPlan};

/// The embedded store. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// First: fields drop in order, and it must close before the other connections.
    checkpointer: Checkpointer,
    path: PathBuf,
    pool: Pool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file, creating its parent folders, and brings the schema up
    /// to date. Blocking: call it at start-up or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Unavailable(format!("creating folder {}: {e}", parent.display())))?;
        }
        configure_library();
        let mut writer = open_connection(path, false)?;
        schema::migrate(&mut writer, path)?;
        let pool = Pool::new(path, writer)?;
        let checkpointer = Checkpointer::spawn(path)?;
        Ok(SqliteStore { inner: Arc::new(Inner { path: path.to_owned(), pool, checkpointer }) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SQLite's `EXPLAIN QUERY PLAN` details for the statement `plans_by_day(from, to)` runs, so
    /// tests and operators can check that searches read the index and never scan the table.
    pub async fn explain_plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<String>> {
        self.read(move |conn| read::explain_plans_by_day(conn, from, to)).await
    }

    /// Runs a write on ingestion's low-priority threads ([`crate::cpu`]): encoding and writing a
    /// batch (a 61 MB feed is 600k zone rows a round) is seconds of CPU, which on tokio's blocking
    /// pool ran at the priority of the threads answering searches and beside the parsers, so
    /// ingestion took both cores of a 2-core machine. On the pool it shares the parsers' threads
    /// (by default every core but one) and yields the CPU to searches. Reads stay on the blocking
    /// pool: they are searches.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        crate::cpu::pool().run(move || f(&mut inner.pool.writer.lock())).await.map_err(|e| match e {
            crate::cpu::CpuError::Panicked(m) => StoreError::Permanent(format!("sqlite write panicked: {m}")),
            crate::cpu::CpuError::Closed => StoreError::Unavailable(format!("sqlite write not run: {e}")),
        })?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&inner.pool.reader())).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn location(&self) -> String {
        self.inner.path.display().to_string()
    }

    async fn write_plans(&self, plans: &[StoredPlan]) -> StoreResult<()> {
        if plans.is_empty() {
            return Ok(());
        }
        self.write_plans_shared(Arc::new(plans.to_vec())).await
    }

    async fn write_plans_shared(&self, plans: Arc<Vec<StoredPlan>>) -> StoreResult<()> {
        if plans.is_empty() {
            return Ok(());
        }
        // Rows are encoded (zones to JSON, dates to text) on the blocking thread, not here.
        self.write(move |conn| write::write_batch(conn, &plans)).await?;
        self.inner.checkpointer.nudge();
        Ok(())
    }

    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let days: Vec<NaiveDate> = keys.iter().map(|(_, d)| *d).collect();
        let keys: Vec<PlanKey> = keys.iter().map(|(k, _)| k.clone()).collect();
        self.write(move |conn| write::mark_ever_online(conn, &keys, days)).await
    }

    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        self.read(read::plan_states).await
    }

    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        if from > to {
            return Ok(Vec::new());
        }
        self.read(move |conn| read::plans_by_day(conn, from, to)).await
    }

    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        self.read(read::day_bounds).await
    }

    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        self.read(read::day_directory).await
    }

    async fn change_marker(&self) -> StoreResult<i64> {
        self.read(read::change_marker).await
    }

    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        self.read(move |conn| read::days_changed_since(conn, since)).await
    }

    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        let f = fetch.clone();
        self.write(move |conn| write::insert_fetch(conn, &f)).await
    }

    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| read::recent_fetches(conn, limit)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        use self::error::SqlContext;
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).ctx(|| "pinging the database")).await
    }
}

/// Sets SQLite up once, before the library starts: the binary calls it first thing, and opening a
/// store calls it too (too late once any connection was opened, the spool's included: SQLite then
/// refuses, harmlessly, and keeps its defaults). Returns whether the settings took effect:
/// - its allocations go to mimalloc, the binary's allocator, instead of glibc's malloc: each
///   upsert's statement journal allocates and frees, and glibc's `malloc`/`free` were 2.5 % of a
///   feed's ingestion;
/// - its allocation statistics are off: with them on, every allocation of every connection takes
///   one process-wide mutex (2 % more in `pthread_mutex_lock`). Nothing here reads them.
pub fn configure_library() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        use rusqlite::ffi;
        let methods = mimalloc_methods();
        // SAFETY: called before any connection of this process is opened (the first store's open),
        // from one thread (`OnceLock`); SQLite copies `methods` before the call returns.
        let rc = unsafe {
            let malloc =
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const ffi::sqlite3_mem_methods);
            let memstatus = ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0);
            malloc.max(memstatus)
        };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was started before planfeed set its allocator");
        }
        rc == ffi::SQLITE_OK
    })
}

/// SQLite's allocator: mimalloc (8-byte alignment or more, as SQLite needs).
fn mimalloc_methods() -> rusqlite::ffi::sqlite3_mem_methods {
    use libmimalloc_sys as mi;
    use std::os::raw::{c_int, c_void};
    unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
        // SAFETY: SQLite asks for a positive size.
        unsafe { mi::mi_malloc(n.max(0) as usize) }
    }
    unsafe extern "C" fn free(p: *mut c_void) {
        // SAFETY: `p` came from `malloc` or `realloc` here.
        unsafe { mi::mi_free(p) }
    }
    unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        // SAFETY: as above.
        unsafe { mi::mi_realloc(p, n.max(0) as usize) }
    }
    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        // SAFETY: as above; SQLite's allocations stay under 2 GiB.
        unsafe { mi::mi_usable_size(p) as c_int }
    }
    unsafe extern "C" fn roundup(n: c_int) -> c_int {
        // SAFETY: a pure function of the size.
        unsafe { mi::mi_good_size(n.max(0) as usize).min(c_int::MAX as usize) as c_int }
    }
    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        rusqlite::ffi::SQLITE_OK
    }
    unsafe extern "C" fn shutdown(_: *mut c_void) {}
    rusqlite::ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's name and nice value.
    fn thread_and_nice() -> (String, i32) {
        // SAFETY: reads the calling thread's own priority.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        (std::thread::current().name().unwrap_or_default().to_string(), nice)
    }

    #[tokio::test]
    async fn writes_run_on_ingestions_low_priority_threads_and_reads_at_the_answer_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plans.db")).unwrap();
        let (base_name, base_nice) = thread_and_nice();
        let (name, nice) = store.write(|_| Ok(thread_and_nice())).await.unwrap();
        assert!(name.starts_with("planfeed-ingest-"), "write ran on {name:?}");
        assert_eq!(nice, (base_nice + crate::cpu::pool().nice()).min(19));
        let (name, nice) = store.read(|_| Ok(thread_and_nice())).await.unwrap();
        assert!(!name.starts_with("planfeed-ingest-"), "read ran on {name:?} (test thread {base_name:?})");
        // A read for a search runs at the answer threads' priority, below the workers.
        assert_eq!(nice, (base_nice + crate::cpu::answers::NICE).min(19), "reads run below the workers");
    }
}
