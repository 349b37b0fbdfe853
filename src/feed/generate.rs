//! A seeded, reproducible feed generator (planList naming) for tests, benchmarks and the
//! provider simulator.
//!
//! Every value derives from `seed` and the position of the plan (and `round` for what changes
//! between rounds), so a round can be regenerated alone. Between rounds plans get replaced by new
//! ones (same count), prices, capacities, end times, sold-out flags, titles and sell modes change.

use std::io::Write;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shape of a generated feed.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    pub base_plans: usize,
    pub plans_per_base: usize,
    pub zones_per_plan: usize,
    pub seed: u64,
    /// Share of base plans with `sell_mode="offline"` (0..=1).
    pub offline_share: f64,
    /// Share of plans written invalid (impossible or missing dates, bad prices, ...) (0..=1).
    pub invalid_share: f64,
}

/// What [`generate_into`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Plans written, valid and invalid (`base_plans × plans_per_base`).
    pub plans: usize,
    /// Plans written invalid: the parser skips exactly these.
    pub invalid: usize,
    /// Valid plans under `sell_mode="online"` base plans.
    pub online: usize,
}

const TITLES: [&str; 12] = [
    "Camela en concierto",
    "Pantomima Full",
    "Los Morancos",
    "Tributo a Juanito Valderrama",
    "Rock &amp; Roll Night",
    "Mike&#39;s Comedy Club",
    "Noche de &quot;Flamenco&quot;",
    "Jazz &amp; Blues",
    "O&#39;Brien Live",
    "El Rey León",
    "La Traviata",
    "Stand-up &lt;sin censura&gt;",
];

const ZONE_NAMES: [&str; 8] =
    ["Platea", "Grada 2", "Amfiteatre", "Palco", "Pista", "A28", "VIP &amp; Backstage", "Anfiteatro"];

/// XML of round `round` (0, 1, 2, ...) of the feed described by `spec`.
pub fn generate(spec: &GenSpec, round: u32) -> Vec<u8> {
    let mut out = Vec::new();
    generate_into(spec, round, &mut out);
    out
}

/// Like [`generate`], into a reused buffer (cleared first), and says what it wrote.
pub fn generate_into(spec: &GenSpec, round: u32, out: &mut Vec<u8>) -> GenStats {
    generate_titled_into(spec, round, 0, out)
}

/// Like [`generate_into`], with every base plan's title padded to `title_bytes` bytes of XML
/// (0: as they are): base plans of many plans under a long title, the shape whose plans must share
/// their title in memory.
pub fn generate_titled_into(spec: &GenSpec, round: u32, title_bytes: usize, out: &mut Vec<u8>) -> GenStats {
    out.clear();
    out.reserve(
        200 + spec.base_plans * (150 + title_bytes + spec.plans_per_base * (250 + spec.zones_per_plan * 95)),
    );
    let mut gen = Round {
        spec,
        round,
        title_bytes,
        r: u64::from(round),
        offline_share: spec.offline_share.clamp(0.0, 1.0),
        invalid_share: spec.invalid_share.clamp(0.0, 1.0),
        epoch: NaiveDate::from_ymd_opt(2021, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap(),
        stats: GenStats::default(),
    };
    out.extend_from_slice(
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<planList xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" version=\"1.0\" xsi:noNamespaceSchemaLocation=\"planList.xsd\">\n   <output>\n",
    );
    for b in 0..spec.base_plans as u64 {
        gen.base_plan(out, b);
    }
    out.extend_from_slice(b"   </output>\n</planList>\n");
    gen.stats
}

/// One round being written: what every base plan, plan and zone draws from.
struct Round<'a> {
    spec: &'a GenSpec,
    round: u32,
    /// Titles are padded to this many bytes of XML.
    title_bytes: usize,
    r: u64,
    offline_share: f64,
    invalid_share: f64,
    epoch: NaiveDateTime,
    stats: GenStats,
}

/// What a plan's zones need to know of their plan.
struct ZoneDraw<'r> {
    /// Draws that stay the same across rounds, and those of this round.
    rng: &'r mut StdRng,
    rr: &'r mut StdRng,
    /// The plan's first zone gets a price in the wrong format.
    bad_price: bool,
}

impl Round<'_> {
    /// Base plan `b` with its plans. Its title and sell mode are its own; a few change per round.
    fn base_plan(&mut self, out: &mut Vec<u8>, b: u64) {
        let (spec, round) = (self.spec, self.round);
        let base_id = 100 + b;
        let mut base_rng = StdRng::seed_from_u64(mix(&[spec.seed, 1, b]));
        let mut base_round = StdRng::seed_from_u64(mix(&[spec.seed, 2, b, self.r]));
        let title = TITLES[base_rng.random_range(0..TITLES.len())];
        let organizer = base_rng.random_bool(0.8).then(|| base_rng.random_range(1..50u32));
        let mut offline = base_rng.random_bool(self.offline_share);
        if round > 0 && base_round.random_bool(0.03) {
            offline = !offline;
        }
        let retitled = round > 0 && base_round.random_bool(0.05);
        let online = !offline;

        let _ = write!(
            out,
            "      <base_plan base_plan_id=\"{base_id}\" sell_mode=\"{}\"",
            if online { "online" } else { "offline" }
        );
        if let Some(o) = organizer {
            let _ = write!(out, " organizer_company_id=\"{o}\"");
        }
        out.extend_from_slice(b" title=\"");
        let title_at = out.len();
        let _ = write!(out, "{title} {base_id}");
        if retitled {
            let _ = write!(out, " (nueva fecha {round})");
        }
        let pad = self.title_bytes.saturating_sub(out.len() - title_at);
        out.extend(b" en gira por toda la peninsula".iter().cycle().take(pad));
        out.extend_from_slice(b"\">\n");
        for p in 0..spec.plans_per_base as u64 {
            self.plan(out, b, p, online);
        }
        out.extend_from_slice(b"      </base_plan>\n");
    }

    /// Plan slot `p` of base plan `b`: which plan holds the slot this round, its dates, and now
    /// and then one of the provider's kinds of invalid plan.
    fn plan(&mut self, out: &mut Vec<u8>, b: u64, p: u64, online: bool) {
        let (spec, round, r) = (self.spec, self.round, self.r);
        // Plans in a slot get replaced every `period` rounds: plans appear and disappear while
        // the count stays the same.
        let slot = mix(&[spec.seed, 3, b, p]);
        let period = 4 + slot % 12;
        let phase = (slot >> 8) % period;
        let generation = (r + phase) / period;
        let plan_id = 1 + p + generation * spec.plans_per_base as u64;

        let mut rng = StdRng::seed_from_u64(mix(&[spec.seed, 4, b, plan_id]));
        let mut rr = StdRng::seed_from_u64(mix(&[spec.seed, 5, b, plan_id, r]));
        let start = self.epoch + Duration::minutes(15 * rng.random_range(0..5 * 365 * 24 * 4i64));
        let mut length = 15 * rng.random_range(2..=16i64);
        if round > 0 && rr.random_bool(0.05) {
            length += 15 * rr.random_range(1..=4i64);
        }
        let end = start + Duration::minutes(length);
        let sell_from = start - Duration::days(rng.random_range(20..200i64));
        let sell_to = start - Duration::minutes(10);
        let sold_out = rr.random_bool(0.05);
        let invalid = rng.random_bool(self.invalid_share);
        let mut kind = rng.random_range(0..5u32);
        if kind == 2 && spec.zones_per_plan == 0 {
            kind = 3;
        }
        self.stats.plans += 1;
        if invalid {
            self.stats.invalid += 1;
        } else if online {
            self.stats.online += 1;
        }

        plan_dates(out, &mut rng, invalid.then_some(kind), start, end);
        if !(invalid && kind == 1) {
            let _ = write!(out, " plan_id=\"{plan_id}\"");
        }
        out.extend_from_slice(b" sell_from=\"");
        write_dt(out, sell_from);
        out.extend_from_slice(b"\" sell_to=\"");
        write_dt(out, sell_to);
        let _ = write!(out, "\" sold_out=\"{sold_out}\"");
        if spec.zones_per_plan == 0 {
            // Self-closing, 16 bytes shorter: a base plan of 350,000 plans stays under the default
            // `pipeline.max_base_plan_bytes`.
            out.extend_from_slice(b"/>\n");
            return;
        }
        out.extend_from_slice(b">\n");
        self.zones(out, ZoneDraw { rng: &mut rng, rr: &mut rr, bad_price: invalid && kind == 2 });
        out.extend_from_slice(b"         </plan>\n");
    }

    /// A plan's zones; capacities shrink and prices move a little from round to round.
    fn zones(&self, out: &mut Vec<u8>, d: ZoneDraw<'_>) {
        let (rng, rr, r) = (d.rng, d.rr, self.r);
        let mut zone_id = 0u64;
        for z in 0..self.spec.zones_per_plan {
            // Now and then a zone id repeats, as in the real feed.
            if z == 0 || !rng.random_bool(0.03) {
                zone_id = 1 + rng.random_range(0..5000u64);
            }
            let name = ZONE_NAMES[rng.random_range(0..ZONE_NAMES.len())];
            let base_capacity = rng.random_range(0..500u32);
            let mut cents = 50 * rng.random_range(10..400i64);
            let style = rng.random_range(0..3u32);
            let numbered = rng.random_bool(0.5);
            let capacity =
                base_capacity.saturating_sub(rr.random_range(0..=base_capacity.min(20) * r as u32));
            if self.round > 0 && rr.random_bool(0.1) {
                cents += 50 * rr.random_range(-5..=10i64);
            }
            let _ = write!(out, "            <zone zone_id=\"{zone_id}\" capacity=\"{capacity}\" price=\"");
            if d.bad_price && z == 0 {
                let _ = write!(out, "{},{:02}", cents / 100, cents % 100);
            } else {
                write_price(out, cents, style);
            }
            let _ = writeln!(out, "\" name=\"{name}\" numbered=\"{numbered}\" />");
        }
    }
}

/// Prices in the provider's formats: `20.00`, `7.5`, `100`.
fn write_price(out: &mut Vec<u8>, cents: i64, style: u32) {
    let (units, rest) = (cents / 100, cents % 100);
    let _ = match style {
        1 if rest % 10 == 0 => write!(out, "{units}.{}", rest / 10),
        2 if rest == 0 => write!(out, "{units}"),
        _ => write!(out, "{units}.{rest:02}"),
    };
}

fn write_dt(out: &mut Vec<u8>, d: NaiveDateTime) {
    let two = |out: &mut Vec<u8>, n: u32, sep: u8| {
        out.extend_from_slice(&[sep, b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    };
    let y = d.year() as u32;
    out.extend_from_slice(&[
        b'0' + (y / 1000 % 10) as u8,
        b'0' + (y / 100 % 10) as u8,
        b'0' + (y / 10 % 10) as u8,
        b'0' + (y % 10) as u8,
    ]);
    two(out, d.month(), b'-');
    two(out, d.day(), b'-');
    two(out, d.hour(), b'T');
    two(out, d.minute(), b':');
    two(out, d.second(), b':');
}

/// splitmix64 over the parts: independent, stable seeds per (kind, position, round).
fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// Epoch of [`random_stored_plan`]'s plans: 2021-01-01T00:00:00 (UTC).
pub fn stored_plan_origin() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2021, 1, 1).expect("valid date").and_hms_opt(0, 0, 0).expect("valid time")
}

/// One online plan ready for a store, starting within `span_minutes` of [`stored_plan_origin`]
/// (1 to 3 zones, 30 minutes to 4 hours long): the filler of `examples/gen_store.rs` and the
/// ClickHouse search bench, which fill stores directly without going through a feed.
pub fn random_stored_plan(rng: &mut StdRng, i: u64, span_minutes: i64) -> crate::domain::StoredPlan {
    use crate::domain::{Plan, PlanKey, StoredPlan, Zone};
    let origin = stored_plan_origin();
    let start = origin + Duration::minutes(rng.random_range(0..span_minutes));
    let end = start + Duration::minutes(rng.random_range(30..240));
    let zones = (0..rng.random_range(1..4u64))
        .map(|z| Zone {
            zone_id: z + 1,
            name: format!("zone {}", z + 1),
            capacity: 100,
            price: rust_decimal::Decimal::new(rng.random_range(500..15_000), 2),
            numbered: z % 2 == 0,
        })
        .collect();
    let plan = Plan {
        key: PlanKey::new("fever", i / 8, i),
        title: format!("Generated plan {i}").into(),
        online: true,
        organizer_company_id: Some(1),
        start,
        end,
        sell_from: Some(origin),
        sell_to: Some(end),
        sold_out: false,
        zones,
    };
    StoredPlan::new(plan, chrono_tz::UTC, true, 1)
}

/// Catalogue names for [`feed_shaped_stored_plan`]: a show tours cities, as in the provider's feed.
const SHOWS: [&str; 24] = [
    "Camela en concierto",
    "Pantomima Full",
    "Los Morancos",
    "Tributo a Juanito Valderrama",
    "Rock & Roll Night",
    "Mike's Comedy Club",
    "Noche de Flamenco",
    "Jazz & Blues",
    "O'Brien Live",
    "El Rey León",
    "La Traviata",
    "Stand-up sin censura",
    "Cirque du Soleil: Kooza",
    "El Lago de los Cisnes",
    "Monólogos en el Teatro",
    "Mamma Mia! El musical",
    "Candlelight: Vivaldi",
    "Les Luthiers",
    "Concierto de Año Nuevo",
    "Tributo a Queen",
    "Dani Martín en directo",
    "La Casa de Bernarda Alba",
    "Noche de Boleros",
    "Magia para toda la familia",
];
const CITIES: [&str; 12] = [
    "Madrid",
    "Barcelona",
    "Valencia",
    "Sevilla",
    "Bilbao",
    "Málaga",
    "Zaragoza",
    "Murcia",
    "Palma",
    "Alicante",
    "Granada",
    "Valladolid",
];

/// One online plan shaped like the provider's feed (tests/fixtures/provider): base plan `i / 8`
/// is a show in a city with a run of 8 dates on consecutive days at one hour (on the hour or half
/// hour), one length and one set of round prices; the base plans start at random within
/// `span_minutes` of [`stored_plan_origin`]. The compression figures of `benches/http.rs` use it
/// beside [`random_stored_plan`], whose times, prices and titles are all different.
pub fn feed_shaped_stored_plan(i: u64, span_minutes: i64) -> crate::domain::StoredPlan {
    use crate::domain::{Plan, PlanKey, StoredPlan, Zone};
    let base = i / 8;
    let mut rng = StdRng::seed_from_u64(base ^ 0x5eed_f00d);
    let day =
        stored_plan_origin().date() + Duration::days(rng.random_range(0..span_minutes / (24 * 60)).max(0));
    let start =
        day.and_hms_opt(rng.random_range(17..23), [0, 30][rng.random_range(0..2)], 0).expect("valid time")
            + Duration::days((i % 8) as i64);
    let end = start + Duration::minutes([60, 75, 90, 120][rng.random_range(0..4)]);
    const EUROS: [i64; 12] = [10, 12, 15, 18, 20, 25, 30, 35, 40, 45, 55, 75];
    let zones = (0..rng.random_range(1..4u64))
        .map(|z| Zone {
            zone_id: z + 1,
            name: ["Platea", "Grada 2", "Amfiteatre", "Palco", "Pista", "VIP & Backstage"]
                [(base + z) as usize % 6]
                .to_owned(),
            capacity: 100,
            price: rust_decimal::Decimal::new(EUROS[rng.random_range(0..EUROS.len())] * 100, 2),
            numbered: z % 2 == 0,
        })
        .collect();
    let plan = Plan {
        key: PlanKey::new("fever", base, i),
        title: format!(
            "{} · {}",
            SHOWS[base as usize % SHOWS.len()],
            CITIES[(base as usize / SHOWS.len()) % CITIES.len()]
        )
        .into(),
        online: true,
        organizer_company_id: Some(1),
        start,
        end,
        sell_from: Some(stored_plan_origin()),
        sell_to: Some(end),
        sold_out: false,
        zones,
    };
    StoredPlan::new(plan, chrono_tz::UTC, true, 1)
}

/// A plan's opening tag up to its dates: `bad` is the kind of invalid plan drawn, if any (0: an
/// impossible date, 3: an end before the start, 4: no end date).
fn plan_dates(
    out: &mut Vec<u8>,
    rng: &mut StdRng,
    bad: Option<u32>,
    start: NaiveDateTime,
    end: NaiveDateTime,
) {
    out.extend_from_slice(b"         <plan plan_start_date=\"");
    if bad == Some(0) {
        // An impossible date, like the provider's 2021-09-31.
        let month = [4, 6, 9, 11][rng.random_range(0..4usize)];
        let _ = write!(out, "{}-{month:02}-31T{:02}:00:00", 2021 + rng.random_range(0..5), start.hour());
    } else {
        write_dt(out, start);
    }
    if bad != Some(4) {
        out.extend_from_slice(b"\" plan_end_date=\"");
        write_dt(out, if bad == Some(3) { start - (end - start) } else { end });
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::feed::{parse_chunk, parse_document, Chunker};

    fn spec(seed: u64) -> GenSpec {
        GenSpec {
            base_plans: 40,
            plans_per_base: 6,
            zones_per_plan: 5,
            seed,
            offline_share: 0.25,
            invalid_share: 0.1,
        }
    }

    #[test]
    fn a_feed_shaped_show_runs_on_consecutive_days_with_one_title_hour_and_prices() {
        let span = 5 * 365 * 24 * 60;
        let run: Vec<_> = (16..24).map(|i| feed_shaped_stored_plan(i, span)).collect();
        let first = &run[0].plan;
        for (k, p) in run.iter().map(|s| &s.plan).enumerate() {
            assert_eq!((p.key.base_plan_id, p.key.plan_id), (2, 16 + k as u64));
            assert_eq!(p.title, first.title);
            assert_eq!(p.start, first.start + Duration::days(k as i64));
            assert_eq!(p.end - p.start, first.end - first.start);
            assert_eq!(
                p.zones.iter().map(|z| z.price).collect::<Vec<_>>(),
                first.zones.iter().map(|z| z.price).collect::<Vec<_>>()
            );
            assert!(p.start.minute() == 0 || p.start.minute() == 30, "{}", p.start);
        }
        assert_eq!(feed_shaped_stored_plan(16, span).plan.start, first.start, "deterministic");
        assert_ne!(
            feed_shaped_stored_plan(24, span).plan.title,
            first.title,
            "the next base plan is another show"
        );
    }

    #[test]
    fn output_parses_back_to_every_plan_minus_the_invalid_ones() {
        let provider: Arc<str> = Arc::from("sim");
        for round in 0..4 {
            let mut body = Vec::new();
            let stats = generate_into(&spec(42), round, &mut body);
            assert_eq!(stats.plans, 40 * 6);
            assert!(stats.invalid > 0 && stats.invalid < 60, "{stats:?}");
            let parsed = parse_document(&provider, &body).unwrap();
            assert_eq!(parsed.error, None);
            assert_eq!(parsed.plans.len(), stats.plans - stats.invalid, "round {round}");
            assert_eq!(parsed.skipped.len(), stats.invalid, "round {round}");
            assert_eq!(parsed.plans.iter().filter(|p| p.online).count(), stats.online);
            assert!(parsed.plans.iter().all(|p| p.zones.len() == 5 && p.end >= p.start));
            let keys: HashSet<_> = parsed.plans.iter().map(|p| p.key.clone()).collect();
            assert_eq!(keys.len(), parsed.plans.len(), "keys are unique");
            let first = NaiveDate::from_ymd_opt(2021, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
            let last = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
            assert!(parsed.plans.iter().all(|p| p.start >= first && p.start < last));

            // Chunked in small pieces, the same plans come out.
            let mut chunker = Chunker::new(4096, 1 << 20);
            let mut plans = Vec::new();
            for piece in body.chunks(1000) {
                for c in chunker.push(piece).unwrap() {
                    plans.extend(parse_chunk(&provider, &c).plans);
                }
            }
            if let Some(c) = chunker.finish().unwrap() {
                plans.extend(parse_chunk(&provider, &c).plans);
            }
            assert_eq!(plans, parsed.plans);
        }
    }

    #[test]
    fn same_seed_and_round_give_the_same_bytes() {
        assert_eq!(generate(&spec(1), 0), generate(&spec(1), 0));
        assert_eq!(generate(&spec(1), 3), generate(&spec(1), 3));
        assert_ne!(generate(&spec(1), 0), generate(&spec(2), 0));
        assert_ne!(generate(&spec(1), 0), generate(&spec(1), 1));
    }

    #[test]
    fn rounds_change_some_plans_and_keep_most() {
        let provider: Arc<str> = Arc::from("sim");
        let s = GenSpec { invalid_share: 0.0, ..spec(9) };
        let r0 = parse_document(&provider, &generate(&s, 0)).unwrap().plans;
        let r1 = parse_document(&provider, &generate(&s, 1)).unwrap().plans;
        let k0: HashSet<_> = r0.iter().map(|p| p.key.clone()).collect();
        let k1: HashSet<_> = r1.iter().map(|p| p.key.clone()).collect();
        let kept = k0.intersection(&k1).count();
        assert!(kept < k0.len(), "some plans disappear");
        assert!(kept > k0.len() / 2, "most plans stay: {kept} of {}", k0.len());
        let changed = r1.iter().filter(|p| k0.contains(&p.key) && !r0.contains(p)).count();
        assert!(changed > 0, "some kept plans changed");
        let same_start =
            r1.iter().filter(|p| r0.iter().any(|q| q.key == p.key && q.start == p.start)).count();
        assert_eq!(same_start, kept, "a kept plan keeps its start");
    }

    #[test]
    fn titles_carry_entities() {
        let body = generate(&GenSpec { base_plans: 200, ..spec(3) }, 0);
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("&amp;") && text.contains("&#39;"));
        let parsed = parse_document(&Arc::from("sim"), &body).unwrap();
        assert!(parsed.plans.iter().any(|p| p.title.starts_with("Rock & Roll Night")));
        assert!(parsed.plans.iter().any(|p| p.title.starts_with("Mike's Comedy Club")));
        assert!(parsed.plans.iter().all(|p| !p.title.contains('&') || p.title.contains("& ")));
    }

    #[test]
    fn padded_titles_have_their_length_and_change_nothing_else() {
        let spec = GenSpec { base_plans: 20, ..spec(3) };
        let mut body = Vec::new();
        let stats = generate_titled_into(&spec, 2, 1024, &mut body);
        assert_eq!(stats, generate_into(&spec, 2, &mut Vec::new()));
        let parsed = parse_document(&Arc::from("sim"), &body).unwrap();
        let plain = parse_document(&Arc::from("sim"), &generate(&spec, 2)).unwrap();
        assert_eq!(parsed.plans.len(), plain.plans.len());
        for (p, q) in parsed.plans.iter().zip(&plain.plans) {
            // Entities count in the XML's 1024 bytes, decoded they are shorter.
            assert!((1000..=1024).contains(&p.title.len()), "{}", p.title.len());
            assert!(p.title.starts_with(&*q.title));
            assert_eq!((&p.key, p.start, &p.zones), (&q.key, q.start, &q.zones));
        }
    }
}
