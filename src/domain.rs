//! Domain types shared by the feed parser, the pipeline, the stores and the HTTP layer.
//!
//! Nothing here knows about XML or SQL: the feed module maps provider XML to [`Plan`], each store maps
//! [`StoredPlan`] to its own rows and back to [`EventRow`].

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

/// Namespace of every plan id: `id = uuid_v5(PLAN_NAMESPACE, "{provider}/{base_plan_id}/{plan_id}")`.
/// Never change it: ids are promised stable across releases.
pub const PLAN_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_9b1d_4c3e_8a55_0d7e_3f2b_9c41);

/// Identity of a plan: `plan_id` alone is not unique, neither across base plans nor providers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanKey {
    pub provider: Arc<str>,
    pub base_plan_id: u64,
    pub plan_id: u64,
}

impl PlanKey {
    pub fn new(provider: impl Into<Arc<str>>, base_plan_id: u64, plan_id: u64) -> Self {
        Self { provider: provider.into(), base_plan_id, plan_id }
    }

    /// The public id of the plan (UUID v5 of the key).
    pub fn id(&self) -> Uuid {
        Uuid::new_v5(&PLAN_NAMESPACE, self.to_string().as_bytes())
    }
}

impl fmt::Display for PlanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.base_plan_id, self.plan_id)
    }
}

/// One ticket zone of a plan. Zone ids may repeat inside a plan; every zone counts for min/max.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub zone_id: u64,
    pub name: String,
    pub capacity: u32,
    pub price: Decimal,
    pub numbered: bool,
}

/// A decimal's exact text ("20.00", "7.5", "100"), as `Decimal`'s `Display` writes it, built on the
/// stack without the formatting machinery: the stores write one per zone, millions per feed.
pub struct DecimalText {
    buf: [u8; 48],
    start: usize,
}

impl DecimalText {
    pub fn new(d: &Decimal) -> Self {
        let mut buf = [0u8; 48];
        let mut at = buf.len();
        let mut put = |c: u8| {
            at -= 1;
            buf[at] = c;
        };
        let scale = d.scale() as usize;
        let mantissa = d.mantissa().unsigned_abs();
        // Fraction digits, the point, then the integer digits (at least one), from the right.
        macro_rules! digits {
            ($m:expr) => {{
                let mut m = $m;
                for _ in 0..scale {
                    put(b'0' + (m % 10) as u8);
                    m /= 10;
                }
                if scale > 0 {
                    put(b'.');
                }
                loop {
                    put(b'0' + (m % 10) as u8);
                    m /= 10;
                    if m == 0 {
                        break;
                    }
                }
            }};
        }
        // Prices fit in 64 bits: keep the (slow) 128-bit division for the rest.
        match u64::try_from(mantissa) {
            Ok(m) => digits!(m),
            Err(_) => digits!(mantissa),
        }
        if d.is_sign_negative() {
            put(b'-');
        }
        Self { buf, start: at }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, '.' and '-' were written.
        std::str::from_utf8(&self.buf[self.start..]).expect("ASCII")
    }
}

/// One observation of a plan as the provider sent it. Date-times are provider-local, as in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: PlanKey,
    /// Shared by every plan of one base plan as the feed gave it: a 1 KiB title on 350,000 plans
    /// is one allocation, not 350 MB of copies.
    pub title: Arc<str>,
    /// `sell_mode == "online"` on the base plan of this observation.
    pub online: bool,
    pub organizer_company_id: Option<u64>,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub sell_from: Option<NaiveDateTime>,
    pub sell_to: Option<NaiveDateTime>,
    pub sold_out: bool,
    pub zones: Vec<Zone>,
}

impl Plan {
    pub fn min_price(&self) -> Option<Decimal> {
        self.zones.iter().map(|z| z.price).min()
    }

    pub fn max_price(&self) -> Option<Decimal> {
        self.zones.iter().map(|z| z.price).max()
    }

    /// Stable 64-bit digest of everything observable about the plan: xxh3 over a canonical binary
    /// encoding. Persisted by the stores, so this encoding is frozen from now on: changing it makes
    /// every stored plan look changed once (a full rewrite) and must be a deliberate, noted change.
    ///
    /// Encoding, all integers little-endian: strings as `u32` byte length + UTF-8 bytes; the key as
    /// provider string, `base_plan_id` `u64`, `plan_id` `u64`; title string; online `u8`;
    /// organizer as `u8` tag (0 none, 1 some) + `u64`; each date-time as `i64` seconds of the
    /// local time read as UTC + `u32` nanoseconds, optional ones behind a `u8` tag; sold-out `u8`;
    /// zone count `u32`, then per zone `zone_id` `u64`, name string, capacity `u32`, price as
    /// [`Decimal::serialize`] of the value as fed (not normalized: the scale is shown to users,
    /// so `20.00` and `20.0` differ), numbered `u8`.
    pub fn content_hash(&self) -> u64 {
        let mut buf = Vec::with_capacity(96 + self.title.len() + self.zones.len() * 48);
        fn put_str(buf: &mut Vec<u8>, s: &str) {
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        fn put_dt(buf: &mut Vec<u8>, t: &NaiveDateTime) {
            let utc = t.and_utc();
            buf.extend_from_slice(&utc.timestamp().to_le_bytes());
            buf.extend_from_slice(&utc.timestamp_subsec_nanos().to_le_bytes());
        }
        fn put_opt_dt(buf: &mut Vec<u8>, t: &Option<NaiveDateTime>) {
            match t {
                Some(t) => {
                    buf.push(1);
                    put_dt(buf, t);
                }
                None => buf.push(0),
            }
        }
        put_str(&mut buf, &self.key.provider);
        buf.extend_from_slice(&self.key.base_plan_id.to_le_bytes());
        buf.extend_from_slice(&self.key.plan_id.to_le_bytes());
        put_str(&mut buf, &self.title);
        buf.push(u8::from(self.online));
        match self.organizer_company_id {
            Some(o) => {
                buf.push(1);
                buf.extend_from_slice(&o.to_le_bytes());
            }
            None => buf.push(0),
        }
        put_dt(&mut buf, &self.start);
        put_dt(&mut buf, &self.end);
        put_opt_dt(&mut buf, &self.sell_from);
        put_opt_dt(&mut buf, &self.sell_to);
        buf.push(u8::from(self.sold_out));
        buf.extend_from_slice(&(self.zones.len() as u32).to_le_bytes());
        for z in &self.zones {
            buf.extend_from_slice(&z.zone_id.to_le_bytes());
            put_str(&mut buf, &z.name);
            buf.extend_from_slice(&z.capacity.to_le_bytes());
            buf.extend_from_slice(&z.price.serialize());
            buf.push(u8::from(z.numbered));
        }
        xxhash_rust::xxh3::xxh3_64(&buf)
    }
}

/// Converts a provider-local date-time to an instant. Ambiguous local times (DST fall-back) take the
/// earlier instant; times inside a DST gap are read as the instant just after the gap.
pub fn local_to_utc(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        LocalResult::None => {
            // Walk forward minute by minute out of the gap (gaps are at most a few hours).
            let mut probe = local;
            for _ in 0..(26 * 60) {
                probe += chrono::Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

/// What the pipeline hands to a store: the plan's latest observation plus the bookkeeping the
/// writer derived for it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    pub plan: Plan,
    /// Start and end as instants (provider-local time read in the provider's time zone).
    pub start_utc: DateTime<Utc>,
    pub end_utc: DateTime<Utc>,
    /// Partition/day bucket of the plan: the UTC date of `start_utc`.
    pub event_date: NaiveDate,
    /// Sticky: true once any observation of the plan was online.
    pub ever_online: bool,
    /// Observation order: larger is newer. Derived from the fetch start and the chunk sequence.
    pub version: u64,
    pub hash: u64,
    /// Set when an earlier stored version lived on another day; that row must stop matching.
    pub previous_event_date: Option<NaiveDate>,
}

impl StoredPlan {
    pub fn new(plan: Plan, tz: Tz, ever_online: bool, version: u64) -> Self {
        let hash = plan.content_hash();
        Self::with_hash(plan, tz, ever_online, version, hash)
    }

    /// As [`StoredPlan::new`], with `hash` already computed (it must be `plan.content_hash()`).
    pub fn with_hash(plan: Plan, tz: Tz, ever_online: bool, version: u64, hash: u64) -> Self {
        debug_assert_eq!(hash, plan.content_hash());
        let start_utc = local_to_utc(plan.start, tz);
        let end_utc = local_to_utc(plan.end, tz);
        Self {
            start_utc,
            end_utc,
            event_date: start_utc.date_naive(),
            ever_online: ever_online || plan.online,
            version,
            hash,
            previous_event_date: None,
            plan,
        }
    }
}

/// What the writer needs to know about a stored plan to skip unchanged re-observations and to
/// supersede the row of a moved plan. Loaded from the store at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanState {
    pub hash: u64,
    pub event_date: NaiveDate,
    pub version: u64,
    pub ever_online: bool,
}

/// One searchable plan as a store returns it: enough to filter by instant, order, and render the
/// contract's `EventSummary`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: Uuid,
    pub title: String,
    pub start_local: NaiveDateTime,
    pub end_local: NaiveDateTime,
    pub start_utc: DateTime<Utc>,
    pub end_utc: DateTime<Utc>,
    pub min_price: Option<Decimal>,
    pub max_price: Option<Decimal>,
}

impl EventRow {
    pub fn from_stored(p: &StoredPlan) -> Self {
        Self {
            id: p.plan.key.id(),
            title: p.plan.title.to_string(),
            start_local: p.plan.start,
            end_local: p.plan.end,
            start_utc: p.start_utc,
            end_utc: p.end_utc,
            min_price: p.plan.min_price(),
            max_price: p.plan.max_price(),
        }
    }
}

/// A search window over instants; either side may be open. Containment: a plan matches when
/// `start_utc >= starts_at` and `end_utc <= ends_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl TimeRange {
    pub fn contains(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.starts_at.is_none_or(|s| start >= s) && self.ends_at.is_none_or(|e| end <= e)
    }
}

/// One fetch attempt, as recorded in the store's fetch log. Its serde form is what the spool keeps
/// of a fetch record the store refused (`src/spool/codec.rs`): renaming a field changes that file
/// format.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct FetchRecord {
    pub provider: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// HTTP status, when a response arrived.
    pub http_status: Option<u16>,
    pub bytes: u64,
    pub plans_seen: u64,
    pub plans_written: u64,
    pub plans_unchanged: u64,
    pub plans_skipped: u64,
    /// `None` on success; the reason otherwise.
    pub error: Option<String>,
    /// How the fetch ended: the `outcome` label it was counted under in `planfeed_fetches_total`.
    pub outcome: FetchOutcome,
    /// Observations handed to the spool because the store refused them (replayed later), and
    /// observations the store rejected for good. `None` in a record kept before the writer counted
    /// them, unless its error said (see [`FetchOutcome::legacy_counts`]).
    #[serde(default)]
    pub plans_spooled: Option<u64>,
    #[serde(default)]
    pub plans_dropped: Option<u64>,
}

/// How a fetch ended, as one value: its label is the `outcome` of `planfeed_fetches_total`, of the
/// `fetch failed` log line and of the stored fetch record (docs/operations.md lists them). What
/// became of its plans in the store says more than how the download ended, so the writer's
/// outcomes (`StoreRejected`, `SpoolFull`) win over the download's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchOutcome {
    #[default]
    Ok,
    /// The provider answered a non-success status.
    HttpError,
    Timeout,
    /// No connection (refused, DNS, TLS) or a local file that cannot be opened.
    Connect,
    /// The body ended before its root element closed.
    Truncated,
    /// The body passed `provider.max_body_bytes`.
    TooLarge,
    /// The body stopped arriving for another reason than time.
    BodyError,
    /// The body is not a feed (empty, not XML, wrong shape), or a chunk of it could not be parsed.
    BadFeed,
    /// The circuit breaker was open: no request sent.
    Skipped,
    /// The fetch's deadline passed while the writer (the store or the spool) did not keep up.
    Backpressure,
    /// The pipeline was stopping or had no parser.
    Pipeline,
    /// The service was asked to stop while the fetch ran.
    Shutdown,
    /// The store rejected some of the fetch's plans for good: they were dropped.
    StoreRejected,
    /// The store and the spool both refused the fetch's plans for a while: the download was held.
    SpoolFull,
}

impl FetchOutcome {
    /// Every outcome, in the order the metric registers them.
    pub const ALL: [FetchOutcome; 14] = [
        Self::Ok,
        Self::HttpError,
        Self::Timeout,
        Self::Connect,
        Self::Truncated,
        Self::TooLarge,
        Self::BodyError,
        Self::BadFeed,
        Self::Skipped,
        Self::Backpressure,
        Self::Pipeline,
        Self::Shutdown,
        Self::StoreRejected,
        Self::SpoolFull,
    ];

    /// The stable label (also its serde form).
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Truncated => "truncated",
            Self::TooLarge => "too_large",
            Self::BodyError => "body_error",
            Self::BadFeed => "bad_feed",
            Self::Skipped => "skipped",
            Self::Backpressure => "backpressure",
            Self::Pipeline => "pipeline",
            Self::Shutdown => "shutdown",
            Self::StoreRejected => "store_rejected",
            Self::SpoolFull => "spool_full",
        }
    }

    /// The outcome a label names, as a store reads it back.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.label() == label)
    }

    /// The outcome of a fetch recorded before records carried one, derived from its error text
    /// (whose openings have not changed since the first release). The same rules fill the column
    /// of older rows in both stores (`clickhouse/005_analyst_views.sql` says them in SQL) and
    /// older spool entries. Best effort where the text alone cannot tell: a request or body read
    /// failure is a `timeout` when its text says "timed out", and a text no rule knows is a chunk
    /// the parser could not read (`bad_feed`).
    pub fn of_legacy_error(error: Option<&str>) -> Self {
        let Some(e) = error else { return Self::Ok };
        let timed_out = e.contains("timed out") || e.contains("no body bytes from the provider");
        let starts = |prefix: &str| e.starts_with(prefix);
        if e.contains("store rejected ") {
            Self::StoreRejected
        } else if e.contains("store and spool refused writes") {
            Self::SpoolFull
        } else if starts("circuit open:") {
            Self::Skipped
        } else if starts("cannot open ") {
            Self::Connect
        } else if starts("provider answered HTTP ") {
            Self::HttpError
        } else if starts("fetch timed out after ") && e.contains(" waiting for the pipeline") {
            Self::Backpressure
        } else if starts("fetch timed out after ") || (starts("request to ") && timed_out) {
            Self::Timeout
        } else if starts("request to ") {
            Self::Connect
        } else if starts("body read failed after ") {
            if timed_out {
                Self::Timeout
            } else {
                Self::BodyError
            }
        } else if starts("body exceeds provider.max_body_bytes") {
            Self::TooLarge
        } else if starts("body truncated after ") {
            Self::Truncated
        } else if starts("fetch interrupted by shutdown") {
            Self::Shutdown
        } else if starts("pipeline is shutting down") || starts("no parser is running") {
            Self::Pipeline
        } else {
            Self::BadFeed
        }
    }

    /// `(plans_spooled, plans_dropped)` of a fetch recorded before records carried them: a fetch
    /// whose plans the store rejected said both in its error ("store rejected 3 plans (written 40,
    /// spooled 2): ..."); any other's are unknown.
    pub fn legacy_counts(error: Option<&str>) -> (Option<u64>, Option<u64>) {
        let number_after = |text: &str, marker: &str| -> Option<u64> {
            let rest = &text[text.find(marker)? + marker.len()..];
            rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
        };
        match error.and_then(|e| Some((e, number_after(e, "store rejected ")?))) {
            Some((e, dropped)) => (number_after(e, ", spooled "), Some(dropped)),
            None => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_outcomes_are_stored_as_their_labels() {
        for o in FetchOutcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.label());
            assert_eq!(FetchOutcome::from_label(o.label()), Some(o));
        }
        assert_eq!(FetchOutcome::from_label("not_modified"), None);
    }

    fn dt(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    #[test]
    fn ids_are_stable_and_distinct_across_base_plans_and_providers() {
        let a = PlanKey::new("fever", 322, 1642);
        let b = PlanKey::new("fever", 1591, 1642);
        let c = PlanKey::new("other", 322, 1642);
        assert_eq!(a.id(), PlanKey::new("fever", 322, 1642).id());
        assert_eq!(a.id().get_version_num(), 5);
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn decimal_text_is_display() {
        for text in ["20.00", "7.5", "100", "0", "0.00", "0.05", "-3.10", "-0.5", "123456789.123456789"] {
            let d: Decimal = text.parse().unwrap();
            assert_eq!(DecimalText::new(&d).as_str(), text);
            assert_eq!(DecimalText::new(&d).as_str(), d.to_string());
        }
        for d in [Decimal::MAX, Decimal::MIN, Decimal::from_i128_with_scale(1, 28), Decimal::new(-1, 28)] {
            assert_eq!(DecimalText::new(&d).as_str(), d.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn decimal_text_matches_display(m in proptest::num::i128::ANY, scale in 0u32..=28) {
            let m = m % (1i128 << 96);
            let d = Decimal::from_i128_with_scale(m, scale);
            let text = DecimalText::new(&d);
            proptest::prop_assert_eq!(text.as_str(), d.to_string());
        }

        #[test]
        fn small_decimal_text_matches_display(m in -10_000_000i64..10_000_000, scale in 0u32..=6) {
            let d = Decimal::new(m, scale);
            let text = DecimalText::new(&d);
            proptest::prop_assert_eq!(text.as_str(), d.to_string());
        }
    }

    #[test]
    fn content_hash_keeps_price_scale_and_sees_every_field() {
        let zone = |price: &str| Zone {
            zone_id: 1,
            name: "Platea".into(),
            capacity: 10,
            price: price.parse().unwrap(),
            numbered: true,
        };
        let plan = Plan {
            key: PlanKey::new("fever", 1, 2),
            title: "T".into(),
            online: true,
            organizer_company_id: None,
            start: dt("2021-06-30T21:00:00"),
            end: dt("2021-06-30T22:00:00"),
            sell_from: None,
            sell_to: None,
            sold_out: false,
            zones: vec![zone("20.00")],
        };
        let h = plan.content_hash();
        assert_eq!(h, plan.clone().content_hash());
        let other = |f: &dyn Fn(&mut Plan)| {
            let mut p = plan.clone();
            f(&mut p);
            p.content_hash()
        };
        assert_ne!(h, other(&|p| p.zones = vec![zone("20.0")]), "scale is significant");
        assert_ne!(h, other(&|p| p.zones[0].name = "Platea ".into()));
        assert_ne!(h, other(&|p| p.organizer_company_id = Some(0)));
        assert_ne!(h, other(&|p| p.sell_to = Some(p.end)));
        assert_ne!(h, other(&|p| p.title = "".into()));
        assert_ne!(h, other(&|p| p.key.plan_id = 3));
    }

    #[test]
    fn local_times_follow_the_provider_zone() {
        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        assert_eq!(local_to_utc(dt("2021-06-30T21:00:00"), madrid).to_rfc3339(), "2021-06-30T19:00:00+00:00");
        // 2021-03-28 02:30 does not exist in Madrid: read as the end of the gap (03:00 CEST = 01:00Z).
        assert_eq!(local_to_utc(dt("2021-03-28T02:30:00"), madrid).to_rfc3339(), "2021-03-28T01:00:00+00:00");
        // 2021-10-31 02:30 happens twice: the earlier one (CEST) wins.
        assert_eq!(local_to_utc(dt("2021-10-31T02:30:00"), madrid).to_rfc3339(), "2021-10-31T00:30:00+00:00");
    }

    #[test]
    fn containment_is_inclusive_on_both_sides() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let r = TimeRange {
            starts_at: Some(t("2021-01-01T10:00:00Z")),
            ends_at: Some(t("2021-01-01T12:00:00Z")),
        };
        assert!(r.contains(t("2021-01-01T10:00:00Z"), t("2021-01-01T12:00:00Z")));
        assert!(!r.contains(t("2021-01-01T09:59:59Z"), t("2021-01-01T11:00:00Z")));
        assert!(!r.contains(t("2021-01-01T10:00:00Z"), t("2021-01-01T12:00:01Z")));
        assert!(TimeRange::default().contains(t("1900-01-01T00:00:00Z"), t("2999-01-01T00:00:00Z")));
    }
}
