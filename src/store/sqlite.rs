//! Embedded store: one SQLite file (WAL), the default when no ClickHouse is configured.
//!
//! rusqlite calls block, so every call runs on tokio's blocking pool, never on the runtime threads.
//! One writer connection sits behind a mutex (SQLite admits one writer at a time anyway); a few
//! reader connections let searches proceed while a batch is being written: under WAL a reader sees
//! the last committed batch and never waits for the writer.
//!
//! The store keeps one row per plan key holding its latest version, so a plan whose start date moved
//! simply changes its `event_date` and is found only on its new day. Searches read the partial,
//! covering index `plans_by_day`, which holds only ever-online rows, in `(event_date, start_utc, id)`
//! order: a one-day search is a single index range read, already in the answer's order. Event days
//! are integers (days since 1970-01-01), so every valid day from year 1 to the UTC day after
//! 9999-12-31 orders as a number.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use parking_lot::{Mutex, MutexGuard};
use rusqlite::types::Type;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row, TransactionBehavior};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{day_number, day_of_number, DayChange, DaySize, Store, StoreError, StoreResult};
use crate::domain::{DecimalText, EventRow, FetchRecord, PlanKey, PlanState, StoredPlan, Zone};

/// Reader connections: searches of different days run in parallel up to this many.
const READERS: usize = 4;
/// How long a statement waits for a lock held by another connection or process before giving up
/// with `StoreError::Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Provider-local date-times as text: `YYYY-MM-DDTHH:MM:SS` (a fraction only if the feed had one).
const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

/// Schema migrations; `PRAGMA user_version` is the number applied. Append only, never edit one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE plans (
    provider             TEXT    NOT NULL,
    base_plan_id         INTEGER NOT NULL,
    plan_id              INTEGER NOT NULL,
    id                   TEXT    NOT NULL,             -- public UUID v5 of the key, hyphenated
    title                TEXT    NOT NULL,
    online               INTEGER NOT NULL,             -- the latest observation's sell mode
    ever_online          INTEGER NOT NULL,             -- sticky: max of every observation
    organizer_company_id INTEGER,
    start_local          TEXT    NOT NULL,             -- provider-local, YYYY-MM-DDTHH:MM:SS
    end_local            TEXT    NOT NULL,
    start_utc            INTEGER NOT NULL,             -- unix milliseconds
    end_utc              INTEGER NOT NULL,
    event_date           TEXT    NOT NULL,             -- UTC date of start_utc (an integer from migration 2)
    sell_from            TEXT,
    sell_to              TEXT,
    sold_out             INTEGER NOT NULL,
    min_price            TEXT,                         -- exact decimal text, scale kept ("20.00")
    max_price            TEXT,
    zones                TEXT    NOT NULL,             -- JSON array of the zones
    version              INTEGER NOT NULL,
    hash                 INTEGER NOT NULL,             -- u64 bit-cast to i64
    updated_at           INTEGER NOT NULL,             -- unix milliseconds of the write
    PRIMARY KEY (provider, base_plan_id, plan_id)
);

-- Searches only: ever-online rows in answer order, covering every column a search returns.
CREATE INDEX plans_by_day
    ON plans (event_date, start_utc, id, end_utc, start_local, end_local, min_price, max_price, title)
    WHERE ever_online = 1;

CREATE TABLE fetches (
    seq             INTEGER PRIMARY KEY,
    provider        TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,                  -- unix milliseconds
    duration_ms     INTEGER NOT NULL,
    http_status     INTEGER,
    bytes           INTEGER NOT NULL,
    plans_seen      INTEGER NOT NULL,
    plans_written   INTEGER NOT NULL,
    plans_unchanged INTEGER NOT NULL,
    plans_skipped   INTEGER NOT NULL,
    error           TEXT
);

CREATE INDEX fetches_by_start ON fetches (started_at);
"#,
    // Event days as integers (days since 1970-01-01, see `store::day_number`) instead of text: text
    // sorted a UTC day past 9999-12-31 (`+10000-01-01`) above every real day. Recomputed from
    // `start_utc` (the UTC day is its floor division), so rows of any year convert.
    r#"
ALTER TABLE plans ADD COLUMN event_day INTEGER NOT NULL DEFAULT 0;
UPDATE plans SET event_day = (start_utc - ((start_utc % 86400000) + 86400000) % 86400000) / 86400000;
DROP INDEX plans_by_day;
ALTER TABLE plans DROP COLUMN event_date;
ALTER TABLE plans RENAME COLUMN event_day TO event_date;
CREATE INDEX plans_by_day
    ON plans (event_date, start_utc, id, end_utc, start_local, end_local, min_price, max_price, title)
    WHERE ever_online = 1;
"#,
    // The change feed: one row per event day holding the sequence number of the last transaction
    // that wrote it. Readers in other processes poll max(seq) and read the days past their marker.
    r#"
CREATE TABLE day_changes (
    day INTEGER PRIMARY KEY,                           -- days since 1970-01-01
    seq INTEGER NOT NULL                               -- write transaction number, increasing
);
CREATE INDEX day_changes_by_seq ON day_changes (seq);
"#,
];

const UPSERT_PLAN: &str = "
INSERT INTO plans (provider, base_plan_id, plan_id, id, title, online, ever_online,
                   organizer_company_id, start_local, end_local, start_utc, end_utc, event_date,
                   sell_from, sell_to, sold_out, min_price, max_price, zones, version, hash, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
ON CONFLICT (provider, base_plan_id, plan_id) DO UPDATE SET
    id = excluded.id,
    title = excluded.title,
    online = excluded.online,
    ever_online = max(plans.ever_online, excluded.ever_online),
    organizer_company_id = excluded.organizer_company_id,
    start_local = excluded.start_local,
    end_local = excluded.end_local,
    start_utc = excluded.start_utc,
    end_utc = excluded.end_utc,
    event_date = excluded.event_date,
    sell_from = excluded.sell_from,
    sell_to = excluded.sell_to,
    sold_out = excluded.sold_out,
    min_price = excluded.min_price,
    max_price = excluded.max_price,
    zones = excluded.zones,
    version = excluded.version,
    hash = excluded.hash,
    updated_at = excluded.updated_at
WHERE excluded.version >= plans.version";

/// An older version arriving late changes nothing but the sticky flag.
const STICK_EVER_ONLINE: &str = "
UPDATE plans SET ever_online = 1
WHERE provider = ?1 AND base_plan_id = ?2 AND plan_id = ?3 AND ever_online = 0";

/// One day: the index range is already in answer order, no sort step.
const PLANS_OF_DAY: &str = "
SELECT id, title, start_local, end_local, start_utc, end_utc, min_price, max_price
FROM plans WHERE ever_online = 1 AND event_date = ?1
ORDER BY start_utc, id";

const PLANS_OF_DAYS: &str = "
SELECT id, title, start_local, end_local, start_utc, end_utc, min_price, max_price
FROM plans WHERE ever_online = 1 AND event_date >= ?1 AND event_date <= ?2
ORDER BY start_utc, id";

/// Two subqueries so each reads one end of the partial index (SQLite's min/max optimisation
/// handles a single aggregate per query only).
const DAY_BOUNDS: &str = "
SELECT (SELECT min(event_date) FROM plans WHERE ever_online = 1),
       (SELECT max(event_date) FROM plans WHERE ever_online = 1)";

/// The search's day directory: one pass over the partial covering index, already grouped by day.
const DAY_DIRECTORY: &str = "
SELECT event_date, count(*), sum(length(title))
FROM plans WHERE ever_online = 1
GROUP BY event_date ORDER BY event_date";

/// The next change number, taken inside the writing transaction (writes are serialized).
const NEXT_CHANGE: &str = "SELECT coalesce(max(seq), 0) + 1 FROM day_changes";

const RECORD_CHANGE: &str = "
INSERT INTO day_changes (day, seq) VALUES (?1, ?2)
ON CONFLICT (day) DO UPDATE SET seq = excluded.seq";

const CHANGE_MARKER: &str = "SELECT coalesce(max(seq), 0) FROM day_changes";

const CHANGED_SINCE: &str = "SELECT day, seq FROM day_changes WHERE seq > ?1 ORDER BY seq";

const PLAN_STATES: &str =
    "SELECT provider, base_plan_id, plan_id, hash, event_date, version, ever_online FROM plans";

const INSERT_FETCH: &str = "
INSERT INTO fetches (provider, started_at, duration_ms, http_status, bytes, plans_seen,
                     plans_written, plans_unchanged, plans_skipped, error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const RECENT_FETCHES: &str = "
SELECT provider, started_at, duration_ms, http_status, bytes, plans_seen, plans_written,
       plans_unchanged, plans_skipped, error
FROM fetches ORDER BY started_at DESC, seq DESC LIMIT ?1";

/// The embedded store. Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// First: fields drop in order, and it must close before the other connections.
    checkpointer: Checkpointer,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// The background checkpoint thread (see [`Checkpointer::spawn`]).
struct Checkpointer {
    /// Wakes the thread after a write; holds at most one wake-up. `None` once stopping.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread that copies the WAL into the database file after writes, with its own
    /// connection, so a batch's commit never waits for a checkpoint (SQLite's automatic one runs in
    /// the committing connection). Passive: it never blocks the writer or the readers.
    fn spawn(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path, false)?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match result {
                        Ok((wal_pages, copied)) => {
                            tracing::trace!(db = %shown, wal_pages, copied, "wal checkpoint")
                        }
                        Err(e) => tracing::warn!(db = %shown, error = %e, "wal checkpoint failed"),
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("starting the checkpoint thread of {}: {e}", path.display()))
            })?;
        Ok(Self { wake: Some(wake), thread: Some(thread) })
    }

    /// Asks for a checkpoint; a no-op when one is already pending.
    fn nudge(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread and closes its connection before the writer's and readers' close, so the
    /// last of those still folds the WAL into the file and removes it, as SQLite does on close.
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
        let mut writer = open_connection(path, false)?;
        migrate(&mut writer, path)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path, true).map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        let checkpointer = Checkpointer::spawn(path)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                checkpointer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SQLite's `EXPLAIN QUERY PLAN` details for the statement `plans_by_day(from, to)` runs, so
    /// tests and operators can check that searches read the index and never scan the table.
    pub async fn explain_plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<String>> {
        self.read(move |conn| {
            let (sql, args) = search_statement(from, to);
            let mut stmt =
                conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).ctx(|| "explaining plans_by_day")?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx(|| "explaining plans_by_day")?;
            Ok(rows)
        })
        .await
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&mut inner.writer.lock())).await
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&inner.reader())).await
    }
}

impl Inner {
    /// A free reader if there is one, else waits for the next one in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        (0..n)
            .find_map(|i| self.readers[(start + i) % n].try_lock())
            .unwrap_or_else(|| self.readers[start % n].lock())
    }
}

async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_cancelled() {
            StoreError::Unavailable("sqlite task cancelled: runtime shutting down".into())
        } else {
            StoreError::Permanent(format!("sqlite task panicked: {e}"))
        }
    })?
}

/// Page size of new database files, in bytes.
const PAGE_SIZE: i64 = 16 * 1024;
/// WAL pages (256 MiB) past which the writer checkpoints by itself: only when the background
/// checkpointer falls that far behind.
const WRITER_CHECKPOINT_PAGES: i64 = 16 * 1024;
/// Size the WAL file is cut back to after a checkpoint emptied it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

fn open_connection(path: &Path, reader: bool) -> StoreResult<Connection> {
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
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).ctx(what)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Permanent(format!(
                "{} refuses WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL").ctx(what)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let what = || format!("migrating the schema of {}", path.display());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).ctx(what)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).ctx(what)?;
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(StoreError::Permanent(format!(
            "{} has schema version {applied}, newer than this build knows ({known})",
            path.display()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.execute_batch(sql).ctx(|| format!("applying schema migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).ctx(what)?;
    }
    tx.commit().ctx(what)
}

/// The search statement for a day range, with its arguments.
fn search_statement(from: NaiveDate, to: NaiveDate) -> (&'static str, Vec<i64>) {
    if from == to {
        (PLANS_OF_DAY, vec![day_number(from)])
    } else {
        (PLANS_OF_DAYS, vec![day_number(from), day_number(to)])
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
        self.write(move |conn| write_batch(conn, &plans)).await?;
        self.inner.checkpointer.nudge();
        Ok(())
    }

    async fn mark_ever_online(&self, keys: &[(PlanKey, NaiveDate)]) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let days: Vec<NaiveDate> = keys.iter().map(|(_, d)| *d).collect();
        let keys: Vec<PlanKey> = keys.iter().map(|(k, _)| k.clone()).collect();
        self.write(move |conn| {
            let n = keys.len();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx(|| format!("starting to mark {n} plans ever online"))?;
            {
                let mut stick =
                    tx.prepare_cached(STICK_EVER_ONLINE).ctx(|| "preparing the ever-online update")?;
                for key in &keys {
                    let base_plan_id = to_i64(key.base_plan_id, "base_plan_id", key)?;
                    let plan_id = to_i64(key.plan_id, "plan_id", key)?;
                    stick
                        .execute(params![&*key.provider, base_plan_id, plan_id])
                        .ctx(|| format!("marking plan {key} ever online"))?;
                }
            }
            record_changes(&tx, days)?;
            tx.commit().ctx(|| format!("committing {n} ever-online marks"))
        })
        .await
    }

    async fn load_plan_states(&self) -> StoreResult<Vec<(PlanKey, PlanState)>> {
        self.read(|conn| {
            let what = || "loading plan states";
            let mut stmt = conn.prepare_cached(PLAN_STATES).ctx(what)?;
            let mut rows = stmt.query([]).ctx(what)?;
            let mut providers: HashMap<String, Arc<str>> = HashMap::new();
            let mut out = Vec::new();
            while let Some(r) = rows.next().ctx(what)? {
                let provider = r.get_ref(0).and_then(|v| Ok(v.as_str()?)).ctx(what)?;
                let provider = match providers.get(provider) {
                    Some(p) => p.clone(),
                    None => {
                        let p: Arc<str> = provider.into();
                        providers.insert(provider.to_owned(), p.clone());
                        p
                    }
                };
                let key = PlanKey {
                    provider,
                    base_plan_id: from_i64(r, 1).ctx(what)?,
                    plan_id: from_i64(r, 2).ctx(what)?,
                };
                let state = PlanState {
                    hash: r.get::<_, i64>(3).ctx(what)? as u64,
                    event_date: int_col(r, 4, parse_day).ctx(what)?,
                    version: from_i64(r, 5).ctx(what)?,
                    ever_online: r.get(6).ctx(what)?,
                };
                out.push((key, state));
            }
            Ok(out)
        })
        .await
    }

    async fn plans_by_day(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
        if from > to {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let what = || format!("reading plans of {from}..={to}");
            let (sql, args) = search_statement(from, to);
            let mut stmt = conn.prepare_cached(sql).ctx(what)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), event_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx(what)?;
            Ok(rows)
        })
        .await
    }

    async fn day_bounds(&self) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
        self.read(|conn| {
            let what = || "reading the first and last event days";
            let mut stmt = conn.prepare_cached(DAY_BOUNDS).ctx(what)?;
            let bounds = stmt
                .query_row([], |r| {
                    let first: Option<i64> = r.get(0)?;
                    let last: Option<i64> = r.get(1)?;
                    match (first, last) {
                        (Some(_), Some(_)) => {
                            Ok(Some((int_col(r, 0, parse_day)?, int_col(r, 1, parse_day)?)))
                        }
                        _ => Ok(None),
                    }
                })
                .ctx(what)?;
            Ok(bounds)
        })
        .await
    }

    async fn day_directory(&self) -> StoreResult<Vec<DaySize>> {
        self.read(|conn| {
            let what = || "reading the day directory";
            let mut stmt = conn.prepare_cached(DAY_DIRECTORY).ctx(what)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DaySize {
                        day: int_col(r, 0, parse_day)?,
                        plans: from_i64(r, 1)?,
                        text_bytes: from_i64(r, 2)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx(what)?;
            Ok(rows)
        })
        .await
    }

    async fn change_marker(&self) -> StoreResult<i64> {
        self.read(|conn| conn.query_row(CHANGE_MARKER, [], |r| r.get(0)).ctx(|| "reading the change marker"))
            .await
    }

    async fn days_changed_since(&self, since: i64) -> StoreResult<Vec<DayChange>> {
        self.read(move |conn| {
            let what = || format!("reading the days changed since {since}");
            let mut stmt = conn.prepare_cached(CHANGED_SINCE).ctx(what)?;
            let rows = stmt
                .query_map([since], |r| Ok(DayChange { day: int_col(r, 0, parse_day)?, marker: r.get(1)? }))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx(what)?;
            Ok(rows)
        })
        .await
    }

    async fn record_fetch(&self, fetch: &FetchRecord) -> StoreResult<()> {
        let f = fetch.clone();
        self.write(move |conn| {
            let what = || format!("recording the fetch of {} started at {}", f.provider, f.started_at);
            let count = |v: u64, field: &str| {
                i64::try_from(v).map_err(|_| {
                    StoreError::Permanent(format!(
                        "fetch {field} {v} exceeds the embedded store's 63-bit range"
                    ))
                })
            };
            let mut stmt = conn.prepare_cached(INSERT_FETCH).ctx(what)?;
            stmt.execute(params![
                f.provider,
                f.started_at.timestamp_millis(),
                count(f.duration_ms, "duration_ms")?,
                f.http_status,
                count(f.bytes, "bytes")?,
                count(f.plans_seen, "plans_seen")?,
                count(f.plans_written, "plans_written")?,
                count(f.plans_unchanged, "plans_unchanged")?,
                count(f.plans_skipped, "plans_skipped")?,
                f.error,
            ])
            .ctx(what)?;
            Ok(())
        })
        .await
    }

    async fn recent_fetches(&self, limit: usize) -> StoreResult<Vec<FetchRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let what = || format!("reading the {limit} most recent fetches");
            let mut stmt = conn.prepare_cached(RECENT_FETCHES).ctx(what)?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(FetchRecord {
                        provider: r.get(0)?,
                        started_at: int_col(r, 1, |ms| {
                            DateTime::from_timestamp_millis(ms).ok_or("out of range")
                        })?,
                        duration_ms: from_i64(r, 2)?,
                        http_status: r.get(3)?,
                        bytes: from_i64(r, 4)?,
                        plans_seen: from_i64(r, 5)?,
                        plans_written: from_i64(r, 6)?,
                        plans_unchanged: from_i64(r, 7)?,
                        plans_skipped: from_i64(r, 8)?,
                        error: r.get(9)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .ctx(what)?;
            Ok(rows)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).ctx(|| "pinging the database")).await
    }
}

/// One batch in one transaction; the statements are prepared (cached) once per batch and the
/// zones' JSON is built in one reused buffer.
fn write_batch(conn: &mut Connection, plans: &[StoredPlan]) -> StoreResult<()> {
    let n = plans.len();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx(|| format!("starting a batch of {n} plans"))?;
    {
        let now = Utc::now().timestamp_millis();
        let mut upsert = tx.prepare_cached(UPSERT_PLAN).ctx(|| "preparing the plan upsert")?;
        let mut stick = tx.prepare_cached(STICK_EVER_ONLINE).ctx(|| "preparing the ever-online update")?;
        let mut zones = String::with_capacity(16 * 1024);
        let mut id_buf = Uuid::encode_buffer();
        for p in plans {
            let key = &p.plan.key;
            let base_plan_id = to_i64(key.base_plan_id, "base_plan_id", key)?;
            let plan_id = to_i64(key.plan_id, "plan_id", key)?;
            zones.clear();
            write_zones_json(&mut zones, &p.plan.zones);
            let id = key.id().hyphenated().encode_lower(&mut id_buf);
            let changed = upsert
                .execute(params![
                    &*key.provider,
                    base_plan_id,
                    plan_id,
                    &*id,
                    p.plan.title,
                    p.plan.online,
                    p.ever_online,
                    p.plan
                        .organizer_company_id
                        .map(|o| to_i64(o, "organizer_company_id", key))
                        .transpose()?,
                    local_text(p.plan.start),
                    local_text(p.plan.end),
                    p.start_utc.timestamp_millis(),
                    p.end_utc.timestamp_millis(),
                    day_number(p.event_date),
                    p.plan.sell_from.map(local_text),
                    p.plan.sell_to.map(local_text),
                    p.plan.sold_out,
                    p.plan.min_price().map(|d| d.to_string()),
                    p.plan.max_price().map(|d| d.to_string()),
                    zones.as_str(),
                    to_i64(p.version, "version", key)?,
                    p.hash as i64,
                    now,
                ])
                .ctx(|| format!("writing plan {key}"))?;
            if changed == 0 && p.ever_online {
                stick
                    .execute(params![&*key.provider, base_plan_id, plan_id])
                    .ctx(|| format!("marking plan {key} ever online"))?;
            }
        }
    }
    record_changes(
        &tx,
        plans.iter().flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date)),
    )?;
    tx.commit().ctx(|| format!("committing a batch of {n} plans"))
}

/// Records `days` in the change feed under the transaction's change number.
fn record_changes(
    tx: &rusqlite::Transaction<'_>,
    days: impl IntoIterator<Item = NaiveDate>,
) -> StoreResult<()> {
    let days: std::collections::BTreeSet<i64> = days.into_iter().map(day_number).collect();
    if days.is_empty() {
        return Ok(());
    }
    let what = || "recording the changed days";
    let seq: i64 = tx.query_row(NEXT_CHANGE, [], |r| r.get(0)).ctx(what)?;
    let mut record = tx.prepare_cached(RECORD_CHANGE).ctx(what)?;
    for day in days {
        record.execute(params![day, seq]).ctx(what)?;
    }
    Ok(())
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    let millis = |ms| DateTime::<Utc>::from_timestamp_millis(ms).ok_or("out of range");
    Ok(EventRow {
        id: text_col(r, 0, Uuid::parse_str)?,
        title: r.get(1)?,
        start_local: text_col(r, 2, parse_local)?,
        end_local: text_col(r, 3, parse_local)?,
        start_utc: int_col(r, 4, millis)?,
        end_utc: int_col(r, 5, millis)?,
        min_price: opt_text_col(r, 6, Decimal::from_str)?,
        max_price: opt_text_col(r, 7, Decimal::from_str)?,
    })
}

/// Reads text column `idx` and converts it, reporting a bad value as a conversion failure.
fn text_col<T, E>(r: &Row<'_>, idx: usize, parse: impl FnOnce(&str) -> Result<T, E>) -> rusqlite::Result<T>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse(r.get_ref(idx)?.as_str()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into()))
}

/// Reads integer column `idx` and converts it, reporting a bad value as a conversion failure.
fn int_col<T, E>(r: &Row<'_>, idx: usize, parse: impl FnOnce(i64) -> Result<T, E>) -> rusqlite::Result<T>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse(r.get_ref(idx)?.as_i64()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Integer, e.into()))
}

fn opt_text_col<T, E>(
    r: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> rusqlite::Result<Option<T>>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match r.get_ref(idx)?.as_str_or_null()? {
        None => Ok(None),
        Some(s) => parse(s)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into())),
    }
}

fn from_i64(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    int_col(r, idx, u64::try_from)
}

fn to_i64(v: u64, field: &str, key: &PlanKey) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::Permanent(format!("plan {key}: {field} {v} exceeds the embedded store's 63-bit range"))
    })
}

fn local_text(t: NaiveDateTime) -> String {
    t.format(LOCAL_FORMAT).to_string()
}

fn parse_local(s: &str) -> chrono::ParseResult<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, LOCAL_FORMAT)
}

fn parse_day(n: i64) -> Result<NaiveDate, String> {
    day_of_number(n).ok_or_else(|| format!("event day {n} is out of range"))
}

/// Zones for ad-hoc SQL (`json_each`); prices as exact decimal strings.
/// The zones as a JSON array, appended to `out`: keys in the order `serde_json` maps give them
/// (sorted), prices as exact decimal strings (scale kept), names escaped as JSON strings.
fn write_zones_json(out: &mut String, zones: &[Zone]) {
    out.push('[');
    for (i, z) in zones.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut ints = itoa::Buffer::new();
        out.push_str("{\"capacity\":");
        out.push_str(ints.format(z.capacity));
        out.push_str(",\"name\":");
        push_json_str(out, &z.name);
        out.push_str(if z.numbered {
            ",\"numbered\":true,\"price\":\""
        } else {
            ",\"numbered\":false,\"price\":\""
        });
        out.push_str(DecimalText::new(&z.price).as_str());
        out.push_str("\",\"zone_id\":");
        out.push_str(ints.format(z.zone_id));
        out.push('}');
    }
    out.push(']');
}

/// `s` as a JSON string literal, escaped as `serde_json` escapes it.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Attaches what the store was doing to a rusqlite error and sorts it into transient or permanent.
trait SqlContext<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T> {
        self.map_err(|e| {
            let msg = format!("{}: {e}", what());
            if is_transient(&e) {
                StoreError::Unavailable(msg)
            } else {
                StoreError::Permanent(msg)
            }
        })
    }
}

fn is_transient(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::OperationInterrupted
                | ErrorCode::SchemaChanged
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones_json(zones: &[Zone]) -> String {
        let mut out = String::new();
        write_zones_json(&mut out, zones);
        out
    }

    /// The previous encoder, through `serde_json::Value`: the fast one must match it byte for byte.
    fn zones_json_via_value(zones: &[Zone]) -> String {
        let zones: Vec<_> = zones
            .iter()
            .map(|z| {
                serde_json::json!({
                    "zone_id": z.zone_id,
                    "name": z.name,
                    "capacity": z.capacity,
                    "price": z.price.to_string(),
                    "numbered": z.numbered,
                })
            })
            .collect();
        serde_json::Value::Array(zones).to_string()
    }

    #[test]
    fn zones_json_matches_serde_json_byte_for_byte() {
        let names =
            ["Platea", "", "a\"b\\c", "line\nbreak\ttab\r", "ctl\u{1}\u{8}\u{c}\u{1f}", "ñandú €", "\u{7f}"];
        let zones: Vec<Zone> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Zone {
                zone_id: u64::MAX - i as u64,
                name: (*n).into(),
                capacity: u32::MAX - i as u32,
                price: ["20.00", "7.5", "0", "-1.250", "123456789.123456789", "0.0", "1"][i].parse().unwrap(),
                numbered: i % 2 == 0,
            })
            .collect();
        assert_eq!(zones_json(&zones), zones_json_via_value(&zones));
        assert_eq!(zones_json(&zones[..1]), zones_json_via_value(&zones[..1]));
    }

    fn failure(code: std::os::raw::c_int) -> rusqlite::Result<()> {
        Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn busy_locked_and_io_errors_are_transient_the_rest_permanent() {
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED, rusqlite::ffi::SQLITE_IOERR] {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
        for code in
            [rusqlite::ffi::SQLITE_CONSTRAINT, rusqlite::ffi::SQLITE_MISMATCH, rusqlite::ffi::SQLITE_CORRUPT]
        {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert!(!err.is_transient(), "{err}");
        }
        let err = Err::<(), _>(rusqlite::Error::InvalidColumnType(0, "id".into(), Type::Null))
            .ctx(|| "reading plans of 2030-01-01..=2030-01-01")
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Permanent(m) if m.starts_with("reading plans of 2030-01-01")),
            "{err}"
        );
    }

    #[test]
    fn local_times_round_trip_as_text() {
        let t = NaiveDateTime::parse_from_str("2021-09-30T21:05:07", "%Y-%m-%dT%H:%M:%S").unwrap();
        assert_eq!(local_text(t), "2021-09-30T21:05:07");
        assert_eq!(parse_local(&local_text(t)).unwrap(), t);
        let frac = t + chrono::Duration::milliseconds(250);
        assert_eq!(local_text(frac), "2021-09-30T21:05:07.250");
        assert_eq!(parse_local(&local_text(frac)).unwrap(), frac);
    }

    #[test]
    fn zones_are_json_with_exact_prices() {
        let zones = vec![
            Zone {
                zone_id: 40,
                name: "Platea".into(),
                capacity: 0,
                price: "20.00".parse().unwrap(),
                numbered: true,
            },
            Zone {
                zone_id: 40,
                name: "Anfiteatro \"A\"".into(),
                capacity: 9,
                price: "7.5".parse().unwrap(),
                numbered: false,
            },
        ];
        let json: serde_json::Value = serde_json::from_str(&zones_json(&zones)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"zone_id": 40, "name": "Platea", "capacity": 0, "price": "20.00", "numbered": true},
                {"zone_id": 40, "name": "Anfiteatro \"A\"", "capacity": 9, "price": "7.5", "numbered": false},
            ])
        );
        assert_eq!(zones_json(&[]), "[]");
    }

    #[test]
    fn versions_beyond_63_bits_are_refused_with_the_plan_key() {
        let key = PlanKey::new("fever", 322, 1642);
        assert_eq!(to_i64(5, "version", &key).unwrap(), 5);
        let err = to_i64(u64::MAX, "version", &key).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("fever/322/1642: version 18446744073709551615"), "{err}");
    }
}
