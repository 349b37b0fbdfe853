//! Parsing and validating `/search` query parameters.

use std::borrow::Cow;
use std::cell::RefCell;

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use crate::domain::TimeRange;

const FORMAT_HINT: &str =
    "an RFC 3339 date-time with an offset, e.g. 2021-07-21T17:32:28Z or 2021-07-21T19:32:28+02:00";

/// Reads `starts_at`/`ends_at` from a raw query string. Unknown parameters are ignored; a repeated
/// one, an unparsable value or `starts_at > ends_at` is a 400.
pub fn parse_range(raw_query: &str) -> Result<TimeRange, ApiError> {
    let mut starts_at = None;
    let mut ends_at = None;
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k, "parameter name")?;
        let slot = match &*key {
            "starts_at" => &mut starts_at,
            "ends_at" => &mut ends_at,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(
                "duplicate_parameter",
                format!("parameter {key} is given more than once; give it at most once"),
            ));
        }
        let value = decode(v, &key)?;
        *slot = Some(parse_instant(&key, &value)?);
    }
    if let (Some(s), Some(e)) = (starts_at, ends_at) {
        if s > e {
            return Err(ApiError::bad_request(
                "invalid_range",
                format!("starts_at ({}) is after ends_at ({})", s.to_rfc3339(), e.to_rfc3339()),
            ));
        }
    }
    Ok(TimeRange { starts_at, ends_at })
}

/// Longest query string [`parse_range_remembered`] keeps.
const REMEMBERED_QUERY_BYTES: usize = 256;

/// [`parse_range`], remembering per thread the last query string it read well: clients poll the
/// same few ranges over and over, and comparing the string costs a fraction of reading it again
/// (two dates, a calendar check each: several percent of a `304`).
pub fn parse_range_remembered(raw_query: &str) -> Result<TimeRange, ApiError> {
    thread_local! {
        static LAST: RefCell<(String, TimeRange)> = const { RefCell::new((String::new(), TimeRange { starts_at: None, ends_at: None })) };
    }
    LAST.with_borrow_mut(|(query, range)| {
        if !query.is_empty() && query == raw_query {
            return Ok(*range);
        }
        let parsed = parse_range(raw_query)?;
        if raw_query.len() <= REMEMBERED_QUERY_BYTES {
            query.clear();
            query.push_str(raw_query);
            *range = parsed;
        }
        Ok(parsed)
    })
}

/// `s` percent-decoded; borrowed when it holds no escape (the usual query), so a search allocates
/// nothing for its parameters.
fn decode<'a>(s: &'a str, what: &str) -> Result<Cow<'a, str>, ApiError> {
    if !s.contains('%') {
        // Already UTF-8 and nothing to decode: skips the decoder's scan and its UTF-8 check.
        return Ok(Cow::Borrowed(s));
    }
    percent_decode_str(s).decode_utf8().map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("{what} is not valid UTF-8 after percent-decoding"),
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the form nearly every client sends, read by position: chrono's RFC 3339
/// parser (the fallback for every other form, and for anything this one does not take) was 5 % of
/// a `304`'s server time. `None` when `value` is not exactly that form with a valid date and time.
fn utc_seconds(value: &str) -> Option<DateTime<Utc>> {
    let b = value.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // A leap second (:60) is left to chrono, which has its own rule for it.
    chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?
        .and_hms_opt(hour, minute, second)
        .map(|t| t.and_utc())
}

fn parse_instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Some(t) = utc_seconds(value) {
        return Ok(t);
    }
    // A form encoder turns '+' into a space; "…T10:00:00 05:30" can only have meant "+05:30".
    let fixed;
    let value = match value.len().checked_sub(6).and_then(|i| value.get(i..)) {
        Some(tail) if tail.starts_with(' ') && value.len() > 19 => {
            fixed = format!("{}+{}", &value[..value.len() - 6], &tail[1..]);
            fixed.as_str()
        }
        _ => value,
    };
    DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        let shown: String = value.chars().take(64).collect();
        ApiError::bad_request(
            "invalid_parameter",
            format!("{name} must be {FORMAT_HINT}; got {shown:?} ({e})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_query_reads_as_parsing_it_would() {
        let day = "starts_at=2023-06-15T00:00:00Z&ends_at=2023-06-15T23:59:59Z";
        let other = "starts_at=2023-06-16T00:00:00Z";
        for q in [day, day, other, day, "", "ends_at=x", day, "ends_at=x"] {
            assert_eq!(
                parse_range_remembered(q).map_err(|e| e.code),
                parse_range(q).map_err(|e| e.code),
                "{q}"
            );
        }
        assert_eq!(
            parse_range_remembered(day).unwrap().starts_at.unwrap().to_rfc3339(),
            "2023-06-15T00:00:00+00:00"
        );
    }

    fn ok(q: &str) -> TimeRange {
        parse_range(q).unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    fn err(q: &str) -> ApiError {
        parse_range(q).expect_err(q)
    }

    #[test]
    fn accepts_offsets_fractions_and_encoded_colons() {
        let r = ok("starts_at=2021-07-21T17:32:28Z&ends_at=2021-07-21T19%3A32%3A28.5%2B02:00");
        assert_eq!(r.starts_at.unwrap().to_rfc3339(), "2021-07-21T17:32:28+00:00");
        assert_eq!(r.ends_at.unwrap().timestamp_micros(), r.starts_at.unwrap().timestamp_micros() + 500_000);
        let r = ok("starts_at=2021-07-21T23:02:28+05:30");
        assert_eq!(r.starts_at.unwrap().to_rfc3339(), "2021-07-21T17:32:28+00:00");
        // '+' turned into a space by a form encoder.
        let r = ok("starts_at=2021-07-21T23:02:28%2005:30");
        assert_eq!(r.starts_at.unwrap().to_rfc3339(), "2021-07-21T17:32:28+00:00");
    }

    #[test]
    fn missing_parameters_are_open_and_unknown_ones_ignored() {
        assert_eq!(ok(""), TimeRange::default());
        assert_eq!(ok("foo=bar&x"), TimeRange::default());
        let r = ok("ends_at=2021-01-01T00:00:00Z");
        assert!(r.starts_at.is_none() && r.ends_at.is_some());
        let same = ok("starts_at=2021-01-01T00:00:00Z&ends_at=2021-01-01T01:00:00%2B01:00");
        assert_eq!(same.starts_at, same.ends_at);
    }

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        for (q, name) in [
            ("starts_at=tomorrow", "starts_at"),
            ("starts_at=2021-13-01T00:00:00Z", "starts_at"),
            ("ends_at=2021-02-30T00:00:00Z", "ends_at"),
            ("ends_at=2021-02-10T25:00:00Z", "ends_at"),
            ("starts_at=2021-02-10", "starts_at"),
            ("starts_at=2021-02-10T10:00:00", "starts_at"),
            ("ends_at=1612951200", "ends_at"),
            ("starts_at=", "starts_at"),
        ] {
            let e = err(q);
            assert_eq!(e.status, 400, "{q}");
            assert_eq!(e.code, "invalid_parameter", "{q}");
            assert!(e.message.starts_with(name), "{q}: {}", e.message);
            assert!(e.message.contains("RFC 3339"), "{q}: {}", e.message);
        }
    }

    proptest::proptest! {
        /// The by-position reading of `…T…Z` agrees with chrono's RFC 3339 parser on every string
        /// of that shape, valid or not (bad months, days, hours, digits).
        #[test]
        fn the_fast_form_agrees_with_chrono(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62, s in 0u32..62,
            junk in proptest::option::of((0usize..20, proptest::char::range(' ', '~'))),
        ) {
            let mut text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
            if let Some((at, c)) = junk {
                text.replace_range(at..at + 1, &c.to_string());
            }
            let by_chrono = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.with_timezone(&Utc));
            match utc_seconds(&text) {
                Some(t) => proptest::prop_assert_eq!(Some(t), by_chrono, "{}", text),
                // Not taken: chrono decides. It may only accept what this form leaves to it: a
                // leap second, or a lower-case `t`/`z` or a space for the `T`.
                None => {
                    let b = text.as_bytes();
                    let other_form = s == 60 || matches!(b[10], b't' | b' ') || b[19] == b'z';
                    proptest::prop_assert!(by_chrono.is_none() || other_form, "{}", text);
                }
            }
        }
    }

    #[test]
    fn rejects_inverted_ranges_and_repeats() {
        let e = err("starts_at=2021-01-02T00:00:00Z&ends_at=2021-01-01T00:00:00Z");
        assert_eq!(e.code, "invalid_range");
        // Compared as instants: 01:00+02:00 is before 00:00Z.
        let e = err("starts_at=2021-01-01T00:00:00Z&ends_at=2021-01-01T01:00:00%2B02:00");
        assert_eq!(e.code, "invalid_range");
        let e = err("starts_at=2021-01-01T00:00:00Z&starts_at=2021-01-01T00:00:00Z");
        assert_eq!(e.code, "duplicate_parameter");
        assert!(e.message.contains("starts_at"));
    }

    #[test]
    fn plain_parameters_are_borrowed_and_escaped_ones_decoded() {
        assert!(matches!(decode("2021-01-01T00:00:00Z", "x"), Ok(Cow::Borrowed("2021-01-01T00:00:00Z"))));
        assert_eq!(decode("2021-01-01T00%3A00%3A00Z", "x").unwrap(), "2021-01-01T00:00:00Z");
        assert_eq!(decode("%FF", "starts_at").unwrap_err().code, "invalid_parameter");
    }
}
