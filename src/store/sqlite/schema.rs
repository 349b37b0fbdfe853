//! The embedded store's schema: migrations applied in order, the number applied kept in
//! `PRAGMA user_version`, so a file written by an older build is brought up to date on open and a
//! file from a newer build is refused rather than misread.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::SqlContext;
use crate::store::{StoreError, StoreResult};

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

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
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
