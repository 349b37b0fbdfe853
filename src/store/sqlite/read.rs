//! The embedded store's reads. Searches read the partial, covering index `plans_by_day`, which
//! holds only ever-online rows in `(event_date, start_utc, id)` order: a one-day search is a single
//! index range read, already in the answer's order, with each row's title looked up by id in the
//! small `titles` table (plans share their base plan's title).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use rusqlite::{Connection, Row};

use super::error::SqlContext;
use super::rows::{day_change_row, day_size_row, event_row, fetch_row, from_i64, int_col, parse_day};
use crate::domain::{EventRow, FetchRecord, PlanKey, PlanState};
use crate::store::{day_number, DayChange, DaySize, StoreResult};

/// One day: the index range is already in answer order, no sort step.
/// `CROSS JOIN` keeps the index as the outer loop; each row's title is a lookup by id.
const PLANS_OF_DAY: &str = "
SELECT p.id, t.text, p.start_local, p.end_local, p.start_utc, p.end_utc, p.min_price, p.max_price
FROM plans p CROSS JOIN titles t ON t.id = p.title_id
WHERE p.ever_online = 1 AND p.event_date = ?1
ORDER BY p.start_utc, p.id";

const PLANS_OF_DAYS: &str = "
SELECT p.id, t.text, p.start_local, p.end_local, p.start_utc, p.end_utc, p.min_price, p.max_price
FROM plans p CROSS JOIN titles t ON t.id = p.title_id
WHERE p.ever_online = 1 AND p.event_date >= ?1 AND p.event_date <= ?2
ORDER BY p.start_utc, p.id";

/// Two subqueries so each reads one end of the partial index (SQLite's min/max optimisation
/// handles a single aggregate per query only).
const DAY_BOUNDS: &str = "
SELECT (SELECT min(event_date) FROM plans WHERE ever_online = 1),
       (SELECT max(event_date) FROM plans WHERE ever_online = 1)";

/// The search's day directory: one pass over the partial covering index, already grouped by day.
const DAY_DIRECTORY: &str = "
SELECT p.event_date, count(*), sum(t.chars)
FROM plans p CROSS JOIN titles t ON t.id = p.title_id
WHERE p.ever_online = 1
GROUP BY p.event_date ORDER BY p.event_date";

const CHANGE_MARKER: &str = "SELECT coalesce(max(seq), 0) FROM day_changes";

const CHANGED_SINCE: &str = "SELECT day, seq FROM day_changes WHERE seq > ?1 ORDER BY seq";

const PLAN_STATES: &str =
    "SELECT provider, base_plan_id, plan_id, hash, event_date, version, ever_online FROM plans";

const RECENT_FETCHES: &str = "
SELECT provider, started_at, duration_ms, http_status, bytes, plans_seen, plans_written,
       plans_unchanged, plans_skipped, error, outcome, plans_spooled, plans_dropped
FROM fetches ORDER BY started_at DESC, seq DESC LIMIT ?1";

/// The search statement for a day range, with its arguments.
fn search_statement(from: NaiveDate, to: NaiveDate) -> (&'static str, Vec<i64>) {
    if from == to {
        (PLANS_OF_DAY, vec![day_number(from)])
    } else {
        (PLANS_OF_DAYS, vec![day_number(from), day_number(to)])
    }
}

/// Runs `sql` with `args` and collects every row through `row`; `what` names the read in errors.
fn collect<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    args: P,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    what: impl Fn() -> String,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).ctx(&what)?;
    let rows =
        stmt.query_map(args, row).and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()).ctx(what)?;
    Ok(rows)
}

/// SQLite's `EXPLAIN QUERY PLAN` details of the search statement for `from..=to`.
pub(super) fn explain_plans_by_day(
    conn: &Connection,
    from: NaiveDate,
    to: NaiveDate,
) -> StoreResult<Vec<String>> {
    let (sql, args) = search_statement(from, to);
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    collect(
        conn,
        &explain,
        rusqlite::params_from_iter(args.iter()),
        |r| r.get::<_, String>(3),
        || "explaining plans_by_day".to_string(),
    )
}

pub(super) fn plans_by_day(conn: &Connection, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<EventRow>> {
    let (sql, args) = search_statement(from, to);
    collect(conn, sql, rusqlite::params_from_iter(args.iter()), event_row, || {
        format!("reading plans of {from}..={to}")
    })
}

pub(super) fn day_bounds(conn: &Connection) -> StoreResult<Option<(NaiveDate, NaiveDate)>> {
    let what = || "reading the first and last event days";
    let mut stmt = conn.prepare_cached(DAY_BOUNDS).ctx(what)?;
    stmt.query_row([], |r| {
        let first: Option<i64> = r.get(0)?;
        let last: Option<i64> = r.get(1)?;
        match (first, last) {
            (Some(_), Some(_)) => Ok(Some((int_col(r, 0, parse_day)?, int_col(r, 1, parse_day)?))),
            _ => Ok(None),
        }
    })
    .ctx(what)
}

pub(super) fn day_directory(conn: &Connection) -> StoreResult<Vec<DaySize>> {
    collect(conn, DAY_DIRECTORY, [], day_size_row, || "reading the day directory".to_string())
}

pub(super) fn change_marker(conn: &Connection) -> StoreResult<i64> {
    conn.query_row(CHANGE_MARKER, [], |r| r.get(0)).ctx(|| "reading the change marker")
}

pub(super) fn days_changed_since(conn: &Connection, since: i64) -> StoreResult<Vec<DayChange>> {
    collect(conn, CHANGED_SINCE, [since], day_change_row, || {
        format!("reading the days changed since {since}")
    })
}

pub(super) fn recent_fetches(conn: &Connection, limit: i64) -> StoreResult<Vec<FetchRecord>> {
    collect(conn, RECENT_FETCHES, [limit], fetch_row, || format!("reading the {limit} most recent fetches"))
}

/// The writer's bookkeeping for every stored plan; each provider's name is allocated once.
pub(super) fn plan_states(conn: &Connection) -> StoreResult<Vec<(PlanKey, PlanState)>> {
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
        let key =
            PlanKey { provider, base_plan_id: from_i64(r, 1).ctx(what)?, plan_id: from_i64(r, 2).ctx(what)? };
        let state = PlanState {
            hash: r.get::<_, i64>(3).ctx(what)? as u64,
            event_date: int_col(r, 4, parse_day).ctx(what)?,
            version: from_i64(r, 5).ctx(what)?,
            ever_online: r.get(6).ctx(what)?,
        };
        out.push((key, state));
    }
    Ok(out)
}
