//! The spool's on-disk encoding of an entry: JSON, so an operator can read a stuck entry with
//! `sqlite3` (`SELECT body FROM entries`). Prices are decimal strings (scale kept), date-times
//! RFC 3339 / ISO 8601.
//!
//! A fetch record is written as [`FetchRecord`]'s own serde form (a flat record of plain fields);
//! one written before records carried an outcome gets it derived on the way back.
//! Plans go through mirror rows instead: a plan's key holds a shared `Arc<str>` and the batch adds
//! the writer's bookkeeping, so the rows keep the file's shape apart from the domain's. The shape
//! is a promise across upgrades: a file an earlier build wrote is read back (tested with
//! `tests/fixtures/spool/`).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::entry::Entry;
use crate::domain::{FetchOutcome, FetchRecord, Plan, PlanKey, StoredPlan, Zone};

/// Stored in the `kind` column: what `body` holds.
pub const KIND_BATCH: &str = "batch";
pub const KIND_FETCH: &str = "fetch";

#[derive(Serialize, Deserialize)]
struct KeyRow {
    provider: String,
    base_plan_id: u64,
    plan_id: u64,
}

#[derive(Serialize, Deserialize)]
struct ZoneRow {
    zone_id: u64,
    name: String,
    capacity: u32,
    price: Decimal,
    numbered: bool,
}

#[derive(Serialize, Deserialize)]
struct PlanRow {
    key: KeyRow,
    title: String,
    online: bool,
    organizer_company_id: Option<u64>,
    start: NaiveDateTime,
    end: NaiveDateTime,
    sell_from: Option<NaiveDateTime>,
    sell_to: Option<NaiveDateTime>,
    sold_out: bool,
    zones: Vec<ZoneRow>,
    start_utc: DateTime<Utc>,
    end_utc: DateTime<Utc>,
    event_date: NaiveDate,
    ever_online: bool,
    version: u64,
    hash: u64,
    previous_event_date: Option<NaiveDate>,
}

#[derive(Serialize, Deserialize)]
struct BatchBody {
    plans: Vec<PlanRow>,
    marks: Vec<(KeyRow, NaiveDate)>,
}

/// `(kind, body)` of an entry.
pub fn encode(entry: &Entry) -> Result<(&'static str, Vec<u8>), serde_json::Error> {
    match entry {
        Entry::Batch { plans, marks } => {
            let body = BatchBody {
                plans: plans.iter().map(plan_row).collect(),
                marks: marks.iter().map(|(k, d)| (key_row(k), *d)).collect(),
            };
            Ok((KIND_BATCH, serde_json::to_vec(&body)?))
        }
        Entry::Fetch(f) => Ok((KIND_FETCH, serde_json::to_vec(f)?)),
    }
}

/// The entry of a `(kind, body)` pair read back.
pub fn decode(kind: &str, body: &[u8]) -> Result<Entry, String> {
    match kind {
        KIND_BATCH => {
            let b: BatchBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            Ok(Entry::Batch {
                plans: b.plans.into_iter().map(stored_plan).collect(),
                marks: b.marks.into_iter().map(|(k, d)| (plan_key(k), d)).collect(),
            })
        }
        KIND_FETCH => fetch_record(body).map(Entry::Fetch).map_err(|e| e.to_string()),
        other => Err(format!("unknown entry kind {other:?}")),
    }
}

/// A fetch record read back. One an earlier build spooled has no `outcome` and no counts: they
/// are derived from its error as the stores derive them for their older rows
/// ([`FetchOutcome::of_legacy_error`], [`FetchOutcome::legacy_counts`]).
fn fetch_record(body: &[u8]) -> Result<FetchRecord, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(fields) = value.as_object_mut().filter(|f| !f.contains_key("outcome")) {
        let error = fields.get("error").and_then(serde_json::Value::as_str);
        let outcome = FetchOutcome::of_legacy_error(error);
        let (spooled, dropped) = FetchOutcome::legacy_counts(error);
        fields.insert("outcome".into(), outcome.label().into());
        fields.insert("plans_spooled".into(), spooled.into());
        fields.insert("plans_dropped".into(), dropped.into());
    }
    serde_json::from_value(value)
}

fn key_row(k: &PlanKey) -> KeyRow {
    KeyRow { provider: k.provider.to_string(), base_plan_id: k.base_plan_id, plan_id: k.plan_id }
}

fn plan_key(k: KeyRow) -> PlanKey {
    PlanKey::new(k.provider, k.base_plan_id, k.plan_id)
}

fn plan_row(p: &StoredPlan) -> PlanRow {
    let plan = &p.plan;
    PlanRow {
        key: key_row(&plan.key),
        title: plan.title.to_string(),
        online: plan.online,
        organizer_company_id: plan.organizer_company_id,
        start: plan.start,
        end: plan.end,
        sell_from: plan.sell_from,
        sell_to: plan.sell_to,
        sold_out: plan.sold_out,
        zones: plan
            .zones
            .iter()
            .map(|z| ZoneRow {
                zone_id: z.zone_id,
                name: z.name.clone(),
                capacity: z.capacity,
                price: z.price,
                numbered: z.numbered,
            })
            .collect(),
        start_utc: p.start_utc,
        end_utc: p.end_utc,
        event_date: p.event_date,
        ever_online: p.ever_online,
        version: p.version,
        hash: p.hash,
        previous_event_date: p.previous_event_date,
    }
}

fn stored_plan(r: PlanRow) -> StoredPlan {
    StoredPlan {
        plan: Plan {
            key: plan_key(r.key),
            title: r.title.into(),
            online: r.online,
            organizer_company_id: r.organizer_company_id,
            start: r.start,
            end: r.end,
            sell_from: r.sell_from,
            sell_to: r.sell_to,
            sold_out: r.sold_out,
            zones: r
                .zones
                .into_iter()
                .map(|z| Zone {
                    zone_id: z.zone_id,
                    name: z.name,
                    capacity: z.capacity,
                    price: z.price,
                    numbered: z.numbered,
                })
                .collect(),
        },
        start_utc: r.start_utc,
        end_utc: r.end_utc,
        event_date: r.event_date,
        ever_online: r.ever_online,
        version: r.version,
        hash: r.hash,
        previous_event_date: r.previous_event_date,
    }
}
