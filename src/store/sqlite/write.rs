//! The embedded store's writes: a batch of plans, ever-online marks and fetch records, each in one
//! transaction. Every write that changes what a day's search returns also records the day in the
//! change feed (`day_changes`) under the transaction's number, so other processes can follow. A
//! plan's title is stored once, in `titles`, and its row holds the title's id.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::error::SqlContext;
use super::json::write_zones_json;
use super::rows::{count_to_i64, local_text, to_i64};
use crate::domain::{FetchRecord, PlanKey, StoredPlan};
use crate::store::{day_number, StoreResult};

const UPSERT_PLAN: &str = "
INSERT INTO plans (provider, base_plan_id, plan_id, id, title_id, online, ever_online,
                   organizer_company_id, start_local, end_local, start_utc, end_utc, event_date,
                   sell_from, sell_to, sold_out, min_price, max_price, zones, version, hash, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
ON CONFLICT (provider, base_plan_id, plan_id) DO UPDATE SET
    id = excluded.id,
    title_id = excluded.title_id,
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

/// A title's row, when the store holds it.
const FIND_TITLE: &str = "SELECT id FROM titles WHERE text = ?1";

const INSERT_TITLE: &str = "INSERT INTO titles (text) VALUES (?1)";

/// A title a batch added, to be deleted if every row of it kept a newer version's title.
const NOTE_ADDED_TITLE: &str = "INSERT OR IGNORE INTO titles_let_go (id) VALUES (?1)";

/// The titles a batch added or let go of that no row refers to.
const DROP_UNUSED_TITLES: &str = "
DELETE FROM titles WHERE id IN (SELECT id FROM titles_let_go)
    AND NOT EXISTS (SELECT 1 FROM plans WHERE title_id = titles.id);
DELETE FROM titles_let_go;";

/// An older version arriving late changes nothing but the sticky flag.
const STICK_EVER_ONLINE: &str = "
UPDATE plans SET ever_online = 1
WHERE provider = ?1 AND base_plan_id = ?2 AND plan_id = ?3 AND ever_online = 0";

/// The next change number, taken inside the writing transaction (writes are serialized).
const NEXT_CHANGE: &str = "SELECT coalesce(max(seq), 0) + 1 FROM day_changes";

const RECORD_CHANGE: &str = "
INSERT INTO day_changes (day, seq) VALUES (?1, ?2)
ON CONFLICT (day) DO UPDATE SET seq = excluded.seq";

const INSERT_FETCH: &str = "
INSERT INTO fetches (provider, started_at, duration_ms, http_status, bytes, plans_seen,
                     plans_written, plans_unchanged, plans_skipped, error, outcome,
                     plans_spooled, plans_dropped)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// One batch in one transaction; the statements are prepared (cached) once per batch and the
/// zones' JSON is built in one reused buffer.
pub(super) fn write_batch(conn: &mut Connection, plans: &[StoredPlan]) -> StoreResult<()> {
    let n = plans.len();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx(|| format!("starting a batch of {n} plans"))?;
    {
        let mut upsert = tx.prepare_cached(UPSERT_PLAN).ctx(|| "preparing the plan upsert")?;
        let mut stick = tx.prepare_cached(STICK_EVER_ONLINE).ctx(|| "preparing the ever-online update")?;
        let mut buffers = RowBuffers::new();
        for p in plans {
            let (title_id, added) = buffers.titles.id(&tx, &p.plan.title)?;
            let changed = upsert_plan(&mut upsert, p, title_id, &mut buffers)?;
            if changed == 0 && added {
                buffers.titles.not_taken.push(title_id);
            }
            if changed == 0 && p.ever_online {
                stick_ever_online(&mut stick, &p.plan.key)?;
            }
        }
        buffers.titles.drop_unused(&tx)?;
    }
    record_changes(
        &tx,
        plans.iter().flat_map(|p| std::iter::once(p.event_date).chain(p.previous_event_date)),
    )?;
    tx.commit().ctx(|| format!("committing a batch of {n} plans"))
}

/// What every row of a batch reuses: the write time, the zones' JSON, the id's text and the ids of
/// the titles met so far.
struct RowBuffers {
    now: i64,
    zones: String,
    id: [u8; uuid::fmt::Urn::LENGTH],
    titles: Titles,
}

impl RowBuffers {
    fn new() -> Self {
        Self {
            now: Utc::now().timestamp_millis(),
            zones: String::with_capacity(16 * 1024),
            id: Uuid::encode_buffer(),
            titles: Titles::default(),
        }
    }
}

/// The `titles` ids of one batch's titles. Plans of one base plan share their title's allocation,
/// so a run of them is recognised by pointer, without hashing the text again.
#[derive(Default)]
struct Titles {
    /// Each title's id, and whether this batch added it.
    ids: HashMap<Arc<str>, (i64, bool)>,
    last: Option<(Arc<str>, (i64, bool))>,
    /// Titles this batch added that a row did not take (its stored version was newer): deleted at
    /// the batch's end if no other row took them (see `drop_unused`). A title a row took needs no
    /// check: only the trigger's notes can free it later. Noting every added title cost a note, a
    /// lookup and a delete per new title, for nothing when a row took it.
    not_taken: Vec<i64>,
}

impl Titles {
    /// The id of `title`, added to `titles` when the store does not hold it yet; with whether this
    /// batch added it.
    fn id(&mut self, tx: &Transaction<'_>, title: &Arc<str>) -> StoreResult<(i64, bool)> {
        if let Some((last, id)) = &self.last {
            if Arc::ptr_eq(last, title) {
                return Ok(*id);
            }
        }
        let id = match self.ids.get(title) {
            Some(&id) => id,
            None => {
                let id = find_or_add(tx, title)?;
                self.ids.insert(title.clone(), id);
                id
            }
        };
        self.last = Some((title.clone(), id));
        Ok(id)
    }

    /// Deletes the titles this batch added that no row took, and those rows let go of (the
    /// trigger's notes), when no row refers to them.
    fn drop_unused(&self, tx: &Transaction<'_>) -> StoreResult<()> {
        let what = || "deleting unused titles";
        if !self.not_taken.is_empty() {
            let mut note = tx.prepare_cached(NOTE_ADDED_TITLE).ctx(what)?;
            for id in &self.not_taken {
                note.execute([id]).ctx(what)?;
            }
        }
        tx.execute_batch(DROP_UNUSED_TITLES).ctx(what)
    }
}

/// The id of `title` in `titles`, adding it when the store does not hold it yet; with whether it
/// was added.
fn find_or_add(tx: &Transaction<'_>, title: &str) -> StoreResult<(i64, bool)> {
    let what = || "finding a plan's title";
    let mut find = tx.prepare_cached(FIND_TITLE).ctx(what)?;
    if let Some(id) = find.query_row([title], |r| r.get(0)).optional().ctx(what)? {
        return Ok((id, false));
    }
    let what = || "adding a plan's title";
    tx.prepare_cached(INSERT_TITLE).and_then(|mut s| s.execute([title])).ctx(what)?;
    Ok((tx.last_insert_rowid(), true))
}

/// Upserts one plan; the number of rows changed (0 when the stored version is newer).
fn upsert_plan(
    stmt: &mut CachedStatement<'_>,
    p: &StoredPlan,
    title_id: i64,
    buf: &mut RowBuffers,
) -> StoreResult<usize> {
    let key = &p.plan.key;
    buf.zones.clear();
    write_zones_json(&mut buf.zones, &p.plan.zones);
    let id = key.id().hyphenated().encode_lower(&mut buf.id);
    stmt.execute(params![
        &*key.provider,
        to_i64(key.base_plan_id, "base_plan_id", key)?,
        to_i64(key.plan_id, "plan_id", key)?,
        &*id,
        title_id,
        p.plan.online,
        p.ever_online,
        p.plan.organizer_company_id.map(|o| to_i64(o, "organizer_company_id", key)).transpose()?,
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
        buf.zones.as_str(),
        to_i64(p.version, "version", key)?,
        p.hash as i64,
        buf.now,
    ])
    .ctx(|| format!("writing plan {key}"))
}

fn stick_ever_online(stmt: &mut CachedStatement<'_>, key: &PlanKey) -> StoreResult<()> {
    let base_plan_id = to_i64(key.base_plan_id, "base_plan_id", key)?;
    let plan_id = to_i64(key.plan_id, "plan_id", key)?;
    stmt.execute(params![&*key.provider, base_plan_id, plan_id])
        .ctx(|| format!("marking plan {key} ever online"))?;
    Ok(())
}

/// Marks each key's stored version ever online, recording `days` (their event days) as changed.
pub(super) fn mark_ever_online(
    conn: &mut Connection,
    keys: &[PlanKey],
    days: Vec<NaiveDate>,
) -> StoreResult<()> {
    let n = keys.len();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx(|| format!("starting to mark {n} plans ever online"))?;
    {
        let mut stick = tx.prepare_cached(STICK_EVER_ONLINE).ctx(|| "preparing the ever-online update")?;
        for key in keys {
            stick_ever_online(&mut stick, key)?;
        }
    }
    record_changes(&tx, days)?;
    tx.commit().ctx(|| format!("committing {n} ever-online marks"))
}

/// Records `days` in the change feed under the transaction's change number.
fn record_changes(tx: &Transaction<'_>, days: impl IntoIterator<Item = NaiveDate>) -> StoreResult<()> {
    let days: BTreeSet<i64> = days.into_iter().map(day_number).collect();
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

/// Appends one fetch to the fetch log.
pub(super) fn insert_fetch(conn: &Connection, f: &FetchRecord) -> StoreResult<()> {
    let what = || format!("recording the fetch of {} started at {}", f.provider, f.started_at);
    let mut stmt = conn.prepare_cached(INSERT_FETCH).ctx(what)?;
    stmt.execute(params![
        f.provider,
        f.started_at.timestamp_millis(),
        count_to_i64(f.duration_ms, "duration_ms")?,
        f.http_status,
        count_to_i64(f.bytes, "bytes")?,
        count_to_i64(f.plans_seen, "plans_seen")?,
        count_to_i64(f.plans_written, "plans_written")?,
        count_to_i64(f.plans_unchanged, "plans_unchanged")?,
        count_to_i64(f.plans_skipped, "plans_skipped")?,
        f.error,
        f.outcome.label(),
        f.plans_spooled.map(|n| count_to_i64(n, "plans_spooled")).transpose()?,
        f.plans_dropped.map(|n| count_to_i64(n, "plans_dropped")).transpose()?,
    ])
    .ctx(what)?;
    Ok(())
}
