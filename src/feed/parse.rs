//! Parsing a chunk of the feed into domain plans.
//!
//! A chunk is a fragment: whole base plans, maybe preceded by the prolog and the root/output
//! open tags and maybe followed by their close tags. One concept, one file of a little over 500
//! lines: the parser's state and the resumable reading of a chunk in parts share it. Both namings are accepted
//! (`base_plan/plan` and `base_event/event`), and may even be mixed. Plans are kept per base
//! plan and only handed out once their base plan closed, so malformed XML costs the base plan it
//! hits and those after it, never the ones before.

use std::sync::Arc;

use chrono::NaiveDateTime;
use memchr::memmem;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::fields::{
    date_field, fmt_dt, id_attr, id_field, organizer_field, parse_bool, parse_datetime, price_field, take,
    trim, Field, Invalid, SkipKind,
};
use super::text::{text, value, Shown};
use super::{Chunker, FeedError};
use crate::domain::{Plan, PlanKey, Zone};

/// What one chunk, or one part of a chunk, yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedChunk {
    /// Valid plans, in feed order.
    pub plans: Vec<Plan>,
    /// Invalid plans, with the reason.
    pub skipped: Vec<Skipped>,
    /// Set when the chunk could not be read to its end; `plans` then holds the plans of the base
    /// plans completed before the error.
    pub error: Option<FeedError>,
    /// Estimated memory of `plans` ([`plan_bytes`] each, plus each base plan's title once): what
    /// the pipeline's byte budget charges for them.
    pub bytes: usize,
}

/// An invalid plan: counted and logged, not an observation.
///
/// Every field is bounded whatever the feed holds: raw values are [`clipped`] to a short prefix
/// plus their length, so a record costs about the same for a 3-byte id and a 1 MB one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The raw `base_plan_id` attribute (clipped), when present.
    pub base_plan_id: Option<String>,
    /// The raw `plan_id` attribute (clipped), when present.
    pub plan_id: Option<String>,
    pub kind: SkipKind,
    pub reason: String,
}

/// How much one part of a chunk may hold: a part ends at the first plan end that reaches either
/// bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartBounds {
    pub plans: usize,
    /// Estimated memory, as [`ParsedChunk::bytes`] counts it.
    pub bytes: usize,
}

impl PartBounds {
    /// The whole chunk in one part.
    pub const WHOLE: PartBounds = PartBounds { plans: usize::MAX, bytes: usize::MAX };
}

/// Estimated memory of one parsed plan besides its title (which its base plan's plans share):
/// the struct, its content hash, its zones and their names.
pub fn plan_bytes(plan: &Plan) -> usize {
    std::mem::size_of::<Plan>()
        + std::mem::size_of::<u64>()
        + plan.zones.iter().map(|z| std::mem::size_of::<Zone>() + z.name.len()).sum::<usize>()
}

/// Parses a chunk produced by [`Chunker`] in one go. Never fails as a whole: malformed XML stops
/// the parse and is reported in [`ParsedChunk::error`] with its position in the chunk.
pub fn parse_chunk(provider: &Arc<str>, chunk: &[u8]) -> ParsedChunk {
    ChunkParse::new(provider.clone()).next_part(chunk, PartBounds::WHOLE)
}

/// A chunk parsed part by part, so that a chunk of 350,000 plans is never 350,000 plans in memory
/// at once: each [`ChunkParse::next_part`] reads on from where the previous one stopped (a fresh
/// reader at that offset, the base plan being read carried over) until the part is full or the
/// chunk ends. The caller keeps the chunk's bytes and hands the same ones to every call.
///
/// A base plan's plans are held until it closes, so malformed XML costs the base plan it hits and
/// never the ones before; only a base plan with more plans than a part goes on in parts as they
/// fill, and malformed XML inside it then costs its plans not handed on yet.
pub struct ChunkParse {
    p: ChunkParser,
    /// Where the next part's reader starts in the chunk.
    from: usize,
    done: bool,
}

impl ChunkParse {
    pub fn new(provider: Arc<str>) -> Self {
        let p = ChunkParser {
            provider,
            out: ParsedChunk::default(),
            base: None,
            plan: None,
            skip_depth: 0,
            zones_hint: 0,
        };
        Self { p, from: 0, done: false }
    }

    /// Whether the chunk was read to its end: the last part was handed out.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The next part of `chunk` (the same bytes at every call); once [`ChunkParse::done`], an
    /// empty one.
    pub fn next_part(&mut self, chunk: &[u8], bounds: PartBounds) -> ParsedChunk {
        if self.done {
            return ParsedChunk::default();
        }
        let chunk = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
        let p = &mut self.p;
        // After malformed XML the parse resumes behind the next base plan close tag, with a fresh
        // reader: the broken base plan is lost, the later ones are not. `from` is where this
        // reader started in the chunk.
        'regions: loop {
            if p.full(bounds) {
                return p.hand_out();
            }
            let mut reader = region_reader(&chunk[self.from..]);
            // Set once the part is full: it is handed out before the next element opens, so the
            // close tags that follow (the base plan's, the chunk's last ones) stay in it and a
            // chunk of N plans is exactly ⌈N / bound⌉ parts.
            let mut full = false;
            loop {
                let before = reader.buffer_position() as usize;
                let event = reader.read_event();
                if full && matches!(event, Ok(Event::Start(_) | Event::Empty(_))) {
                    self.from += before;
                    return p.hand_out();
                }
                let step = match event {
                    Ok(Event::Eof) => break,
                    Ok(Event::Start(e)) => p.open(&e, false),
                    Ok(Event::Empty(e)) => p.open(&e, true),
                    Ok(Event::End(_)) => {
                        p.close();
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(what) = step {
                    let at = self.from + reader.error_position().max(reader.buffer_position()) as usize;
                    p.fail(format!("{what} at byte {at}"));
                    match next_base_end(chunk, at.min(chunk.len())) {
                        Some(next) => {
                            self.from = next;
                            continue 'regions;
                        }
                        None => {
                            self.done = true;
                            return p.hand_out();
                        }
                    }
                }
                full = full || (p.plan.is_none() && p.full(bounds));
            }
            if p.base.is_some() {
                let at = self.from + reader.buffer_position() as usize;
                p.fail(format!("chunk ended at byte {at}"));
            }
            self.done = true;
            return p.hand_out();
        }
    }
}

/// A reader of a chunk's region, from the chunk's start or where an earlier part or a malformed
/// base plan stopped: close tags of elements opened before it (the root and output elements of an
/// earlier chunk, the base plan of an earlier part) are not errors.
fn region_reader(region: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(region);
    let config = reader.config_mut();
    config.trim_text(true);
    config.check_end_names = true;
    config.allow_unmatched_ends = true;
    reader
}

/// One past the first base plan close tag at or after `at`.
fn next_base_end(chunk: &[u8], at: usize) -> Option<usize> {
    let rest = &chunk[at..];
    let close = [memmem::find(rest, b"</base_plan"), memmem::find(rest, b"</base_event")]
        .into_iter()
        .flatten()
        .min()?;
    let gt = memchr::memchr(b'>', &rest[close..])?;
    Some(at + close + gt + 1)
}

/// Chunker + [`parse_chunk`] over a whole document (tests, CLI).
///
/// `Err` when the body is rejected as a whole (`Empty`, `NotXml`, `WrongShape`). Failures in the
/// middle of the document (`Truncated`, `ElementTooLarge`, `Malformed`) come back in
/// [`ParsedChunk::error`] (the first one) next to the plans read before them.
pub fn parse_document(provider: &Arc<str>, body: &[u8]) -> Result<ParsedChunk, FeedError> {
    let mut chunker = Chunker::new(1 << 20, usize::MAX);
    let mut all = ParsedChunk::default();
    let add = |all: &mut ParsedChunk, chunk: &[u8]| {
        let parsed = parse_chunk(provider, chunk);
        all.bytes += parsed.bytes;
        all.plans.extend(parsed.plans);
        all.skipped.extend(parsed.skipped);
        if all.error.is_none() {
            all.error = parsed.error;
        }
    };
    let early =
        |e: FeedError| matches!(e, FeedError::Empty | FeedError::NotXml(_) | FeedError::WrongShape(_));
    match chunker.push(body) {
        Ok(chunks) => chunks.iter().for_each(|c| add(&mut all, c)),
        Err(e) if early(e.clone()) => return Err(e),
        Err(e) => all.error = Some(e),
    }
    if let Some(c) = chunker.flush() {
        add(&mut all, &c);
    }
    match chunker.finish() {
        Ok(Some(c)) => add(&mut all, &c),
        Ok(None) => {}
        Err(e) if early(e.clone()) => return Err(e),
        Err(e) => {
            if all.error.is_none() {
                all.error = Some(e);
            }
        }
    }
    Ok(all)
}

/// The base plan being read.
struct Base {
    /// `Err` when `base_plan_id` is missing or unparsable.
    id: Result<u64, Invalid>,
    /// Clipped: it is copied into the record of every plan skipped because of it.
    raw_id: Option<String>,
    /// Shared by the base plan's plans.
    title: Arc<str>,
    online: bool,
    organizer_company_id: Option<u64>,
    /// Read and not handed out yet.
    plans: Vec<Plan>,
    skipped: Vec<Skipped>,
    /// Estimated memory of `plans`, the title counted once.
    bytes: usize,
}

/// The plan being read.
struct PlanDraft {
    id: u64,
    raw_id: Option<String>,
    start: NaiveDateTime,
    end: NaiveDateTime,
    sell_from: Option<NaiveDateTime>,
    sell_to: Option<NaiveDateTime>,
    sold_out: bool,
    zones: Vec<Zone>,
    /// First reason the plan is invalid; its zones are not read once set.
    invalid: Option<Invalid>,
}

struct ChunkParser {
    provider: Arc<str>,
    /// The part being filled: plans of the base plans closed since the last part.
    out: ParsedChunk,
    base: Option<Base>,
    plan: Option<PlanDraft>,
    /// Depth inside an element whose content is ignored (unknown elements, zone children).
    skip_depth: usize,
    /// Zones of the last plan read: plans of a feed tend to have alike counts, so a plan's zones
    /// are allocated once rather than grown by doubling.
    zones_hint: usize,
}

impl ChunkParser {
    /// Whether the plans read and not handed out reach `bounds`.
    fn full(&self, bounds: PartBounds) -> bool {
        let (plans, bytes) = self.base.as_ref().map_or((0, 0), |b| (b.plans.len(), b.bytes));
        let plans = self.out.plans.len() + plans;
        plans > 0 && (plans >= bounds.plans || self.out.bytes + bytes >= bounds.bytes)
    }

    /// Hands out the part: the plans of the base plans closed since the last part, or, when there
    /// are none, those read of the open base plan (it fills a part on its own).
    fn hand_out(&mut self) -> ParsedChunk {
        if let (true, Some(base)) = (self.out.plans.is_empty(), self.base.as_mut()) {
            self.out.plans.append(&mut base.plans);
            self.out.skipped.append(&mut base.skipped);
            self.out.bytes += std::mem::take(&mut base.bytes);
        }
        std::mem::take(&mut self.out)
    }

    fn open(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), String> {
        if self.skip_depth > 0 {
            if !empty {
                self.skip_depth += 1;
            }
            return Ok(());
        }
        let name = e.local_name();
        let name = name.as_ref();
        if self.plan.is_some() {
            if name == "zone" {
                self.zone(e)?;
            }
            if !empty {
                self.skip_depth = 1;
            }
        } else if self.base.is_some() {
            if name == "plan" || name == "event" {
                self.open_plan(e)?;
                if empty {
                    self.close_plan();
                }
            } else if !empty {
                self.skip_depth = 1;
            }
        } else if name == "base_plan" || name == "base_event" {
            self.open_base(e)?;
            if empty {
                self.close_base();
            }
        }
        // Anything else outside a base plan (root, output, unknown wrappers): look inside.
        Ok(())
    }

    fn close(&mut self) {
        if self.skip_depth > 0 {
            self.skip_depth -= 1;
        } else if self.plan.is_some() {
            self.close_plan();
        } else if self.base.is_some() {
            self.close_base();
        }
    }

    /// Records malformed XML (the first error of the chunk wins) and drops the base plan being read.
    fn fail(&mut self, what: String) {
        self.plan = None;
        self.skip_depth = 0;
        let Some(base) = self.base.take() else {
            self.out.error.get_or_insert(FeedError::Malformed(what));
            return;
        };
        self.out
            .error
            .get_or_insert_with(|| FeedError::Malformed(format!("{what} inside {}", base_label(&base))));
    }

    fn open_base(&mut self, e: &BytesStart<'_>) -> Result<(), String> {
        let mut id = Field::Missing;
        let mut raw_id = None;
        let mut title = String::new();
        let mut online = false;
        let mut organizer_company_id = Ok(None);
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(|e| e.to_string())?;
            match a.key.as_ref() {
                key @ ("base_plan_id" | "base_event_id") => (id, raw_id) = id_attr(key, &a),
                "title" => title = text(&a),
                "sell_mode" => online = value(&a) == "online",
                "organizer_company_id" => organizer_company_id = organizer_field(&value(&a)),
                _ => {}
            }
        }
        let (id, organizer_company_id) = match (id, organizer_company_id) {
            (Field::Ok(_), Err(why)) => (Field::Bad(why), None),
            (id, organizer) => (id, organizer.ok().flatten()),
        };
        let id = match id {
            Field::Ok(n) => Ok(n),
            Field::Bad(why) => Err(why),
            Field::Missing => Err(Invalid::new(
                SkipKind::MissingAttribute,
                format!("missing {}_id", e.local_name().as_ref()),
            )),
        };
        self.base = Some(Base {
            id,
            raw_id,
            title: title.into(),
            online,
            organizer_company_id,
            plans: Vec::new(),
            skipped: Vec::new(),
            bytes: 0,
        });
        Ok(())
    }

    fn close_base(&mut self) {
        if let Some(mut b) = self.base.take() {
            self.out.plans.append(&mut b.plans);
            self.out.skipped.append(&mut b.skipped);
            self.out.bytes += b.bytes;
        }
    }

    fn open_plan(&mut self, e: &BytesStart<'_>) -> Result<(), String> {
        let base = self.base.as_ref().expect("plans are read inside a base plan");
        let mut id = Field::Missing;
        let mut raw_id = None;
        let mut start = Field::Missing;
        let mut end = Field::Missing;
        let mut sell_from = None;
        let mut sell_to = None;
        let mut sold_out = false;
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(|e| e.to_string())?;
            match a.key.as_ref() {
                key @ ("plan_id" | "event_id") => (id, raw_id) = id_attr(key, &a),
                key @ ("plan_start_date" | "event_start_date") => start = date_field(key, &a),
                key @ ("plan_end_date" | "event_end_date") => end = date_field(key, &a),
                "sell_from" => sell_from = parse_datetime(&value(&a)),
                "sell_to" => sell_to = parse_datetime(&value(&a)),
                "sold_out" => sold_out = parse_bool(&value(&a)),
                _ => {}
            }
        }
        let naming = e.local_name().as_ref().to_owned();
        // A bad base plan id marks the plan invalid (its zones are not read); the reason itself is
        // taken from the base plan when the plan closes.
        let mut invalid = base.id.as_ref().err().map(|why| Invalid::new(why.kind, String::new()));
        let id = take(id, &naming, "id", &mut invalid);
        let start = take(start, &naming, "start_date", &mut invalid);
        let end = take(end, &naming, "end_date", &mut invalid);
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                invalid.get_or_insert_with(|| {
                    let detail = format!(
                        "{naming}_end_date {:?} is before {naming}_start_date {:?}",
                        fmt_dt(e),
                        fmt_dt(s)
                    );
                    Invalid::new(SkipKind::EndBeforeStart, detail)
                });
            }
        }
        self.plan = Some(PlanDraft {
            id: id.unwrap_or_default(),
            raw_id,
            start: start.unwrap_or_default(),
            end: end.unwrap_or_default(),
            sell_from,
            sell_to,
            sold_out,
            zones: Vec::with_capacity(self.zones_hint),
            invalid,
        });
        Ok(())
    }

    fn zone(&mut self, e: &BytesStart<'_>) -> Result<(), String> {
        let plan = self.plan.as_mut().expect("zones are read inside a plan");
        if plan.invalid.is_some() {
            return Ok(());
        }
        let mut zone_id = Field::Missing;
        let mut price = Field::Missing;
        let mut capacity = 0;
        let mut numbered = false;
        let mut name = String::new();
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(|e| e.to_string())?;
            match a.key.as_ref() {
                "zone_id" => {
                    let v = value(&a);
                    zone_id = id_field("zone_id", &v);
                }
                "price" => price = price_field(&value(&a)),
                "capacity" => capacity = trim(&value(&a)).parse().unwrap_or(0),
                "numbered" => numbered = parse_bool(&value(&a)),
                "name" => name = text(&a),
                _ => {}
            }
        }
        match (zone_id, price) {
            (Field::Ok(zone_id), Field::Ok(price)) => {
                plan.zones.push(Zone { zone_id, name, capacity, price, numbered });
            }
            (zone_id, price) => {
                let label = match &zone_id {
                    Field::Ok(id) => format!("zone {id}"),
                    _ => format!("zone #{}", plan.zones.len() + 1),
                };
                let why = match (zone_id, price) {
                    (Field::Bad(why), _) => why,
                    (Field::Missing, _) => {
                        Invalid::new(SkipKind::MissingAttribute, "missing zone_id".to_owned())
                    }
                    (_, Field::Bad(why)) => why,
                    (_, _) => Invalid::new(SkipKind::MissingAttribute, "missing price".to_owned()),
                };
                plan.invalid = Some(Invalid::new(why.kind, format!("{label}: {}", why.detail)));
            }
        }
        Ok(())
    }

    fn close_plan(&mut self) {
        let (Some(p), Some(base)) = (self.plan.take(), self.base.as_mut()) else {
            return;
        };
        self.zones_hint = p.zones.len();
        match (p.invalid, &base.id) {
            (None, Ok(base_id)) => {
                let plan = Plan {
                    key: PlanKey { provider: self.provider.clone(), base_plan_id: *base_id, plan_id: p.id },
                    title: base.title.clone(),
                    online: base.online,
                    organizer_company_id: base.organizer_company_id,
                    start: p.start,
                    end: p.end,
                    sell_from: p.sell_from,
                    sell_to: p.sell_to,
                    sold_out: p.sold_out,
                    zones: p.zones,
                };
                if base.plans.is_empty() {
                    base.bytes += base.title.len();
                }
                base.bytes += plan_bytes(&plan);
                base.plans.push(plan);
            }
            (why, base_id) => {
                // A bad base plan id comes first, as it would make every plan of it invalid.
                let why = match (base_id, why) {
                    (Err(base_why), _) => base_why.clone(),
                    (Ok(_), why) => why.expect("a skipped plan has a reason"),
                };
                let plan_label = match &p.raw_id {
                    Some(raw) if raw.parse::<u64>().is_ok() => format!("plan {raw}"),
                    Some(raw) => format!("plan {}", Shown(raw)),
                    None => "plan".to_owned(),
                };
                let reason = format!("{plan_label} of {}: {}", base_label(base), why.detail);
                base.skipped.push(Skipped {
                    base_plan_id: base.raw_id.clone(),
                    plan_id: p.raw_id,
                    kind: why.kind,
                    reason,
                });
            }
        }
    }
}

fn base_label(b: &Base) -> String {
    match (&b.id, &b.raw_id) {
        (Ok(id), _) => format!("base plan {id}"),
        (Err(_), Some(raw)) => format!("base plan {}", Shown(raw)),
        (Err(_), None) => "base plan without id".to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rust_decimal::Decimal;

    use super::super::fields::parse_price;
    use super::*;
    use crate::feed::MAX_TEXT_BYTES;

    pub(crate) const FIXTURES: [(&str, &[u8]); 6] = [
        ("response_1.xml", include_bytes!("../../tests/fixtures/provider/response_1.xml")),
        ("response_2.xml", include_bytes!("../../tests/fixtures/provider/response_2.xml")),
        ("response_3.derived.xml", include_bytes!("../../tests/fixtures/provider/response_3.derived.xml")),
        (
            "eventList/response_1.xml",
            include_bytes!("../../tests/fixtures/provider/eventList/response_1.xml"),
        ),
        (
            "eventList/response_2.xml",
            include_bytes!("../../tests/fixtures/provider/eventList/response_2.xml"),
        ),
        (
            "eventList/response_3.xml",
            include_bytes!("../../tests/fixtures/provider/eventList/response_3.xml"),
        ),
    ];

    pub(crate) fn provider() -> Arc<str> {
        Arc::from("fever")
    }

    fn dt(s: &str) -> NaiveDateTime {
        parse_datetime(s).unwrap()
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn keys(p: &ParsedChunk) -> Vec<(u64, u64)> {
        p.plans.iter().map(|p| (p.key.base_plan_id, p.key.plan_id)).collect()
    }

    fn doc(body: &[u8]) -> ParsedChunk {
        parse_document(&provider(), body).unwrap()
    }

    fn wrap(base_plans: &str) -> String {
        format!("<?xml version=\"1.0\"?><planList><output>{base_plans}</output></planList>")
    }

    fn fixture(name: &str) -> &'static [u8] {
        FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// Plan 291's zones in the first snapshot, in feed order.
    fn camela_zones() -> Vec<Zone> {
        vec![
            Zone { zone_id: 40, name: "Platea".into(), capacity: 243, price: dec("20.00"), numbered: true },
            Zone { zone_id: 38, name: "Grada 2".into(), capacity: 100, price: dec("15.00"), numbered: false },
            Zone { zone_id: 30, name: "A28".into(), capacity: 90, price: dec("30.00"), numbered: true },
        ]
    }

    #[test]
    fn response_1_parses_to_the_exact_plans_in_both_namings() {
        for name in ["response_1.xml", "eventList/response_1.xml"] {
            let p = doc(fixture(name));
            assert_eq!(p.error, None, "{name}");
            assert!(p.skipped.is_empty(), "{name}");
            if name.starts_with("eventList") {
                // The older snapshot has no plan 1643.
                assert_eq!(keys(&p), vec![(291, 291), (322, 1642), (1591, 1642)], "{name}");
            } else {
                assert_eq!(keys(&p), vec![(291, 291), (322, 1642), (322, 1643), (1591, 1642)], "{name}");
            }

            let camela = &p.plans[0];
            assert_eq!(camela.key, PlanKey::new("fever", 291, 291));
            assert_eq!(&*camela.title, "Camela en concierto");
            assert!(camela.online);
            assert_eq!(camela.organizer_company_id, None);
            assert_eq!(camela.start, dt("2021-06-30T21:00:00"));
            assert_eq!(camela.end, dt("2021-06-30T22:00:00"));
            assert_eq!(camela.sell_from, Some(dt("2020-07-01T00:00:00")));
            assert_eq!(camela.sell_to, Some(dt("2021-06-30T20:00:00")));
            assert!(!camela.sold_out);
            assert_eq!(camela.zones, camela_zones());
            assert_eq!(camela.min_price().unwrap().to_string(), "15.00");
            assert_eq!(camela.max_price().unwrap().to_string(), "30.00");

            let pantomima = &p.plans[1];
            assert_eq!(&*pantomima.title, "Pantomima Full");
            assert_eq!(pantomima.organizer_company_id, Some(2));
            assert_eq!(pantomima.start, dt("2021-02-10T20:00:00"));
            assert_eq!(pantomima.end, dt("2021-02-10T21:30:00"));
            assert_eq!(pantomima.zones.len(), 1);
            let morancos = p.plans.last().unwrap();
            assert_eq!(&*morancos.title, "Los Morancos");
            assert_eq!(morancos.organizer_company_id, Some(1));
            assert_eq!(morancos.start, dt("2021-07-31T20:00:00"));
            assert_eq!(morancos.end, dt("2021-07-31T21:00:00"));
            assert_eq!(morancos.zones.len(), 2);
            assert!(morancos.zones.iter().all(|z| z.zone_id == 186));
            assert_eq!(morancos.min_price().unwrap().to_string(), "65.00");
            assert_eq!(morancos.max_price().unwrap().to_string(), "75.00");
        }
    }

    #[test]
    fn response_2_skips_the_impossible_date_and_keeps_the_rest() {
        for name in ["response_2.xml", "eventList/response_2.xml"] {
            let p = doc(fixture(name));
            assert_eq!(p.error, None, "{name}");
            assert_eq!(keys(&p), vec![(291, 291), (1591, 1642)], "{name}");
            assert_eq!(p.plans[0].zones.iter().map(|z| z.capacity).collect::<Vec<_>>(), vec![240, 50, 90]);
            let morancos = &p.plans[1];
            assert_eq!(morancos.end, dt("2021-07-31T21:20:00"));
            assert_eq!(morancos.zones[0].capacity, 0, "capacity-0 zones are kept");
            assert_eq!(morancos.min_price(), Some(dec("65.00")));
            assert_eq!(morancos.max_price(), Some(dec("75.00")));

            assert_eq!(p.skipped.len(), 1);
            let s = &p.skipped[0];
            assert_eq!(s.base_plan_id.as_deref(), Some("444"));
            assert_eq!(s.plan_id.as_deref(), Some("1642"));
            let naming = if name.starts_with("eventList") { "event" } else { "plan" };
            assert_eq!(
                s.reason,
                format!("plan 1642 of base plan 444: invalid {naming}_start_date \"2021-09-31T20:00:00\"")
            );
        }
    }

    #[test]
    fn response_3_in_both_namings() {
        for name in ["response_3.derived.xml", "eventList/response_3.xml"] {
            let p = doc(fixture(name));
            assert_eq!(p.error, None, "{name}");
            assert_eq!(keys(&p), vec![(291, 291), (1591, 1642)], "{name}");
            assert_eq!(p.plans[0].end, dt("2021-06-30T21:30:00"));
            assert_eq!(p.plans[0].zones.iter().map(|z| z.capacity).collect::<Vec<_>>(), vec![200, 0, 80]);
            assert_eq!(p.plans[1].zones[1].capacity, 12);
            assert_eq!(p.skipped.len(), 1);
            assert!(p.skipped[0].reason.contains("\"2021-09-31T20:00:00\""), "{}", p.skipped[0].reason);
        }
    }

    #[test]
    fn both_namings_give_the_same_plans() {
        for (a, b) in [
            ("response_1.xml", "eventList/response_1.xml"),
            ("response_2.xml", "eventList/response_2.xml"),
            ("response_3.derived.xml", "eventList/response_3.xml"),
        ] {
            let mut plans = doc(fixture(a)).plans;
            plans.retain(|p| p.key.plan_id != 1643);
            assert_eq!(plans, doc(fixture(b)).plans, "{a} vs {b}");
        }
    }

    #[test]
    fn a_huge_bad_base_plan_id_costs_bounded_records_and_spares_the_good_base_plan() {
        let huge = "x".repeat(1 << 20);
        let plans: String = (1..=1000).map(|n| format!(r#"<plan plan_id="{n}"/>"#)).collect();
        let body = wrap(&format!(
            r#"<base_plan base_plan_id="{huge}" sell_mode="online" title="Bad">{plans}</base_plan>
               <base_plan base_plan_id="2" sell_mode="online" title="Good">
                 <plan plan_id="1" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00">
                   <zone zone_id="1" price="5"/>
                 </plan>
                 <plan plan_id="2" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00">
                   <zone zone_id="1" price="5"/><zone zone_id="2" price="-5"/>
                 </plan>
               </base_plan>"#
        ));
        let p = parse_chunk(&provider(), body.as_bytes());
        assert_eq!(p.error, None);
        assert_eq!(keys(&p), vec![(2, 1)], "the good plan is kept, the negative-price one is not");
        assert_eq!(p.skipped.len(), 1001);
        let recorded: usize =
            p.skipped.iter().map(|s| s.reason.len() + s.base_plan_id.as_ref().map_or(0, String::len)).sum();
        assert!(recorded < 1001 * 400, "skip records hold {recorded} bytes");
        let first = &p.skipped[0];
        assert_eq!(first.kind, SkipKind::InvalidId);
        assert!(first.reason.starts_with("plan 1 of base plan \"xxxx"), "{}", first.reason);
        assert!(first.reason.ends_with("… (1048576 bytes)"), "{}", first.reason);
        let negative = p.skipped.last().unwrap();
        assert_eq!(negative.kind, SkipKind::NegativePrice);
        assert_eq!(negative.reason, "plan 2 of base plan 2: zone 2: negative price \"-5\"");
    }

    #[test]
    fn titles_decode_valid_references_replace_invalid_ones_and_drop_controls() {
        let body = wrap(
            "<base_plan base_plan_id=\"1\" sell_mode=\"online\" title=\"A&#x1F600;B&#0;C&#xD800;D&amp;E&nbsp;\u{0}\u{1}F\u{7f}&#10;G\u{85}H\">
               <plan plan_id=\"1\" plan_start_date=\"2021-01-01T10:00:00\" plan_end_date=\"2021-01-01T11:00:00\">
                 <zone zone_id=\"1\" price=\"1\" name=\"Z&#x7;one\"/>
               </plan>
             </base_plan>",
        );
        let p = doc(body.as_bytes());
        assert_eq!(p.error, None);
        assert_eq!(&*p.plans[0].title, "A😀B\u{FFFD}C\u{FFFD}D&E&nbsp;F GH");
        assert_eq!(p.plans[0].zones[0].name, "Z\u{FFFD}one");
        let json = serde_json::to_string(&*p.plans[0].title).unwrap();
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), &*p.plans[0].title);
    }

    #[test]
    fn long_titles_are_cut_at_a_character_boundary() {
        let title = "é".repeat(MAX_TEXT_BYTES);
        let body = wrap(&format!(
            r#"<base_plan base_plan_id="1" sell_mode="online" title="{title}">
                 <plan plan_id="1" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00"/>
               </base_plan>"#
        ));
        let p = doc(body.as_bytes());
        assert_eq!(&*p.plans[0].title, "é".repeat(MAX_TEXT_BYTES / 2));
    }

    #[test]
    fn entity_titles_and_names_are_unescaped() {
        let body = wrap(
            r#"<base_plan base_plan_id="1" sell_mode="online" title="Rock &amp; Roll">
                 <plan plan_id="1" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00">
                   <zone zone_id="1" price="1" name="VIP &amp; &quot;Backstage&quot;" capacity="3"/>
                 </plan>
               </base_plan>
               <base_plan base_plan_id="2" sell_mode="offline" title="Mike&#39;s &quot;Show&quot; &lt;3">
                 <plan plan_id="2" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00"/>
               </base_plan>"#,
        );
        let p = doc(body.as_bytes());
        assert_eq!(p.error, None);
        assert_eq!(&*p.plans[0].title, "Rock & Roll");
        assert_eq!(p.plans[0].zones[0].name, "VIP & \"Backstage\"");
        assert_eq!(&*p.plans[1].title, "Mike's \"Show\" <3");
        assert!(!p.plans[1].online);
        assert!(p.plans[1].zones.is_empty());
    }

    #[test]
    fn optional_attributes_default_and_unknown_ones_are_ignored() {
        let body = wrap(
            r#"<base_plan base_plan_id="7" sell_mode="online" organizer_company_id="x" extra="1">
                 <note>ignored <plan plan_id="99"/></note>
                 <plan plan_id="3" plan_start_date="2021-01-01T10:00:00.250" plan_end_date="2021-01-01T10:00:00.250"
                       sell_from="yesterday" sold_out="true" color="red">
                   <zone zone_id="5" price="7.5"/>
                   <zone zone_id="5" price="100" capacity="-3" numbered="maybe"><sub/></zone>
                   <seat/>
                 </plan>
               </base_plan>"#,
        );
        let p = doc(body.as_bytes());
        assert_eq!(p.error, None);
        assert_eq!(keys(&p), vec![(7, 3)]);
        let plan = &p.plans[0];
        assert_eq!(&*plan.title, "");
        assert_eq!(plan.organizer_company_id, None);
        assert_eq!(plan.sell_from, None);
        assert_eq!(plan.sell_to, None);
        assert!(plan.sold_out);
        assert_eq!(plan.start, dt("2021-01-01T10:00:00.250"));
        assert_eq!(plan.start.and_utc().timestamp_subsec_millis(), 250);
        assert_eq!(
            plan.zones,
            vec![
                Zone { zone_id: 5, name: String::new(), capacity: 0, price: dec("7.5"), numbered: false },
                Zone { zone_id: 5, name: String::new(), capacity: 0, price: dec("100"), numbered: false },
            ]
        );
        assert_eq!(plan.zones[0].price.scale(), 1);
        assert_eq!(plan.max_price().unwrap().to_string(), "100");
    }

    #[test]
    fn invalid_plans_are_skipped_with_a_specific_reason() {
        let plan = |attrs: &str, zones: &str| format!("<plan {attrs}>{zones}</plan>");
        let ok_dates = r#"plan_start_date="2021-03-01T20:00:00" plan_end_date="2021-03-01T22:00:00""#;
        let zone = r#"<zone zone_id="1" price="10.00"/>"#;
        let body = wrap(&format!(
            r#"<base_plan base_plan_id="5" sell_mode="online" title="T">{}{}{}{}{}{}{}{}{}</base_plan>
               <base_plan sell_mode="online">{}</base_plan>
               <base_plan base_plan_id="abc">{}</base_plan>"#,
            plan(r#"plan_start_date="2021-03-01T20:00:00" plan_end_date="2021-03-01T22:00:00""#, zone),
            plan(r#"plan_id="2" plan_end_date="2021-03-01T22:00:00""#, zone),
            plan(
                r#"plan_id="3" plan_start_date="2021-03-01T20:00:00" plan_end_date="2021-02-30T22:00:00""#,
                zone
            ),
            plan(
                r#"plan_id="4" plan_start_date="2021-03-01T20:00:00" plan_end_date="2021-03-01T19:00:00""#,
                zone
            ),
            plan(&format!(r#"plan_id="5" {ok_dates}"#), r#"<zone zone_id="1"/>"#),
            plan(&format!(r#"plan_id="6" {ok_dates}"#), r#"<zone zone_id="1" price="12,50"/>"#),
            plan(&format!(r#"plan_id="7" {ok_dates}"#), r#"<zone price="1"/>"#),
            plan(&format!(r#"plan_id="-8" {ok_dates}"#), zone),
            plan(&format!(r#"plan_id="9" {ok_dates}"#), zone),
            plan(&format!(r#"plan_id="10" {ok_dates}"#), zone),
            plan(&format!(r#"plan_id="11" {ok_dates}"#), zone),
        ));
        let p = doc(body.as_bytes());
        assert_eq!(p.error, None);
        assert_eq!(keys(&p), vec![(5, 9)]);
        let reasons: Vec<&str> = p.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "plan of base plan 5: missing plan_id",
                "plan 2 of base plan 5: missing plan_start_date",
                "plan 3 of base plan 5: invalid plan_end_date \"2021-02-30T22:00:00\"",
                "plan 4 of base plan 5: plan_end_date \"2021-03-01T19:00:00\" is before plan_start_date \"2021-03-01T20:00:00\"",
                "plan 5 of base plan 5: zone 1: missing price",
                "plan 6 of base plan 5: zone 1: invalid price \"12,50\"",
                "plan 7 of base plan 5: zone #1: missing zone_id",
                "plan \"-8\" of base plan 5: invalid plan_id \"-8\"",
                "plan 10 of base plan without id: missing base_plan_id",
                "plan 11 of base plan \"abc\": invalid base_plan_id \"abc\"",
            ]
        );
        assert_eq!(p.skipped[9].base_plan_id.as_deref(), Some("abc"));
        assert_eq!(p.skipped[9].plan_id.as_deref(), Some("11"));
        assert_eq!(p.skipped[8].base_plan_id, None);
    }

    #[test]
    fn ids_above_the_stores_range_are_their_own_skip_kind() {
        let dates = r#"plan_start_date="2021-03-01T20:00:00" plan_end_date="2021-03-01T22:00:00""#;
        let zone = |id: &str| format!(r#"<zone zone_id="{id}" price="1"/>"#);
        let max = i64::MAX.to_string();
        let over = (i64::MAX as u64 + 1).to_string();
        let body = wrap(&format!(
            r#"<base_plan base_plan_id="1" sell_mode="online">
                 <plan plan_id="{max}" {dates}>{z_max}</plan>
                 <plan plan_id="{over}" {dates}>{z1}</plan>
                 <plan plan_id="2" {dates}>{z_over}</plan>
                 <plan plan_id="3" {dates}>{z_huge}</plan>
               </base_plan>
               <base_plan base_plan_id="{over}" sell_mode="online"><plan plan_id="4" {dates}>{z1}</plan></base_plan>
               <base_plan base_plan_id="5" organizer_company_id="{over}"><plan plan_id="5" {dates}>{z1}</plan></base_plan>
               <base_plan base_plan_id="6" organizer_company_id="{max}"><plan plan_id="6" {dates}>{z1}</plan></base_plan>"#,
            z_max = zone(&max),
            z1 = zone("1"),
            z_over = zone(&over),
            z_huge = zone("99999999999999999999999"),
        ));
        let p = doc(body.as_bytes());
        assert_eq!(keys(&p), vec![(1, i64::MAX as u64), (6, 6)]);
        assert_eq!(p.plans[0].zones[0].zone_id, i64::MAX as u64);
        assert_eq!(p.plans[1].organizer_company_id, Some(i64::MAX as u64));
        let kinds: Vec<_> = p.skipped.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![SkipKind::IdOutOfRange; 5]);
        assert!(SkipKind::IdOutOfRange.summed_up() && !SkipKind::InvalidId.summed_up());
        let reasons: Vec<&str> = p.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "plan 9223372036854775808 of base plan 1: plan_id \"9223372036854775808\" is above 9223372036854775807",
                "plan 2 of base plan 1: zone #1: zone_id \"9223372036854775808\" is above 9223372036854775807",
                "plan 3 of base plan 1: zone #1: zone_id \"99999999999999999999999\" is above 9223372036854775807",
                "plan 4 of base plan \"9223372036854775808\": base_plan_id \"9223372036854775808\" is above 9223372036854775807",
                "plan 5 of base plan \"5\": organizer_company_id \"9223372036854775808\" is above 9223372036854775807",
            ]
        );
    }

    #[test]
    fn malformed_xml_keeps_the_base_plans_completed_before_it() {
        let body = String::from_utf8(fixture("response_1.xml").to_vec()).unwrap();
        // Break the second zone of base plan 1591.
        let broken =
            body.replace(r#"<zone zone_id="186" capacity="16""#, r#"<zone zone_id="186" capacity=16"#);
        let p = doc(broken.as_bytes());
        assert_eq!(keys(&p), vec![(291, 291), (322, 1642), (322, 1643)]);
        let Some(FeedError::Malformed(what)) = &p.error else { panic!("{:?}", p.error) };
        assert!(what.contains("inside base plan 1591"), "{what}");
        assert!(what.contains("at byte"), "{what}");

        // A mismatched close tag inside a base plan.
        let broken = body.replace(
            "</plan>\n      </base_plan>\n      <base_plan base_plan_id=\"1591\"",
            "</plna>\n      </base_plan>\n      <base_plan base_plan_id=\"1591\"",
        );
        let p = parse_chunk(&provider(), broken.as_bytes());
        // The parse resumes after the broken base plan.
        assert_eq!(keys(&p), vec![(291, 291), (1591, 1642)]);
        let Some(FeedError::Malformed(what)) = &p.error else { panic!("{:?}", p.error) };
        assert!(what.contains("inside base plan 322"), "{what}");
    }

    #[test]
    fn a_chunk_ending_inside_a_base_plan_is_an_error() {
        let body = fixture("response_1.xml");
        let cut = memchr::memmem::find(body, b"<base_plan base_plan_id=\"322\"").unwrap() + 200;
        let p = parse_chunk(&provider(), &body[..cut]);
        assert_eq!(keys(&p), vec![(291, 291)]);
        let Some(FeedError::Malformed(what)) = &p.error else { panic!("{:?}", p.error) };
        assert!(what.contains("inside base plan 322"), "{what}");
        // Cut right after a complete open tag: the reader reaches the end of the chunk.
        let cut = memchr::memmem::find(body, b"<zone zone_id=\"311\"").unwrap();
        let p = parse_chunk(&provider(), &body[..cut]);
        assert_eq!(keys(&p), vec![(291, 291)]);
        let Some(FeedError::Malformed(what)) = &p.error else { panic!("{:?}", p.error) };
        assert!(what.starts_with("chunk ended at byte") && what.ends_with("inside base plan 322"), "{what}");
    }

    /// Every part of `chunk` under `bounds`, the last one last.
    fn parts(chunk: &[u8], bounds: PartBounds) -> Vec<ParsedChunk> {
        let mut parse = ChunkParse::new(provider());
        let mut out = Vec::new();
        while !parse.done() {
            out.push(parse.next_part(chunk, bounds));
        }
        out
    }

    /// One base plan of `n` valid plans without zones, titled `title`.
    fn one_base_plan(n: u64, title: &str) -> String {
        let plans: String = (1..=n)
            .map(|i| {
                format!(
                    r#"<plan plan_id="{i}" plan_start_date="2021-01-01T10:00:00" plan_end_date="2021-01-01T11:00:00"/>"#
                )
            })
            .collect();
        wrap(&format!(
            r#"<base_plan base_plan_id="1" sell_mode="online" title="{title}">{plans}</base_plan>"#
        ))
    }

    #[test]
    fn a_chunk_of_n_plans_comes_in_ceil_n_over_bound_parts_each_plan_once() {
        for (n, bound) in [(1003u64, 100usize), (1000, 100), (99, 100), (100, 100), (1, 1), (7, 1)] {
            let body = one_base_plan(n, "T");
            let got = parts(body.as_bytes(), PartBounds { plans: bound, bytes: usize::MAX });
            assert_eq!(got.len(), (n as usize).div_ceil(bound), "{n} plans, bound {bound}");
            assert!(got.iter().all(|p| p.plans.len() <= bound && p.error.is_none()));
            let ids: Vec<u64> = got.iter().flat_map(|p| p.plans.iter().map(|p| p.key.plan_id)).collect();
            assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "every plan once, in feed order");
        }
        // An empty chunk is one (empty) part.
        let got = parts(wrap("").as_bytes(), PartBounds { plans: 10, bytes: 10 });
        assert_eq!(got, vec![ParsedChunk::default()]);
    }

    #[test]
    fn parts_are_bounded_by_estimated_bytes_and_share_their_base_plans_title() {
        let title = "t".repeat(1024);
        let body = one_base_plan(1000, &title);
        let per_plan = plan_bytes(&parse_chunk(&provider(), body.as_bytes()).plans[0]);
        let bound = 50 * per_plan;
        let got = parts(body.as_bytes(), PartBounds { plans: usize::MAX, bytes: bound });
        // The title counts once per part, beside the plans.
        let per_part = (bound - 1024).div_ceil(per_plan);
        assert_eq!(got.len(), 1000usize.div_ceil(per_part));
        for p in &got {
            assert!(p.bytes <= bound + per_plan, "{} bytes over {bound}", p.bytes);
            assert_eq!(p.bytes, 1024 + p.plans.len() * per_plan);
            let first = &p.plans[0].title;
            assert!(p.plans.iter().all(|q| Arc::ptr_eq(&q.title, first)), "one title allocation");
        }
        assert_eq!(got.iter().map(|p| p.plans.len()).sum::<usize>(), 1000);
    }

    #[test]
    fn parts_hold_the_same_plans_and_skips_as_the_whole_chunk() {
        let spec = crate::feed::GenSpec {
            base_plans: 40,
            plans_per_base: 7,
            zones_per_plan: 3,
            seed: 9,
            offline_share: 0.2,
            invalid_share: 0.2,
        };
        let mut bodies: Vec<Vec<u8>> = FIXTURES.iter().map(|(_, b)| b.to_vec()).collect();
        bodies.push(crate::feed::generate(&spec, 1));
        for body in &bodies {
            let whole = parse_chunk(&provider(), body);
            for bound in [1, 2, 5, 8, 1000] {
                let got = parts(body, PartBounds { plans: bound, bytes: usize::MAX });
                let plans: Vec<Plan> = got.iter().flat_map(|p| p.plans.clone()).collect();
                let skipped: Vec<Skipped> = got.iter().flat_map(|p| p.skipped.clone()).collect();
                assert_eq!(plans, whole.plans, "bound {bound}");
                assert_eq!(skipped, whole.skipped, "bound {bound}");
                assert!(got.iter().map(|p| p.bytes).sum::<usize>() >= whole.bytes);
                assert!(got.iter().all(|p| p.plans.len() <= bound));
            }
        }
    }

    #[test]
    fn small_base_plans_stay_whole_and_a_big_one_keeps_what_went_on_before_broken_xml() {
        // Base plans of 3 plans under a bound of 5: no part splits one.
        let body = String::from_utf8(crate::feed::generate(
            &crate::feed::GenSpec {
                base_plans: 10,
                plans_per_base: 3,
                zones_per_plan: 1,
                seed: 1,
                offline_share: 0.0,
                invalid_share: 0.0,
            },
            0,
        ))
        .unwrap();
        for p in parts(body.as_bytes(), PartBounds { plans: 5, bytes: usize::MAX }) {
            assert_eq!(p.plans.len() % 3, 0, "{:?}", keys(&p));
        }
        // A base plan of 1000 plans broken after its 950th: the parts handed on before stay.
        let body = one_base_plan(1000, "T").replace(r#"<plan plan_id="951""#, r#"<plan plan_id=951"#);
        let got = parts(body.as_bytes(), PartBounds { plans: 100, bytes: usize::MAX });
        let kept: usize = got.iter().map(|p| p.plans.len()).sum();
        assert_eq!(kept, 900);
        let errors: Vec<_> = got.iter().filter_map(|p| p.error.as_ref()).collect();
        assert!(matches!(errors[..], [FeedError::Malformed(_)]), "{errors:?}");
    }

    proptest::proptest! {
        #[test]
        fn price_fast_path_matches_decimal_parsing(text in "-?[0-9]{0,22}(\\.[0-9]{0,12})?") {
            let slow = {
                let ok = !text.starts_with('-') && text.bytes().any(|c| c.is_ascii_digit());
                if ok { text.parse::<Decimal>().ok() } else { None }
            };
            let fast = parse_price(&text);
            proptest::prop_assert_eq!(fast.map(|d| (d, d.scale())), slow.map(|d| (d, d.scale())));
        }
    }

    #[test]
    fn prices_keep_their_scale() {
        for text in [
            "20.00",
            "7.5",
            "100",
            "0.01",
            "000.10",
            "999999999999999999",
            "9311356865208938017",
            "9999999999999999999",
            "1234567890.12345678",
        ] {
            let d = parse_price(text).unwrap();
            assert_eq!(d, text.parse::<Decimal>().unwrap());
            assert_eq!(d.to_string(), text.parse::<Decimal>().unwrap().to_string());
        }
        for bad in ["", ".", "-", "1.2.3", "1,5", "abc", "1e5", "+5", "-5", "-0", "-0.50"] {
            assert_eq!(parse_price(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(parse_datetime("2021-02-28T23:59:59"), Some(dt("2021-02-28T23:59:59")));
        assert!(parse_datetime("2021-02-28T23:59:59.123456789").is_some());
        for bad in [
            "2021-09-31T20:00:00",
            "2021-02-28",
            "2021-02-28 10:00:00",
            "2021-13-01T00:00:00",
            "2021-01-01T24:00:00",
            "2021-01-01T10:00:00.",
            "2021-01-01T10:00:00Z",
            "",
            "x",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }
}
