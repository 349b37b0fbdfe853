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
    prolog: PrologScan,
}

/// Where the walk through the prolog stands between pushes, so that no byte of it is looked at
/// more than about once whatever the size of the pieces (a 60 MB doctype in 4 KB pieces must not
/// be rescanned from its start 15,000 times).
#[derive(Debug, Default)]
struct PrologScan {
    /// Start of the first prolog item (declaration, comment, doctype, root tag) not passed yet.
    at: usize,
    /// Where the search for the end of the item at `at` resumes.
    resume: usize,
    /// `[` nesting of a doctype's internal subset at `resume`.
    depth: usize,
    /// What a doctype's scan is inside of at `resume`.
    in_doctype: Within,
    /// The quote open at `resume` inside the root tag.
    quote: Option<u8>,
    /// A declaration, comment or doctype was seen.
    seen: bool,
    /// Bytes looked at so far: what the tests hold linear.
    scanned: u64,
}

/// Parts of a doctype where `[`, `]` and `>` mean nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Within {
    #[default]
    Markup,
    Comment,
    Pi,
    Quote(u8),
}

/// The first position in `hay` of any byte of `set`.
fn memchr_any(hay: &[u8], set: &[u8]) -> Option<usize> {
    let mut table = [false; 256];
    set.iter().for_each(|&c| table[usize::from(c)] = true);
    hay.iter().position(|&c| table[usize::from(c)])
}

impl PrologScan {
    /// End (one past) of the item whose terminator `needle` is searched from `start` on.
    fn find_end(&mut self, b: &[u8], start: usize, needle: &[u8]) -> Option<usize> {
        // A terminator split across pieces is found again: back up by its length minus one.
        let from = start.max(self.resume.saturating_sub(needle.len() - 1)).min(b.len());
        let found = memmem::find(&b[from..], needle);
        self.scanned += found.map_or(b.len() - from, |j| j + needle.len()) as u64;
        self.resume = b.len();
        found.map(|j| from + j + needle.len())
    }

    /// End (one past) of a doctype, whose `>` only counts outside `[…]`, comments, processing
    /// instructions and quoted literals (which may hold any of `[`, `]` and `>`).
    fn doctype_end(&mut self, b: &[u8], start: usize) -> Option<usize> {
        let mut i = start.max(self.resume);
        loop {
            let (found, step) = match self.in_doctype {
                Within::Markup => {
                    let Some(j) = memchr_any(&b[i..], b"[]><\"'") else { break };
                    (i + j, 1)
                }
                Within::Quote(q) => {
                    let Some(j) = memchr::memchr(q, &b[i..]) else { break };
                    self.in_doctype = Within::Markup;
                    self.scanned += (j + 1) as u64;
                    i += j + 1;
                    continue;
                }
                Within::Comment | Within::Pi => {
                    let needle: &[u8] = if self.in_doctype == Within::Comment { b"-->" } else { b"?>" };
                    let from = i.saturating_sub(needle.len() - 1).max(start);
                    let Some(j) = memmem::find(&b[from..], needle) else { break };
                    self.in_doctype = Within::Markup;
                    self.scanned += (from + j + needle.len()).saturating_sub(i) as u64;
                    i = from + j + needle.len();
                    continue;
                }
            };
            self.scanned += (found + step - i) as u64;
            i = found + step;
            match b[found] {
                b'[' => self.depth += 1,
                b']' => self.depth = self.depth.saturating_sub(1),
                b'>' if self.depth == 0 => return Some(i),
                b'>' => {}
                b'"' | b'\'' => self.in_doctype = Within::Quote(b[found]),
                _ => {
                    // `<`: a comment or PI opens, or a markup declaration (`<!ENTITY …>`) does.
                    let rest = &b[found..];
                    if rest.len() < 4 {
                        // Decided once the next piece arrives.
                        self.resume = found;
                        return None;
                    }
                    if rest.starts_with(b"<!--") {
                        self.in_doctype = Within::Comment;
                        i = found + 4;
                    } else if rest.starts_with(b"<?") {
                        self.in_doctype = Within::Pi;
                        i = found + 2;
                    }
                }
            }
        }
        self.scanned += (b.len() - i) as u64;
        self.resume = b.len();
        None
    }

    /// The root element opening at `b[i]` (`<` there): its name, where its open tag ends and
    /// whether it closes itself; `None` while more bytes are needed; an error for a name that is
    /// not one of [`ROOTS`].
    fn root_open(&mut self, b: &[u8], i: usize) -> Result<Option<(&'static str, usize, bool)>, FeedError> {
        let rest = &b[i..];
        let window = &rest[1..rest.len().min(MAX_NAME + 2)];
        let name_end = window.iter().position(|&c| is_ws(c) || c == b'/' || c == b'>');
        let name = &window[..name_end.unwrap_or(window.len())];
        let wrong = || {
            let shown: String = String::from_utf8_lossy(name).chars().take(MAX_NAME).collect();
            FeedError::WrongShape(format!("unexpected root element <{shown}>"))
        };
        let Some(_) = name_end else {
            if name.len() > MAX_NAME || !ROOTS.iter().any(|r| r.as_bytes().starts_with(name)) {
                return Err(wrong());
            }
            return Ok(None);
        };
        let Some(root) = ROOTS.iter().find(|r| r.as_bytes() == name) else {
            return Err(wrong());
        };
        self.resume = self.resume.max(i + 1 + name.len());
        Ok(self.root_tag_end(b).map(|(end, self_closing)| (*root, end, self_closing)))
    }

    /// End (one past) of the root open tag and whether it is self-closing, skipping quoted
    /// attribute values; resumes inside a quote.
    fn root_tag_end(&mut self, b: &[u8]) -> Option<(usize, bool)> {
        let mut i = self.resume;
        loop {
            if let Some(q) = self.quote {
                let Some(j) = memchr::memchr(q, &b[i..]) else { break };
                self.scanned += (j + 1) as u64;
                i += j + 1;
                self.quote = None;
            }
            let Some(j) = memchr::memchr3(b'>', b'"', b'\'', &b[i..]) else { break };
            self.scanned += (j + 1) as u64;
            i += j + 1;
            match b[i - 1] {
                b'>' => return Some((i, i >= 2 && b[i - 2] == b'/')),
                q => self.quote = Some(q),
            }
        }
        self.scanned += (b.len() - i) as u64;
        self.resume = b.len();
        None
    }
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
            prolog: PrologScan::default(),
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

    /// Bytes held: pushed and not handed out in a chunk yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn advance(&mut self, out: &mut Vec<Bytes>) -> Result<(), FeedError> {
        if matches!(self.state, State::Prolog) && !self.prolog()? {
            return self.check_pending();
        }
        self.scan_body(out)?;
        self.check_pending()
    }

    /// The base plan in the making (or, between base plans, whatever follows the last one) must
    /// stay within the limit.
    fn check_pending(&self) -> Result<(), FeedError> {
        if self.buf.len() - self.open_base.unwrap_or(self.boundary) > self.max_element {
            return Err(FeedError::ElementTooLarge { limit: self.max_element });
        }
        Ok(())
    }

    /// Walks the prolog up to the root element. `Ok(true)` once the root open tag is complete,
    /// `Ok(false)` when more bytes are needed. Resumes where the previous call stopped (see
    /// [`PrologScan`]), so a prolog sent in small pieces costs what it costs sent whole.
    fn prolog(&mut self) -> Result<bool, FeedError> {
        let b = &self.buf[..];
        let p = &mut self.prolog;
        if b.len() < BOM.len() && BOM.starts_with(b) {
            return Ok(false);
        }
        if p.at == 0 && b.starts_with(BOM) {
            p.at = BOM.len();
            p.resume = p.at;
        }
        loop {
            let from = p.at;
            let i = b[from..].iter().position(|&c| !is_ws(c)).map_or(b.len(), |n| from + n);
            p.scanned += (i - from) as u64;
            p.at = i;
            p.resume = p.resume.max(i);
            if i == b.len() {
                // Only whitespace so far: nothing worth keeping (the BOM is not needed either).
                if i > 0 && !p.seen {
                    self.buf.clear();
                    *p = PrologScan { scanned: p.scanned, ..PrologScan::default() };
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
            p.seen = true;
            let end = match rest[1] {
                b'?' => p.find_end(b, i + 2, b"?>"),
                b'!' if rest.len() < 4 => return Ok(false),
                b'!' if rest.starts_with(b"<!--") => p.find_end(b, i + 4, b"-->"),
                // `<!DOCTYPE ...>`, maybe with an internal subset in brackets.
                b'!' => p.doctype_end(b, i + 2),
                _ => {
                    let Some((root, end, self_closing)) = p.root_open(b, i)? else {
                        return Ok(false);
                    };
                    self.state = State::Body { root };
                    self.root_closed = self_closing;
                    self.scan = end;
                    return Ok(true);
                }
            };
            let Some(end) = end else {
                return Ok(false);
            };
            *p = PrologScan { at: end, resume: end, seen: true, scanned: p.scanned, ..PrologScan::default() };
        }
    }

    /// Finds base plan open/close tags from `self.scan` on, cutting chunks as boundaries pass
    /// the target size.
    fn scan_body(&mut self, out: &mut Vec<Bytes>) -> Result<(), FeedError> {
        loop {
            let Some(off) = self.finder.find(&self.buf[self.scan..]) else {
                // A needle split across pieces is found again next time.
                self.scan = self.scan.max(self.buf.len().saturating_sub(4));
                return Ok(());
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
                return Ok(());
            } else {
                self.scan = h + 5;
                continue;
            };
            let after = h + 5 + name_len;
            let Some(&delim) = buf.get(after) else {
                self.scan = h;
                return Ok(());
            };
            if !(is_ws(delim) || delim == b'>' || delim == b'/') {
                self.scan = h + 5;
                continue;
            }
            if is_close {
                let Some(j) = memchr::memchr(b'>', &buf[after..]) else {
                    self.scan = h;
                    return Ok(());
                };
                let start = self.open_base.unwrap_or(h - 2);
                self.end_base(start, after + j + 1, out)?;
            } else {
                let Some((end, self_closing)) = tag_end(buf, after) else {
                    self.scan = h;
                    return Ok(());
                };
                if self_closing {
                    self.end_base(h - 1, end, out)?;
                } else {
                    self.open_base = Some(h - 1);
                    self.scan = end;
                }
            }
        }
    }

    fn end_base(&mut self, start: usize, end: usize, out: &mut Vec<Bytes>) -> Result<(), FeedError> {
        if end - start > self.max_element {
            return Err(FeedError::ElementTooLarge { limit: self.max_element });
        }
        self.open_base = None;
        self.boundary = end;
        self.scan = end;
        if self.boundary >= self.target {
            out.push(self.cut());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::domain::Plan;
    use crate::feed::parse::tests::{provider, FIXTURES};
    use crate::feed::{parse_chunk, parse_document};

    /// Feeds `pieces` and collects the chunks; the error (if any) of `finish` comes last.
    fn run(chunker: &mut Chunker, pieces: &[&[u8]]) -> (Vec<Bytes>, Result<(), FeedError>) {
        let mut chunks = Vec::new();
        for piece in pieces {
            match chunker.push(piece) {
                Ok(c) => chunks.extend(c),
                Err(e) => return (chunks, Err(e)),
            }
        }
        (chunks, Ok(()))
    }

    fn chunk_all(body: &[u8], target: usize, pieces: &[&[u8]]) -> (Vec<Bytes>, Result<(), FeedError>) {
        let mut chunker = Chunker::new(target, 1 << 20);
        let (mut chunks, pushed) = run(&mut chunker, pieces);
        assert_eq!(chunker.bytes_seen(), pieces.iter().map(|p| p.len() as u64).sum::<u64>());
        debug_assert_eq!(body.len(), pieces.iter().map(|p| p.len()).sum::<usize>());
        if let Err(e) = pushed {
            return (chunks, Err(e));
        }
        match chunker.finish() {
            Ok(last) => {
                chunks.extend(last);
                (chunks, Ok(()))
            }
            Err(e) => (chunks, Err(e)),
        }
    }

    fn plans_of(chunks: &[Bytes]) -> Vec<Plan> {
        let p: Arc<str> = provider();
        chunks
            .iter()
            .flat_map(|c| {
                let parsed = parse_chunk(&p, c);
                assert_eq!(parsed.error, None, "{}", String::from_utf8_lossy(c));
                parsed.plans
            })
            .collect()
    }

    fn random_split<'a>(body: &'a [u8], rng: &mut StdRng) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(64));
            let (a, b) = rest.split_at(n);
            pieces.push(a);
            rest = b;
        }
        pieces
    }

    #[test]
    fn every_split_gives_the_same_chunks_and_plans() {
        let mut rng = StdRng::seed_from_u64(7);
        for (name, body) in FIXTURES {
            let whole = parse_document(&provider(), body).unwrap();
            assert!(!whole.plans.is_empty());
            for target in [0, 300, 1 << 20] {
                let (reference, r) = chunk_all(body, target, &[body]);
                assert_eq!(r, Ok(()), "{name}");
                assert_eq!(plans_of(&reference), whole.plans, "{name} target {target}");

                let bytewise: Vec<&[u8]> = body.chunks(1).collect();
                let (chunks, r) = chunk_all(body, target, &bytewise);
                assert_eq!(r, Ok(()), "{name}");
                assert_eq!(chunks, reference, "{name} byte by byte, target {target}");

                for split in 1..body.len() {
                    let (chunks, r) = chunk_all(body, target, &[&body[..split], &body[split..]]);
                    assert_eq!(r, Ok(()), "{name} split at {split}");
                    assert_eq!(chunks, reference, "{name} split at {split}, target {target}");
                }
                for _ in 0..50 {
                    let pieces = random_split(body, &mut rng);
                    let (chunks, r) = chunk_all(body, target, &pieces);
                    assert_eq!(r, Ok(()), "{name}");
                    assert_eq!(chunks, reference, "{name} random split, target {target}");
                }
            }
        }
    }

    #[test]
    fn a_large_prolog_in_small_pieces_is_scanned_once() {
        // A declaration, a doctype holding comments and brackets, a comment, a PI, then the root
        // with a quoted `>` in an attribute: each split must be found again, never rescanned.
        let filler = "<!-- ]]> [[ x -->".repeat(60_000);
        let prolog = format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE planList [ {filler} <!ENTITY a \"[b]\"> ]>\n<!-- {} -->\n<?pi {} ?>\n",
            "c".repeat(1 << 20),
            "p".repeat(1 << 20)
        );
        let root = format!("<planList note=\"{}>\" version=\"1.0\"><output>", "q".repeat(1 << 20));
        let base_plans = r#"<base_plan base_plan_id="1" sell_mode="online" title="A">
              <plan plan_id="1" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00"/>
            </base_plan><base_plan base_plan_id="2" sell_mode="online" title="B">
              <plan plan_id="2" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00"/>
            </base_plan>"#;
        let body = format!("{prolog}{root}{base_plans}</output></planList>");
        let bytes = body.as_bytes();
        for piece in [4096, 1, 4095] {
            // One byte pieces over 3+ MB are slow in debug builds: feed single bytes over the first
            // 64 KB only, then 4 KB pieces.
            let mut chunker = Chunker::new(1 << 20, 8 << 20);
            let mut chunks = Vec::new();
            let (head, tail) = bytes.split_at(if piece == 1 { 64 << 10 } else { 0 });
            for p in head.chunks(piece).chain(tail.chunks(4096)) {
                chunks.extend(chunker.push(p).unwrap());
            }
            let scanned = chunker.prolog.scanned;
            let prolog_len = (prolog.len() + root.len()) as u64;
            assert!(
                scanned <= prolog_len + 4096,
                "piece {piece}: {scanned} bytes scanned for a {prolog_len}-byte prolog"
            );
            // The counter does count: about every byte of the prolog once.
            assert!(scanned >= prolog_len * 9 / 10, "piece {piece}: {scanned} of {prolog_len}");
            chunks.extend(chunker.finish().unwrap());
            assert_eq!(plans_of(&chunks).len(), 2, "piece {piece}");
        }
    }

    #[test]
    fn a_prolog_beyond_the_element_limit_is_an_error() {
        let mut chunker = Chunker::new(1 << 10, 64 << 10);
        let mut last = Ok(Vec::new());
        let piece = format!("<!DOCTYPE planList [ {} ", "<!-- x -->".repeat(409));
        chunker.push(piece.as_bytes()).unwrap();
        for _ in 0..20 {
            last = chunker.push(b"<!-- padding padding padding -->".repeat(128).as_slice());
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(FeedError::ElementTooLarge { limit: 64 << 10 }));
    }

    #[test]
    fn a_tiny_target_cuts_one_chunk_per_base_plan() {
        let body = FIXTURES[0].1;
        let (chunks, r) = chunk_all(body, 1, &[body]);
        assert_eq!(r, Ok(()));
        // Three base plans, one per chunk; the root close tags after the last one carry no plans.
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].starts_with(b"<?xml"));
        assert!(chunks.iter().all(|c| c.ends_with(b"</base_plan>")));
        let per_chunk: Vec<usize> = chunks.iter().map(|c| parse_chunk(&provider(), c).plans.len()).collect();
        assert_eq!(per_chunk, vec![1, 2, 1]);
        let tail = &body[chunks.concat().len()..];
        assert_eq!(&body[..body.len() - tail.len()], &chunks.concat()[..]);
        assert_eq!(
            String::from_utf8_lossy(tail).split_whitespace().collect::<String>(),
            "</output></planList>"
        );

        // A large target keeps everything in one chunk.
        let (chunks, _) = chunk_all(body, 1 << 20, &[body]);
        assert_eq!(chunks.len(), 1);
    }

    #[test]
    fn self_closing_base_plans_and_roots_are_boundaries() {
        let body = b"<eventList><output><base_event base_event_id=\"1\" title=\"a/>b\"/>\
                     <base_event base_event_id=\"2\"><event event_id=\"3\" event_start_date=\"2021-01-01T00:00:00\" \
                     event_end_date=\"2021-01-01T01:00:00\"/></base_event></output></eventList>";
        let (chunks, r) = chunk_all(body, 1, &[body]);
        assert_eq!(r, Ok(()));
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].ends_with(b"title=\"a/>b\"/>"));
        let plans = plans_of(&chunks);
        assert_eq!(plans.len(), 1);
        assert_eq!((plans[0].key.base_plan_id, plans[0].key.plan_id), (2, 3));

        let (chunks, r) = chunk_all(b"<planList/>", 1, &[b"<planList/>"]);
        assert_eq!((chunks.len(), r), (0, Ok(())));
    }

    #[test]
    fn a_truncated_body_keeps_only_the_complete_base_plans() {
        let body = FIXTURES[0].1;
        let cut = memmem::find(body, b"<zone zone_id=\"186\" capacity=\"16\"").unwrap();
        let (chunks, r) = chunk_all(&body[..cut], 1, &[&body[..cut]]);
        assert_eq!(r, Err(FeedError::Truncated { bytes: cut as u64 }));
        let keys: Vec<_> = plans_of(&chunks).iter().map(|p| (p.key.base_plan_id, p.key.plan_id)).collect();
        assert_eq!(keys, vec![(291, 291), (322, 1642), (322, 1643)]);

        // With a large target, `flush` hands out the complete base plans before `finish` fails.
        let mut chunker = Chunker::new(1 << 20, 1 << 20);
        assert!(chunker.push(&body[..cut]).unwrap().is_empty());
        let flushed = chunker.flush().unwrap();
        assert_eq!(plans_of(&[flushed]).len(), 3);
        assert_eq!(chunker.finish(), Err(FeedError::Truncated { bytes: cut as u64 }));

        // Cut anywhere before the root closes: always Truncated, and every emitted plan is whole.
        let end = memmem::find(body, b"</planList").unwrap();
        for cut in (1..end).step_by(7) {
            let (chunks, r) = chunk_all(&body[..cut], 1, &[&body[..cut]]);
            assert_eq!(r, Err(FeedError::Truncated { bytes: cut as u64 }), "cut at {cut}");
            let plans = plans_of(&chunks);
            assert!(plans.len() <= 4);
        }
        let doc = parse_document(&provider(), &body[..cut]).unwrap();
        assert_eq!(doc.plans.len(), 3);
        assert_eq!(doc.error, Some(FeedError::Truncated { bytes: cut as u64 }));
    }

    #[test]
    fn bodies_that_are_not_the_feed_are_rejected_early() {
        let err = |body: &[u8]| chunk_all(body, 1, &[body]).1.unwrap_err();
        assert_eq!(err(b""), FeedError::Empty);
        assert_eq!(err(b" \r\n\t "), FeedError::Empty);
        assert_eq!(err(b"\xEF\xBB\xBF  \n"), FeedError::Empty);
        assert_eq!(
            err(b"{\"a\":1}"),
            FeedError::NotXml("body starts with \"{\\\"a\\\":1}\", not with '<'".into())
        );
        assert_eq!(err(b"  hello"), FeedError::NotXml("body starts with \"hello\", not with '<'".into()));
        assert_eq!(
            err(b"<html><body>503</body></html>"),
            FeedError::WrongShape("unexpected root element <html>".into())
        );
        assert_eq!(
            err(b"<?xml version=\"1.0\"?>\n<!-- hi --><!DOCTYPE x [<!ENTITY a \"b\">]>\n<foo/>"),
            FeedError::WrongShape("unexpected root element <foo>".into())
        );
        assert_eq!(err(b"<?xml version=\"1.0\"?>"), FeedError::Truncated { bytes: 21 });
        assert_eq!(err(b"<planList><output>"), FeedError::Truncated { bytes: 18 });

        // Detected on the first piece, before the rest arrives.
        let mut chunker = Chunker::new(1, 1 << 20);
        assert_eq!(chunker.push(b"<h"), Err(FeedError::WrongShape("unexpected root element <h>".into())));
        assert!(chunker.push(b"tml>").is_err(), "errors are sticky");
        let mut chunker = Chunker::new(1, 1 << 20);
        assert!(matches!(chunker.push(b"\n{"), Err(FeedError::NotXml(_))));

        for body in [&b""[..], b"{\"a\":1}", b"<html></html>"] {
            assert!(parse_document(&provider(), body).is_err());
        }
    }

    #[test]
    fn an_oversized_base_plan_is_an_error() {
        let body = FIXTURES[0].1;
        // Base plan 322 is the largest of the fixture.
        let start = memmem::find(body, b"<base_plan base_plan_id=\"322\"").unwrap();
        let end = start + memmem::find(&body[start..], b"</base_plan>").unwrap() + 12;
        let size = end - start;
        for piece in [1, 50, body.len()] {
            let mut chunker = Chunker::new(1, size - 1);
            let mut emitted = Vec::new();
            let mut error = None;
            for p in body.chunks(piece) {
                match chunker.push(p) {
                    Ok(c) => emitted.extend(c),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let too_large = FeedError::ElementTooLarge { limit: size - 1 };
            // When the failing piece completed chunks, they come first and the error next.
            let error = error.or_else(|| chunker.push(b"").err());
            assert_eq!(error, Some(too_large.clone()), "pieces of {piece}");
            assert_eq!(plans_of(&emitted).len(), 1, "base plan 291 came before, pieces of {piece}");
            assert_eq!(chunker.finish(), Err(too_large));

            let mut chunker = Chunker::new(1, size);
            let (chunks, r) = run(&mut chunker, &body.chunks(piece).collect::<Vec<_>>());
            assert_eq!(r, Ok(()));
            assert_eq!(chunker.finish(), Ok(None));
            assert_eq!(plans_of(&chunks).len(), 4);
        }
    }

    #[test]
    fn malformed_xml_inside_a_base_plan_costs_only_that_base_plan() {
        let body = String::from_utf8(FIXTURES[0].1.to_vec()).unwrap();
        let broken =
            body.replace("<plan plan_start_date=\"2021-02-11", "<plan <<< plan_start_date=\"2021-02-11");
        let (chunks, r) = chunk_all(broken.as_bytes(), 1, &[broken.as_bytes()]);
        assert_eq!(r, Ok(()));
        let parsed: Vec<_> = chunks.iter().map(|c| parse_chunk(&provider(), c)).collect();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].plans.len(), 1);
        assert!(matches!(parsed[1].error, Some(FeedError::Malformed(_))), "{:?}", parsed[1].error);
        assert_eq!(parsed[2].plans.len(), 1);
        assert_eq!(parsed[2].error, None);

        let doc = parse_document(&provider(), broken.as_bytes()).unwrap();
        assert!(matches!(doc.error, Some(FeedError::Malformed(_))));
        assert_eq!(doc.plans.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), target in 0usize..64) {
            let mut chunker = Chunker::new(target, 256);
            let mut chunks = chunker.push(&body).unwrap_or_default();
            chunks.extend(chunker.flush());
            if let Ok(Some(c)) = chunker.finish() {
                chunks.push(c);
            }
            for c in &chunks {
                parse_chunk(&provider(), c);
            }
            parse_chunk(&provider(), &body);
        }

        #[test]
        fn mutated_fixtures_never_panic(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8),
            cut in any::<prop::sample::Index>(),
            split in any::<prop::sample::Index>(),
            target in 0usize..2000,
        ) {
            let mut body = FIXTURES[which].1.to_vec();
            for (at, byte, op) in edits {
                if body.is_empty() {
                    break;
                }
                let i = at.index(body.len());
                match op {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => {
                        body.remove(i);
                    }
                }
            }
            let cut = cut.index(body.len() + 1);
            body.truncate(cut);
            let split = split.index(body.len() + 1);
            let mut chunker = Chunker::new(target, 4096);
            let (chunks, _) = run(&mut chunker, &[&body[..split], &body[split..]]);
            let _ = chunker.finish();
            for c in &chunks {
                parse_chunk(&provider(), c);
            }
            let _ = parse_document(&provider(), &body);
        }
    }

    proptest! {
        // Each case generates, chunks and parses a feed of ~20 plans: 96 cases take well under a
        // second in release and a few seconds in debug.
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// A generated feed cut anywhere and split anywhere never panics the chunker or the parser,
        /// and every plan that comes out is one of the plans of the full feed, exactly: a cut never
        /// yields a half-read plan with fewer zones or a shortened title.
        #[test]
        fn cut_and_split_generated_feeds_only_yield_plans_of_the_full_feed(
            seed in 0u64..1000,
            round in 0u32..4,
            cut in any::<prop::sample::Index>(),
            splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            target in 0usize..3000,
        ) {
            let spec = crate::feed::GenSpec {
                base_plans: 6,
                plans_per_base: 3,
                zones_per_plan: 3,
                seed,
                offline_share: 0.2,
                invalid_share: 0.1,
            };
            let full = crate::feed::generate(&spec, round);
            let all = parse_document(&provider(), &full).unwrap().plans;
            let body = &full[..cut.index(full.len() + 1)];
            let mut at: Vec<usize> = splits.iter().map(|i| i.index(body.len() + 1)).collect();
            at.push(0);
            at.push(body.len());
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &body[w[0]..w[1]]).collect();
            let mut chunker = Chunker::new(target, 1 << 16);
            let (mut chunks, pushed) = run(&mut chunker, &pieces);
            chunks.extend(chunker.flush());
            let finished = chunker.finish();
            if let Ok(Some(last)) = &finished {
                chunks.push(last.clone());
            }
            let mut emitted = 0;
            for c in &chunks {
                for plan in parse_chunk(&provider(), c).plans {
                    prop_assert!(all.contains(&plan), "plan {} is not one of the full feed's", plan.key);
                    emitted += 1;
                }
            }
            if body.len() == full.len() {
                prop_assert!(pushed.is_ok() && finished.is_ok());
                prop_assert_eq!(emitted, all.len());
            }
        }
    }
}
