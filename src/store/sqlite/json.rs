//! The zones of a plan as JSON text (the `zones` column, read by ad-hoc SQL through `json_each`),
//! written by hand into one reused buffer: a batch of feed-sized plans spends less time here than
//! it did going through `serde_json::Value`, and the output is the same byte for byte (tested).

use crate::domain::{DecimalText, Zone};

/// The zones as a JSON array, appended to `out`: keys in the order `serde_json` maps give them
/// (sorted), prices as exact decimal strings (scale kept), names escaped as JSON strings.
pub(super) fn write_zones_json(out: &mut String, zones: &[Zone]) {
    out.push('[');
    for (i, z) in zones.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut ints = itoa::Buffer::new();
        out.push_str("{\"capacity\":");
        out.push_str(ints.format(z.capacity));
        out.push_str(",\"name\":");
        push_json_str(out, &z.name);
        out.push_str(if z.numbered {
            ",\"numbered\":true,\"price\":\""
        } else {
            ",\"numbered\":false,\"price\":\""
        });
        out.push_str(DecimalText::new(&z.price).as_str());
        out.push_str("\",\"zone_id\":");
        out.push_str(ints.format(z.zone_id));
        out.push('}');
    }
    out.push(']');
}

/// `s` as a JSON string literal, escaped as `serde_json` escapes it.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones_json(zones: &[Zone]) -> String {
        let mut out = String::new();
        write_zones_json(&mut out, zones);
        out
    }

    /// The previous encoder, through `serde_json::Value`: the fast one must match it byte for byte.
    fn zones_json_via_value(zones: &[Zone]) -> String {
        let zones: Vec<_> = zones
            .iter()
            .map(|z| {
                serde_json::json!({
                    "zone_id": z.zone_id,
                    "name": z.name,
                    "capacity": z.capacity,
                    "price": z.price.to_string(),
                    "numbered": z.numbered,
                })
            })
            .collect();
        serde_json::Value::Array(zones).to_string()
    }

    #[test]
    fn zones_json_matches_serde_json_byte_for_byte() {
        let names =
            ["Platea", "", "a\"b\\c", "line\nbreak\ttab\r", "ctl\u{1}\u{8}\u{c}\u{1f}", "ñandú €", "\u{7f}"];
        let zones: Vec<Zone> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Zone {
                zone_id: u64::MAX - i as u64,
                name: (*n).into(),
                capacity: u32::MAX - i as u32,
                price: ["20.00", "7.5", "0", "-1.250", "123456789.123456789", "0.0", "1"][i].parse().unwrap(),
                numbered: i % 2 == 0,
            })
            .collect();
        assert_eq!(zones_json(&zones), zones_json_via_value(&zones));
        assert_eq!(zones_json(&zones[..1]), zones_json_via_value(&zones[..1]));
    }

    #[test]
    fn zones_are_json_with_exact_prices() {
        let zones = vec![
            Zone {
                zone_id: 40,
                name: "Platea".into(),
                capacity: 0,
                price: "20.00".parse().unwrap(),
                numbered: true,
            },
            Zone {
                zone_id: 40,
                name: "Anfiteatro \"A\"".into(),
                capacity: 9,
                price: "7.5".parse().unwrap(),
                numbered: false,
            },
        ];
        let json: serde_json::Value = serde_json::from_str(&zones_json(&zones)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"zone_id": 40, "name": "Platea", "capacity": 0, "price": "20.00", "numbered": true},
                {"zone_id": 40, "name": "Anfiteatro \"A\"", "capacity": 9, "price": "7.5", "numbered": false},
            ])
        );
        assert_eq!(zones_json(&[]), "[]");
    }
}
