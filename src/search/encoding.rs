//! What HTTP caches and clients expect of a `/search` answer: a content coding negotiated from
//! `Accept-Encoding`, a strong `ETag` per representation, and `If-None-Match` answered with `304`.
//!
//! The ETag is derived from the body's bytes alone (xxh3-128, unseeded), so two replicas on one store
//! and a restarted process give equal answers equal tags. The gzip representation of the same body
//! is another representation (RFC 9110 §8.8.3: a strong validator is unique per representation), so
//! its tag carries a `-gzip` suffix; a cache holding either variant revalidates it with its own tag.

use bytes::Bytes;
use flate2::write::GzEncoder;
use std::io::Write as _;
use warp::http::HeaderValue;

/// Answers smaller than this go out plain whatever the client accepts: gzip's header and trailer
/// (18 bytes) and a fresh dictionary save less than a fifth of an answer of one or two events (see
/// docs/performance.md, "HTTP caching").
pub const GZIP_MIN_BYTES: usize = 1024;

/// gzip level: 6, on flate2's zlib-rs backend (zlib's own algorithm). A 1-month answer (1 MB) of
/// feed-shaped plans compresses to 14.4 % of its size in 17 ms; miniz_oxide, flate2's default
/// backend, gives 15.4 % at 6 (28 ms) and 15.1 % at 9 (53 ms); random plans 20.7 % whatever the
/// level. Each cached answer is compressed once, on its first gzip request.
const GZIP_LEVEL: u32 = 6;

/// A content coding of a `/search` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

impl Coding {
    /// The coding to send, from the request's `Accept-Encoding` values (RFC 9110 §12.5.3): gzip when
    /// the client gives `gzip` (or `x-gzip`) a non-zero weight, or lists `*` with a non-zero weight
    /// and no weight for gzip. No header, `gzip;q=0`, or only unknown codings: identity. Identity
    /// is sent even when the client excludes it (the RFC allows disregarding the header then).
    pub fn negotiate<'a>(accept_encoding: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut gzip = None;
        let mut any = None;
        for value in accept_encoding {
            let Ok(text) = value.to_str() else { continue };
            for member in text.split(',') {
                let mut params = member.split(';');
                let name = params.next().unwrap_or("").trim();
                let weight = params.find_map(qvalue).unwrap_or(1000);
                if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                    gzip = Some(gzip.map_or(weight, |w: u16| w.max(weight)));
                } else if name == "*" {
                    any = Some(weight);
                }
            }
        }
        match gzip.or(any) {
            Some(w) if w > 0 => Coding::Gzip,
            _ => Coding::Identity,
        }
    }

    /// The `Content-Encoding` value, `None` for identity.
    pub fn header(self) -> Option<HeaderValue> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some(HeaderValue::from_static("gzip")),
        }
    }
}

/// A `q=` parameter as thousandths (`q=0.5` → 500); `None` for other parameters. A malformed
/// weight counts as 0: a client that wrote one cannot be relied on to decode what it names.
fn qvalue(param: &str) -> Option<u16> {
    let (key, value) = param.split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("q") {
        return None;
    }
    let value = value.trim();
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    let valid = matches!(int, "0" | "1")
        && frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || frac.bytes().all(|b| b == b'0'));
    if !valid {
        return Some(0);
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().unwrap_or(0);
    Some(if int == "1" { 1000 } else { thousandths })
}

/// The content hash an answer's tags are made of: equal bodies, equal hashes, in any process.
pub fn content_hash(body: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(body)
}

/// The strong `ETag` of `coding`'s representation of a body with `hash`: `"<32 hex digits>"`, with
/// `-gzip` before the closing quote for the gzip representation.
pub fn etag(hash: u128, coding: Coding) -> HeaderValue {
    let suffix = match coding {
        Coding::Identity => "",
        Coding::Gzip => "-gzip",
    };
    HeaderValue::try_from(format!("\"{hash:032x}{suffix}\"")).expect("hex digits are a valid header value")
}

/// True when `If-None-Match` (all of its header lines) names `etag` or is `*`: the client's copy is
/// current and gets a `304`. Entity tags are compared weakly, as RFC 9110 §13.1.2 requires for
/// this header (`W/"x"` matches `"x"`); members that are not entity tags are skipped.
pub fn none_match<'a>(if_none_match: impl IntoIterator<Item = &'a HeaderValue>, etag: &HeaderValue) -> bool {
    let ours = opaque(etag.as_bytes());
    if_none_match.into_iter().any(|value| {
        let mut rest = value.as_bytes();
        loop {
            rest = trim_start(rest, |b| b == b' ' || b == b'\t' || b == b',');
            if rest.is_empty() {
                return false;
            }
            if rest[0] == b'*' {
                return true;
            }
            let tag = rest.strip_prefix(b"W/").unwrap_or(rest);
            if tag.first() != Some(&b'"') {
                // Not an entity tag: skip to the next member.
                let next = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
                rest = &rest[next..];
                continue;
            }
            let Some(close) = tag[1..].iter().position(|&b| b == b'"') else { return false };
            if &tag[..close + 2] == ours {
                return true;
            }
            rest = &tag[close + 2..];
        }
    })
}

/// The quoted part of an entity tag, without a weakness prefix.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

fn trim_start(mut s: &[u8], skip: impl Fn(u8) -> bool) -> &[u8] {
    while let Some((&first, rest)) = s.split_first() {
        if !skip(first) {
            break;
        }
        s = rest;
    }
    s
}

/// The gzip form of `body`.
pub fn gzip(body: &[u8]) -> Bytes {
    // Compressed JSON answers are a sixth to a fifth of their size: start there, grow if needed.
    let mut encoder =
        GzEncoder::new(Vec::with_capacity(body.len() / 6 + 64), flate2::Compression::new(GZIP_LEVEL));
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn coding(values: &[&'static str]) -> Coding {
        let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        Coding::negotiate(&values)
    }

    #[test]
    fn gzip_is_chosen_by_its_weight_or_the_wildcard() {
        assert_eq!(coding(&[]), Coding::Identity);
        assert_eq!(coding(&["gzip"]), Coding::Gzip);
        assert_eq!(coding(&["GZip;q=0.5"]), Coding::Gzip);
        assert_eq!(coding(&["deflate, br;q=1.0, x-gzip;q=0.001"]), Coding::Gzip);
        assert_eq!(coding(&["br", "gzip"]), Coding::Gzip, "several header lines");
        assert_eq!(coding(&["*"]), Coding::Gzip);
        assert_eq!(coding(&["identity"]), Coding::Identity);
        assert_eq!(coding(&["br, deflate"]), Coding::Identity);
    }

    #[test]
    fn a_zero_weight_excludes_gzip() {
        assert_eq!(coding(&["gzip;q=0"]), Coding::Identity);
        assert_eq!(coding(&["gzip; q=0.000"]), Coding::Identity);
        assert_eq!(coding(&["*;q=0"]), Coding::Identity);
        assert_eq!(coding(&["*, gzip;q=0"]), Coding::Identity, "an explicit gzip weight beats *");
        assert_eq!(coding(&["gzip;q=0, *"]), Coding::Identity);
        assert_eq!(coding(&["gzip;q=2"]), Coding::Identity, "a malformed weight counts as 0");
        assert_eq!(coding(&["gzip;q=0.5x"]), Coding::Identity);
        assert_eq!(coding(&["gzip;level=1"]), Coding::Gzip, "other parameters are ignored");
    }

    #[test]
    fn tags_are_stable_and_differ_per_representation() {
        let hash = content_hash(br#"{"data":{"events":[]},"error":null}"#);
        // A fixed value: tags must not change across processes, restarts or releases of the crate.
        assert_eq!(format!("{hash:032x}"), "c87d4c88774b6086e32e18addfc4a888");
        assert_eq!(hash, content_hash(br#"{"data":{"events":[]},"error":null}"#));
        assert_ne!(hash, content_hash(br#"{"data":{"events":[1]},"error":null}"#));
        let plain = etag(hash, Coding::Identity);
        let gz = etag(hash, Coding::Gzip);
        assert_eq!(plain.to_str().unwrap(), format!("\"{hash:032x}\""));
        assert_eq!(gz.to_str().unwrap(), format!("\"{hash:032x}-gzip\""));
    }

    #[test]
    fn if_none_match_compares_weakly_over_lists() {
        let ours = HeaderValue::from_static("\"abc\"");
        let matches = |v: &'static str| none_match([&HeaderValue::from_static(v)], &ours);
        assert!(matches("\"abc\""));
        assert!(matches("W/\"abc\""));
        assert!(matches("\"x\", W/\"y\" ,\"abc\""));
        assert!(matches("*"));
        assert!(matches("bogus, \"abc\""));
        assert!(!matches("\"abc-gzip\""));
        assert!(!matches("\"ab\""));
        assert!(!matches("abc"));
        assert!(!matches("\"abc"));
        assert!(!matches(""));
        let lines = [HeaderValue::from_static("\"x\""), HeaderValue::from_static("\"abc\"")];
        assert!(none_match(&lines, &ours), "several header lines");
        assert!(!none_match(&[] as &[HeaderValue], &ours));
    }

    #[test]
    fn gzip_round_trips() {
        let body = br#"{"data":{"events":[{"id":"x","title":"a"}]},"error":null}"#.repeat(100);
        let packed = gzip(&body);
        assert!(packed.len() < body.len() / 10, "{} of {}", packed.len(), body.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, body);
    }
}
