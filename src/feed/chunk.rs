//! Cutting a streamed feed body into chunks of whole base plans.
//!
//! The chunker does not parse XML: it finds the root element (to reject bodies that are not the
//! feed early) and then only looks for the open and close tags of base plans (`base_plan` or
//! `base_event`). Chunk boundaries depend on the body alone, never on how it was split into
//! pieces. Tag names inside comments or CDATA sections would be mistaken for tags; the provider
//! sends neither.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::FeedError;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const ROOTS: [&str; 2] = ["planList", "eventList"];
/// Longest prolog element name we wait for before calling the root wrong.
const MAX_NAME: usize = 64;

#[derive(Debug)]
enum State {
    /// Before the root element: whitespace, BOM, XML declaration, comments, doctype.
    Prolog,
    /// Inside the root element (`root` is its name).
    Body { root: &'static str },
    /// A previous call failed; every later call reports the same error.
    Failed(FeedError),
}

/// Splits a streamed body into chunks of whole base plans.
///
/// Memory stays bounded by one chunk (about `target_chunk_bytes` plus one base plan) plus one
/// partial base plan (at most `max_element_bytes`).
#[derive(Debug)]
pub struct Chunker {
    target: usize,
    max_element: usize,
    /// Bytes received and not yet handed out.
    buf: BytesMut,
    state: State,
    /// Where the search for the next base plan tag resumes, in `buf`.
    scan: usize,
    /// End of the last complete base plan in `buf`; 0 when none since the last cut.
    boundary: usize,
    /// Start of the base plan whose open tag was seen but whose close tag was not.
    open_base: Option<usize>,
    /// The root element was self-closing (`<planList/>`).
    root_closed: bool,
    bytes_seen: u64,
    finder: memmem::Finder<'static>,
}

impl Chunker {
    /// `target_chunk_bytes`: cut a chunk at the first base plan end once that many bytes are
    /// buffered. `max_element_bytes`: fail when the bytes after the last complete base plan (one
    /// base plan in the making) grow beyond this.
    pub fn new(target_chunk_bytes: usize, max_element_bytes: usize) -> Self {
        Self {
            target: target_chunk_bytes,
            max_element: max_element_bytes,
            buf: BytesMut::new(),
            state: State::Prolog,
            scan: 0,
            boundary: 0,
            open_base: None,
            root_closed: false,
            bytes_seen: 0,
            finder: memmem::Finder::new(b"base_"),
        }
    }

    /// Feeds the next piece of the body (split anywhere, even mid-tag) and returns the chunks now
    /// complete. Each chunk holds whole base plans only; the first one also carries the prolog and
    /// the root/output open tags.
    ///
    /// After an error every later call returns the same error. When an error is found while
    /// chunks were completed by the same piece, those chunks are returned and the error comes
    /// with the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Bytes>, FeedError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        self.bytes_seen += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        match self.advance(&mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.state = State::Failed(e.clone());
                if out.is_empty() {
                    Err(e)
                } else {
                    Ok(out)
                }
            }
        }
    }

    /// Hands out the complete base plans buffered so far, whatever their size. Call it before
    /// [`finish`](Self::finish) to keep the complete base plans of a body that turns out to be
    /// truncated.
    pub fn flush(&mut self) -> Option<Bytes> {
        if matches!(self.state, State::Body { .. }) && self.boundary > 0 {
            Some(self.cut())
        } else {
            None
        }
    }

    /// End of the body. `Ok(Some(chunk))` with the last base plans, or `Ok(None)` when none are
    /// left, if the root element was closed. Otherwise the partial base plan is dropped and the
    /// error says why: `Truncated` (body stopped before the root closed), `Empty`, `NotXml`,
    /// `WrongShape`, `ElementTooLarge`.
    pub fn finish(mut self) -> Result<Option<Bytes>, FeedError> {
        let truncated = FeedError::Truncated { bytes: self.bytes_seen };
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Prolog => {
                let b = self.buf.strip_prefix(BOM).unwrap_or(&self.buf);
                if b.iter().all(|&c| is_ws(c)) {
                    Err(FeedError::Empty)
                } else {
                    Err(truncated)
                }
            }
            State::Body { root } => {
                if self.open_base.is_some() {
                    return Err(truncated);
                }
                let closed = self.root_closed || {
                    let tail = &self.buf[self.boundary..];
                    let close = format!("</{root}");
                    memmem::find(tail, close.as_bytes()).is_some()
                };
                if !closed {
                    Err(truncated)
                } else if self.boundary > 0 {
                    Ok(Some(self.buf.split().freeze()))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Total bytes pushed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.bytes_seen
    }

    fn advance(&mut self, out: &mut Vec<Bytes>) -> Result<(), FeedError> {
        if matches!(self.state, State::Prolog) && !self.prolog()? {
            return self.check_pending();
        }
        self.scan_body(out);
        self.check_pending()
    }

    fn check_pending(&self) -> Result<(), FeedError> {
        if self.buf.len() - self.boundary > self.max_element {
            return Err(FeedError::ElementTooLarge { limit: self.max_element });
        }
        Ok(())
    }

    /// Walks the prolog up to the root element. `Ok(true)` once the root open tag is complete,
    /// `Ok(false)` when more bytes are needed.
    fn prolog(&mut self) -> Result<bool, FeedError> {
        let b = &self.buf[..];
        let mut i = 0;
        if b.len() < BOM.len() && BOM.starts_with(b) {
            return Ok(false);
        }
        if b.starts_with(BOM) {
            i = BOM.len();
        }
        loop {
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i == b.len() {
                // Only whitespace so far: nothing worth keeping (the BOM is not needed either).
                if i > 0 {
                    self.buf.clear();
                }
                return Ok(false);
            }
            if b[i] != b'<' {
                let end = (i + 32).min(b.len());
                let head = String::from_utf8_lossy(&b[i..end]);
                return Err(FeedError::NotXml(format!("body starts with {head:?}, not with '<'")));
            }
            let rest = &b[i..];
            if rest.len() < 2 {
                return Ok(false);
            }
            match rest[1] {
                b'?' => match memmem::find(&rest[2..], b"?>") {
                    Some(j) => i += 2 + j + 2,
                    None => return Ok(false),
                },
                b'!' => {
                    if rest.len() < 4 {
                        return Ok(false);
                    }
                    if rest.starts_with(b"<!--") {
                        match memmem::find(&rest[4..], b"-->") {
                            Some(j) => i += 4 + j + 3,
                            None => return Ok(false),
                        }
                    } else {
                        // `<!DOCTYPE ...>`, maybe with an internal subset in brackets.
                        let mut depth = 0usize;
                        let mut end = None;
                        for (k, &c) in rest.iter().enumerate().skip(2) {
                            match c {
                                b'[' => depth += 1,
                                b']' => depth = depth.saturating_sub(1),
                                b'>' if depth == 0 => {
                                    end = Some(k);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        match end {
                            Some(k) => i += k + 1,
                            None => return Ok(false),
                        }
                    }
                }
                _ => {
                    let name_end = rest[1..].iter().position(|&c| is_ws(c) || c == b'/' || c == b'>');
                    let name = &rest[1..name_end.map_or(rest.len(), |n| n + 1)];
                    let wrong = || {
                        let shown: String = String::from_utf8_lossy(name).chars().take(MAX_NAME).collect();
                        FeedError::WrongShape(format!("unexpected root element <{shown}>"))
                    };
                    let Some(_) = name_end else {
                        if name.len() > MAX_NAME || !ROOTS.iter().any(|r| r.as_bytes().starts_with(name)) {
                            return Err(wrong());
                        }
                        return Ok(false);
                    };
                    let Some(root) = ROOTS.iter().find(|r| r.as_bytes() == name) else {
                        return Err(wrong());
                    };
                    let Some((end, self_closing)) = tag_end(b, i + 1 + name.len()) else {
                        return Ok(false);
                    };
                    self.state = State::Body { root };
                    self.root_closed = self_closing;
                    self.scan = end;
                    return Ok(true);
                }
            }
        }
    }

    /// Finds base plan open/close tags from `self.scan` on, cutting chunks as boundaries pass
    /// the target size.
    fn scan_body(&mut self, out: &mut Vec<Bytes>) {
        loop {
            let Some(off) = self.finder.find(&self.buf[self.scan..]) else {
                // A needle split across pieces is found again next time.
                self.scan = self.scan.max(self.buf.len().saturating_sub(4));
                return;
            };
            let buf = &self.buf[..];
            let h = self.scan + off;
            let is_close = h >= 2 && &buf[h - 2..h] == b"</";
            let is_open = !is_close && h >= 1 && buf[h - 1] == b'<';
            if !is_open && !is_close {
                self.scan = h + 5;
                continue;
            }
            let rest = &buf[h + 5..];
            let name_len = if rest.starts_with(b"plan") {
                4
            } else if rest.starts_with(b"event") {
                5
            } else if rest.len() < 5 && (b"plan".starts_with(rest) || b"event".starts_with(rest)) {
                self.scan = h;
                return;
            } else {
                self.scan = h + 5;
                continue;
            };
            let after = h + 5 + name_len;
            let Some(&delim) = buf.get(after) else {
                self.scan = h;
                return;
            };
            if !(is_ws(delim) || delim == b'>' || delim == b'/') {
                self.scan = h + 5;
                continue;
            }
            if is_close {
                let Some(j) = memchr::memchr(b'>', &buf[after..]) else {
                    self.scan = h;
                    return;
                };
                self.end_base(after + j + 1, out);
            } else {
                let Some((end, self_closing)) = tag_end(buf, after) else {
                    self.scan = h;
                    return;
                };
                if self_closing {
                    self.end_base(end, out);
                } else {
                    self.open_base = Some(h - 1);
                    self.scan = end;
                }
            }
        }
    }

    fn end_base(&mut self, end: usize, out: &mut Vec<Bytes>) {
        self.open_base = None;
        self.boundary = end;
        self.scan = end;
        if self.boundary >= self.target {
            out.push(self.cut());
        }
    }

    /// Splits off everything up to the last boundary.
    fn cut(&mut self) -> Bytes {
        let at = self.boundary;
        let chunk = self.buf.split_to(at).freeze();
        self.scan -= at;
        self.open_base = self.open_base.map(|s| s - at);
        self.boundary = 0;
        chunk
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// End of the tag whose name ends at `from` (one past its `>`), skipping quoted attribute values,
/// and whether it is self-closing. `None` when the tag is not complete yet.
fn tag_end(buf: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut i = from;
    loop {
        let j = memchr::memchr3(b'>', b'"', b'\'', &buf[i..])?;
        let c = buf[i + j];
        if c == b'>' {
            let end = i + j + 1;
            return Some((end, end >= 2 && buf[end - 2] == b'/'));
        }
        let q = memchr::memchr(c, &buf[i + j + 1..])?;
        i += j + 1 + q + 1;
    }
}
