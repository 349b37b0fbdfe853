//! Attribute values of the feed: what each kind of value may look like (ids, prices, dates,
//! flags), parsed without allocating in the common case, and why a value makes its plan invalid
//! ([`SkipKind`], with the offending value [`Shown`] in the detail).

use chrono::{NaiveDate, NaiveDateTime};
use quick_xml::events::attributes::Attribute;
use rust_decimal::Decimal;

use super::text::{clipped, value, Shown};

/// Why a plan is invalid, as a stable label for log summaries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// A required attribute (an id, a date, a zone's id or price) is absent.
    MissingAttribute,
    /// An id (base plan, plan, zone) is not an unsigned integer.
    InvalidId,
    /// An id (base plan, plan, zone, organizer) is an unsigned integer above [`MAX_ID`], which
    /// no store holds (SQLite's integers are signed 64-bit). Told apart from [`Self::InvalidId`]
    /// because a provider sending such ids sends them on every fetch: the fetch's log sums them up
    /// in one line instead of one per plan.
    IdOutOfRange,
    /// A date is unparsable or impossible.
    InvalidDate,
    /// The end date is before the start date.
    EndBeforeStart,
    /// A price is not an unsigned decimal.
    InvalidPrice,
    /// A price carries a minus sign.
    NegativePrice,
}

/// The largest id a plan may carry: 2^63 - 1, SQLite's largest integer. ClickHouse's `UInt64`
/// columns would take more, but the same feed must give the same plans whatever the store.
pub const MAX_ID: u64 = i64::MAX as u64;

impl SkipKind {
    /// Whether plans skipped for this kind are summed up in one line per fetch (a count and an
    /// example) rather than logged one by one: a kind that comes back identically on every fetch.
    pub fn summed_up(self) -> bool {
        matches!(self, Self::IdOutOfRange)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::MissingAttribute => "missing_attribute",
            Self::InvalidId => "invalid_id",
            Self::IdOutOfRange => "id_out_of_range",
            Self::InvalidDate => "invalid_date",
            Self::EndBeforeStart => "end_before_start",
            Self::InvalidPrice => "invalid_price",
            Self::NegativePrice => "negative_price",
        }
    }
}

/// Why a plan (or its base plan) is invalid; the detail names the attribute and a [`Shown`] value.
#[derive(Debug, Clone)]
pub(super) struct Invalid {
    pub(super) kind: SkipKind,
    pub(super) detail: String,
}

impl Invalid {
    pub(super) fn new(kind: SkipKind, detail: String) -> Self {
        Self { kind, detail }
    }
}

/// A required attribute as read.
pub(super) enum Field<T> {
    Missing,
    Bad(Invalid),
    Ok(T),
}

/// The value of a required field; the first problem found is kept in `invalid`.
pub(super) fn take<T>(f: Field<T>, naming: &str, what: &str, invalid: &mut Option<Invalid>) -> Option<T> {
    match f {
        Field::Ok(v) => Some(v),
        Field::Bad(why) => {
            invalid.get_or_insert(why);
            None
        }
        Field::Missing => {
            invalid.get_or_insert_with(|| {
                Invalid::new(SkipKind::MissingAttribute, format!("missing {naming}_{what}"))
            });
            None
        }
    }
}

/// An id attribute `key` (base plan, plan, zone): an unsigned integer up to [`MAX_ID`].
pub(super) fn id_field(key: &str, v: &str) -> Field<u64> {
    match parse_u64(v) {
        Some(n) if n <= MAX_ID => Field::Ok(n),
        Some(_) => Field::Bad(out_of_range(key, v)),
        None if is_digits(v) => Field::Bad(out_of_range(key, v)),
        None => Field::Bad(Invalid::new(SkipKind::InvalidId, format!("invalid {key} {}", Shown(v)))),
    }
}

fn out_of_range(key: &str, v: &str) -> Invalid {
    Invalid::new(SkipKind::IdOutOfRange, format!("{key} {} is above {MAX_ID}", Shown(v)))
}

fn is_digits(v: &str) -> bool {
    let v = trim(v);
    !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit())
}

/// The optional `organizer_company_id`: absent when missing or not a number (it is not needed to
/// serve a plan), but a number above [`MAX_ID`] makes the base plan's plans invalid, as no store
/// could write them.
pub(super) fn organizer_field(v: &str) -> Result<Option<u64>, Invalid> {
    match id_field("organizer_company_id", v) {
        Field::Ok(n) => Ok(Some(n)),
        Field::Bad(why) if why.kind == SkipKind::IdOutOfRange => Err(why),
        _ => Ok(None),
    }
}

/// An id attribute `a` of a base plan or plan, with its raw value [`clipped`] for the skip log.
pub(super) fn id_attr(key: &str, a: &Attribute<'_>) -> (Field<u64>, Option<String>) {
    let v = value(a);
    (id_field(key, &v), Some(clipped(&v)))
}

/// A zone's price: an unsigned decimal; a negative one is told apart.
pub(super) fn price_field(v: &str) -> Field<Decimal> {
    match parse_price(v) {
        Some(d) => Field::Ok(d),
        None if trim(v).strip_prefix('-').and_then(parse_price).is_some() => {
            Field::Bad(Invalid::new(SkipKind::NegativePrice, format!("negative price {}", Shown(v))))
        }
        None => Field::Bad(Invalid::new(SkipKind::InvalidPrice, format!("invalid price {}", Shown(v)))),
    }
}

pub(super) fn date_field(key: &str, a: &Attribute<'_>) -> Field<NaiveDateTime> {
    let v = value(a);
    match parse_datetime(&v) {
        Some(d) => Field::Ok(d),
        None => Field::Bad(Invalid::new(SkipKind::InvalidDate, format!("invalid {key} {}", Shown(&v)))),
    }
}

/// `s` without surrounding whitespace; the common case (nothing to trim) is checked on two bytes.
pub(super) fn trim(s: &str) -> &str {
    match s.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        [only] if only.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

pub(super) fn parse_u64(s: &str) -> Option<u64> {
    if !is_digits(s) {
        return None;
    }
    trim(s).parse().ok()
}

pub(super) fn parse_bool(s: &str) -> bool {
    matches!(trim(s), "true" | "1")
}

/// An unsigned decimal price string (`20.00`, `7.5`, `100`); the scale is kept.
pub(super) fn parse_price(s: &str) -> Option<Decimal> {
    let s = trim(s);
    // The usual shape (digits, maybe one point between digits, at most 18 digits) in one pass;
    // anything else goes through the checks and `Decimal`'s own parser below.
    let b = s.as_bytes();
    if !b.is_empty() && b.len() <= 19 && b[0].is_ascii_digit() && b[b.len() - 1].is_ascii_digit() {
        let mut mantissa = 0i64;
        let mut point = None;
        let mut plain = true;
        for (i, &c) in b.iter().enumerate() {
            if c.is_ascii_digit() {
                // 19 digits may not fit: such a value is thrown away by the digit count below.
                mantissa = mantissa.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
            } else if c == b'.' && point.is_none() {
                point = Some(i);
            } else {
                plain = false;
                break;
            }
        }
        if plain && b.len() - usize::from(point.is_some()) <= 18 {
            let scale = point.map_or(0, |p| b.len() - p - 1) as u32;
            return Some(Decimal::new(mantissa, scale));
        }
    }
    // Unsigned only: `-5` is as invalid as `+5` (a zone cannot pay the buyer).
    let ok = !s.is_empty()
        && s.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && s.bytes().filter(|&c| c == b'.').count() <= 1
        && s.bytes().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DDTHH:MM:SS` with optional fractional seconds; impossible dates are `None`.
pub(super) fn parse_datetime(s: &str) -> Option<NaiveDateTime> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let mut nanos = 0;
    if b.len() > 19 {
        let frac = &b[20..];
        if b[19] != b'.' || frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut scale = 100_000_000;
        for &c in frac.iter().take(9) {
            nanos += u32::from(c - b'0') * scale;
            scale /= 10;
        }
    }
    let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    date.and_hms_nano_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, nanos)
}

pub(super) fn fmt_dt(d: NaiveDateTime) -> String {
    d.format("%Y-%m-%dT%H:%M:%S").to_string()
}
