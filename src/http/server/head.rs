//! Checks each request head before hyper sees it.
//!
//! hyper answers a head it cannot take (larger than its read buffer, too many headers, bytes
//! that are not HTTP) with its own bodiless `431`/`414`/`400` before any of our code runs. The
//! socket under hyper ([`super::socket`]) therefore holds each head back until this check has
//! seen it whole: a good head is handed on as is, a bad one is answered in the contract's error
//! shape instead. The check parses with `httparse`, the parser hyper itself uses, with hyper's
//! limits, so what passes here is what hyper takes.
//!
//! Cost follows the input: a head whose end has not arrived is scanned for it once, byte by byte
//! as it arrives, and parsed again only when it has doubled since its last parse (a partial
//! parse is what finds garbage early), so a head trickling in costs linear time, not quadratic.
//! A request with a body (`Content-Length` or chunked) turns the check off for the rest of the
//! connection: the API takes no bodies, hyper reads them and the routes answer `405`/`404`.

use super::super::error::ApiError;

/// Largest request head taken; a larger one is answered `431` (or `414` when its request line
/// alone is that long). hyper's own read buffer is set above it, so hyper never refuses first.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a head (hyper's default, which hyper keeps); more are answered `431`.
pub const MAX_HEADERS: usize = 100;
/// Longest request target hyper takes (`u16::MAX - 1`); a longer one is a `414`.
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an HTTP/1 request: bad method, target, version, header syntax or framing.
    NotHttp,
    UriTooLong,
    HeadTooLarge,
}

impl Refusal {
    /// The label of `planfeed_http_connections_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotHttp => "bad_request",
            Self::UriTooLong => "uri_too_long",
            Self::HeadTooLarge => "head_too_large",
        }
    }

    fn error(self) -> ApiError {
        match self {
            Self::NotHttp => ApiError::bad_request(
                "bad_request",
                "the request is not a valid HTTP/1.1 request (request line, header syntax or framing)",
            ),
            Self::UriTooLong => ApiError::uri_too_long(MAX_URI_BYTES.min(MAX_HEAD_BYTES)),
            Self::HeadTooLarge => ApiError::headers_too_large(MAX_HEAD_BYTES),
        }
    }

    /// The whole response, in the contract's shape; the connection closes after it.
    pub fn response(self) -> Vec<u8> {
        let e = self.error();
        let body = e.body();
        let reason = e.status.canonical_reason().unwrap_or("");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            e.status.as_u16(),
            body.len()
        )
        .into_bytes()
    }
}

/// Where the check of one connection's incoming bytes stands.
#[derive(Debug, Default)]
pub struct HeadCheck {
    /// A request with a body was seen: the rest of the connection is hyper's alone.
    pass_through: bool,
    /// Bytes of the head in progress already scanned for its end.
    scanned: usize,
    /// Length of the head in progress at its last parse (0: not parsed yet).
    parsed: usize,
    /// A bad head found behind good ones: refused once hyper has taken those (it owes them
    /// their answers first).
    deferred: Option<Refusal>,
}

impl HeadCheck {
    pub fn pass_through(&self) -> bool {
        self.pass_through
    }

    /// The refusal of a bad head that followed good ones, due once they were handed on.
    pub fn take_deferred(&mut self) -> Option<Refusal> {
        self.deferred.take()
    }

    /// Checks `pending`, the bytes read and not checked yet, which start at a head's first byte.
    /// Returns how many of them hyper may have (whole good heads, or everything once a request
    /// with a body turned the check off); the rest is an unfinished head to wait for.
    pub fn check(&mut self, pending: &[u8]) -> Result<usize, Refusal> {
        let mut done = 0;
        while !self.pass_through {
            let head = &pending[done..];
            if head.is_empty() {
                return Ok(done);
            }
            // A head seen for the first time (the usual whole head) or grown enough is parsed at
            // once; otherwise it is parsed only once its end has arrived.
            let grown = self.parsed == 0 || head.len() >= 2 * self.parsed || head.len() > MAX_HEAD_BYTES;
            if !grown && !self.scan_for_end(head) {
                return Ok(done);
            }
            self.parsed = head.len();
            match parse(head) {
                Ok(Some((len, body))) => {
                    done += len;
                    self.pass_through = body;
                    self.scanned = 0;
                    self.parsed = 0;
                }
                Ok(None) => return Ok(done),
                Err(why) if done > 0 => {
                    self.deferred = Some(why);
                    return Ok(done);
                }
                Err(why) => return Err(why),
            }
        }
        Ok(pending.len())
    }

    /// Whether the head holds its end (an empty line), looking only at the bytes not scanned
    /// before (and the two before them, where a line break may have started). Bytes parsed
    /// instead of scanned are scanned on a later call: each byte is scanned once.
    fn scan_for_end(&mut self, head: &[u8]) -> bool {
        let from = self.scanned.saturating_sub(2);
        self.scanned = head.len();
        memchr::memchr_iter(b'\n', &head[from..]).any(|i| {
            let rest = &head[from + i + 1..];
            rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n")
        })
    }
}

/// Parses one head: `Some((length, has_body))` when whole and good, `None` when unfinished.
fn parse(head: &[u8]) -> Result<Option<(usize, bool)>, Refusal> {
    // Uninitialised slots: zeroing 100 of them per head cost more than parsing a short head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(len)) => {
            let path = req.path.unwrap_or_default();
            if path.len() > MAX_URI_BYTES {
                return Err(Refusal::UriTooLong);
            }
            if !plain_target(path) && warp::http::Uri::try_from(path).is_err() {
                return Err(Refusal::NotHttp);
            }
            let has_body = has_body(req.headers, req.version == Some(1))?
                || req.method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
            Ok(Some((len, has_body)))
        }
        Ok(httparse::Status::Partial) if head.len() > MAX_HEAD_BYTES => {
            // The request line alone is that long: the target is what is too long.
            Err(if memchr::memchr(b'\n', head).is_none() {
                Refusal::UriTooLong
            } else {
                Refusal::HeadTooLarge
            })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::HeadTooLarge),
        Err(_) => Err(Refusal::NotHttp),
    }
}

/// Bytes of an origin-form target that every URI parser takes in a path and in a query.
const PLAIN: [bool; 256] = {
    let mut map = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        map[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'/' | b'?'
                    | b'&'
                    | b'='
                    | b'%'
                    | b':'
                    | b'.'
                    | b'-'
                    | b'_'
                    | b'~'
                    | b'+'
                    | b','
                    | b';'
                    | b'!'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'@'
            );
        b += 1;
    }
    map
};

/// True for the usual target (`/search?starts_at=…`): a path of [`PLAIN`] bytes, which hyper's
/// URI parser takes as it is; only other targets are parsed to know whether hyper would refuse
/// them (a parse copies the target, a measurable share of a cached answer's cost).
fn plain_target(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| PLAIN[b as usize])
}

/// Whether the request carries a body, by the framing rules hyper applies (RFC 9112 §6): a
/// transfer coding must end in `chunked` (and needs HTTP/1.1); every `Content-Length` must hold
/// the same number.
fn has_body(headers: &[httparse::Header<'_>], http_11: bool) -> Result<bool, Refusal> {
    let mut length: Option<u64> = None;
    let mut coded = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !http_11 || !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::NotHttp);
            }
            coded = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for value in h.value.split(|&b| b == b',') {
                let n = std::str::from_utf8(value.trim_ascii())
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(Refusal::NotHttp)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Refusal::NotHttp);
                }
                length = Some(n);
            }
        }
    }
    Ok(coded || length.unwrap_or(0) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /search?starts_at=2021-01-01T00:00:00Z HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn good_heads_pass_whole_and_pipelined_and_the_unfinished_rest_waits() {
        let mut check = HeadCheck::default();
        let mut bytes = [GET, GET, &GET[..20]].concat();
        assert_eq!(check.check(&bytes), Ok(2 * GET.len()));
        bytes.drain(..2 * GET.len());
        bytes.extend_from_slice(&GET[20..]);
        assert_eq!(check.check(&bytes), Ok(GET.len()));
        // Leading empty lines are part of the head, as hyper skips them too.
        assert_eq!(HeadCheck::default().check(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Ok(22));
        assert_eq!(HeadCheck::default().check(b"GET / HTTP/1.0\n\n"), Ok(16));
    }

    #[test]
    fn a_bad_head_behind_good_ones_is_refused_after_them() {
        let mut check = HeadCheck::default();
        let bytes = [GET, b"HELLO\r\n\r\n"].concat();
        assert_eq!(check.check(&bytes), Ok(GET.len()));
        assert_eq!(check.take_deferred(), Some(Refusal::NotHttp));
        assert_eq!(check.take_deferred(), None);
    }

    #[test]
    fn bytes_that_are_not_http_are_refused_at_once() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"HELLO THERE\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(HeadCheck::default().check(garbage), Err(Refusal::NotHttp), "{garbage:?}");
        }
    }

    #[test]
    fn oversized_heads_and_targets_and_too_many_headers_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'b');
        assert_eq!(HeadCheck::default().check(&big), Err(Refusal::HeadTooLarge));
        let mut long = b"GET /".to_vec();
        long.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(HeadCheck::default().check(&long), Err(Refusal::UriTooLong));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(HeadCheck::default().check(many.as_bytes()), Err(Refusal::HeadTooLarge));
    }

    #[test]
    fn a_request_with_a_body_hands_the_rest_of_the_connection_to_hyper() {
        let mut check = HeadCheck::default();
        let post = b"POST /search HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\x00\x01";
        assert_eq!(check.check(post), Ok(post.len()));
        assert!(check.pass_through());
        assert_eq!(check.check(b"anything at all"), Ok(15));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(HeadCheck::default().check(chunked), Ok(chunked.len()));
        let zero = b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let mut check = HeadCheck::default();
        assert_eq!(check.check(zero), Ok(zero.len()));
        assert!(!check.pass_through());
    }

    #[test]
    fn a_head_trickling_in_is_parsed_a_logarithmic_number_of_times() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b"x-a: 1\r\n".as_slice(), 90).flatten());
        head.extend_from_slice(b"\r\n");
        let mut check = HeadCheck::default();
        let mut parses = 0;
        for end in 1..=head.len() {
            let before = check.parsed;
            let ok = check.check(&head[..end]).unwrap();
            if check.parsed != before || ok > 0 {
                parses += 1;
            }
            assert_eq!(ok, if end == head.len() { head.len() } else { 0 }, "at {end}");
        }
        assert!(parses <= 12, "{parses} parses for {} bytes", head.len());
    }

    #[test]
    fn plain_targets_are_exactly_those_the_uri_parser_takes_unparsed() {
        for target in ["/search?starts_at=2021-01-01T00%3A00%3A00Z&ends_at=x", "/", "/a;b=c/(d)*@!$'~+,"] {
            assert!(plain_target(target), "{target}");
            assert!(warp::http::Uri::try_from(target).is_ok(), "{target}");
        }
        for target in ["*", "http://x/", "/a b", "/a\"b", "/a#b", "/a{b}", "/\u{e9}"] {
            assert!(!plain_target(target), "{target}");
        }
        // Not plain, so parsed: what the parser refuses is refused.
        let refused = b"GET /a<b HTTP/1.1\r\n\r\n";
        assert_eq!(HeadCheck::default().check(refused).is_err(), warp::http::Uri::try_from("/a<b").is_err());
    }

    #[test]
    fn refusals_answer_in_the_contract_shape() {
        let text = String::from_utf8(Refusal::HeadTooLarge.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
        let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["data"], serde_json::Value::Null);
        assert_eq!(body["error"]["code"], "headers_too_large");
        let text = String::from_utf8(Refusal::NotHttp.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    }
}
