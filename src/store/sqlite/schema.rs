//! The embedded store's schema: migrations applied in order, the number applied kept in
//! `PRAGMA user_version`, so a file written by an older build is brought up to date on open and a
//! file from a newer build is refused rather than misread.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::error::SqlContext;
use crate::domain::FetchOutcome;
use crate::store::{StoreError, StoreResult};

/// One schema migration: its SQL, then, for a migration that derives values of older rows, the
/// Rust that does it (in the same transaction).
struct Migration {
    sql: &'static str,
    fill: Option<fn(&Transaction<'_>) -> rusqlite::Result<()>>,
}

const fn sql(sql: &'static str) -> Migration {
    Migration { sql, fill: None }
}

/// Schema migrations; `PRAGMA user_version` is the number applied. Append only, never edit one.
const MIGRATIONS: &[Migration] = &[
    sql(r#"
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
"#),
    // Event days as integers (days since 1970-01-01, see `store::day_number`) instead of text: text
    // sorted a UTC day past 9999-12-31 (`+10000-01-01`) above every real day. Recomputed from
    // `start_utc` (the UTC day is its floor division), so rows of any year convert.
    sql(r#"
ALTER TABLE plans ADD COLUMN event_day INTEGER NOT NULL DEFAULT 0;
UPDATE plans SET event_day = (start_utc - ((start_utc % 86400000) + 86400000) % 86400000) / 86400000;
DROP INDEX plans_by_day;
ALTER TABLE plans DROP COLUMN event_date;
ALTER TABLE plans RENAME COLUMN event_day TO event_date;
CREATE INDEX plans_by_day
    ON plans (event_date, start_utc, id, end_utc, start_local, end_local, min_price, max_price, title)
    WHERE ever_online = 1;
"#),
    // The change feed: one row per event day holding the sequence number of the last transaction
    // that wrote it. Readers in other processes poll max(seq) and read the days past their marker.
    sql(r#"
CREATE TABLE day_changes (
    day INTEGER PRIMARY KEY,                           -- days since 1970-01-01
    seq INTEGER NOT NULL                               -- write transaction number, increasing
);
CREATE INDEX day_changes_by_seq ON day_changes (seq);
"#),
    // The fetch log says how each fetch ended (the label of `planfeed_fetches_total{outcome}`) and
    // how many of its plans were spooled or dropped, as the ClickHouse store's does. Older rows get
    // the outcome their error text tells and the counts only when it gave them
    // ([`FetchOutcome::of_legacy_error`], [`FetchOutcome::legacy_counts`]); NULL counts are unknown.
    Migration {
        sql: r#"
ALTER TABLE fetches ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
ALTER TABLE fetches ADD COLUMN plans_spooled INTEGER;
ALTER TABLE fetches ADD COLUMN plans_dropped INTEGER;
"#,
        fill: Some(fill_fetch_outcomes),
    },
    // Titles stored once: every plan of a base plan shares its title, and a 1 KiB title carried by
    // each of 350,000 rows, twice (the table and the covering index), made each row's write cost a
    // whole index page (the index is in day order, the feed is not). Rows and index entries now
    // hold the title's id; searches still read only the index and the small `titles` table. A
    // title a row let go of is noted in `titles_let_go` (the trigger); the batch that did it
    // deletes the noted titles no row refers to any more before it commits (through
    // `plans_by_title`), so ids a batch looked up stay valid while it runs.
    sql(r#"
CREATE TABLE titles (
    id    INTEGER PRIMARY KEY,
    text  TEXT    NOT NULL UNIQUE,
    chars INTEGER GENERATED ALWAYS AS (length(text)) STORED   -- the day directory's sizes
);
INSERT INTO titles (text) SELECT DISTINCT title FROM plans ORDER BY title;
ALTER TABLE plans ADD COLUMN title_id INTEGER NOT NULL DEFAULT 0;
UPDATE plans SET title_id = (SELECT id FROM titles WHERE text = plans.title);
DROP INDEX plans_by_day;
ALTER TABLE plans DROP COLUMN title;
CREATE INDEX plans_by_day
    ON plans (event_date, start_utc, id, end_utc, start_local, end_local, min_price, max_price, title_id)
    WHERE ever_online = 1;
CREATE INDEX plans_by_title ON plans (title_id);
CREATE TABLE titles_let_go (id INTEGER PRIMARY KEY);
CREATE TRIGGER title_let_go AFTER UPDATE OF title_id ON plans
WHEN old.title_id <> new.title_id
BEGIN
    -- Not `INSERT OR IGNORE`: the upsert's own conflict clause would override it.
    INSERT INTO titles_let_go (id)
        SELECT old.title_id WHERE NOT EXISTS (SELECT 1 FROM titles_let_go WHERE id = old.title_id);
END;
"#),
];

/// The outcome and counts of the fetch rows written before migration 4, from their error texts.
fn fill_fetch_outcomes(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut read = tx.prepare("SELECT seq, error FROM fetches WHERE error IS NOT NULL")?;
    let mut update =
        tx.prepare("UPDATE fetches SET outcome = ?2, plans_spooled = ?3, plans_dropped = ?4 WHERE seq = ?1")?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let (seq, error): (i64, String) = (row.get(0)?, row.get(1)?);
        let (spooled, dropped) = FetchOutcome::legacy_counts(Some(&error));
        let outcome = FetchOutcome::of_legacy_error(Some(&error)).label();
        let count = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
        update.execute(rusqlite::params![seq, outcome, count(spooled), count(dropped)])?;
    }
    Ok(())
}

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
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let applying = || format!("applying schema migration {}", i + 1);
        tx.execute_batch(migration.sql).ctx(applying)?;
        if let Some(fill) = migration.fill {
            fill(&tx).ctx(applying)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64).ctx(what)?;
    }
    tx.commit().ctx(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file at schema version 3 (fetch rows without outcome or counts) gets them from each row's
    /// error text.
    #[test]
    fn older_fetch_rows_get_the_outcome_their_error_tells() {
        let mut conn = Connection::open_in_memory().unwrap();
        for m in &MIGRATIONS[..3] {
            conn.execute_batch(m.sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        let errors = [
            None,
            Some("provider answered HTTP 503 Service Unavailable (after 2 retries)"),
            Some("request to http://x/feed failed: error sending request: operation timed out"),
            Some("provider answered HTTP 500; store rejected 3 plans (written 40, spooled 2): type mismatch"),
            Some("malformed xml: unexpected end"),
        ];
        for error in errors {
            conn.execute(
                "INSERT INTO fetches (provider, started_at, duration_ms, bytes, plans_seen, plans_written, \
                 plans_unchanged, plans_skipped, error) VALUES ('p', 0, 0, 0, 0, 0, 0, 0, ?1)",
                [error],
            )
            .unwrap();
        }
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let mut stmt =
            conn.prepare("SELECT outcome, plans_spooled, plans_dropped FROM fetches ORDER BY seq").unwrap();
        let rows: Vec<(String, Option<i64>, Option<i64>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = [
            ("ok", None, None),
            ("http_error", None, None),
            ("timeout", None, None),
            ("store_rejected", Some(2), Some(3)),
            ("bad_feed", None, None),
        ];
        assert_eq!(rows, expected.map(|(o, s, d)| (o.to_string(), s, d)));
    }
}
