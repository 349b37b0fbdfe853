//! The feed's rules for attribute text: how references are decoded, what a title may hold, and
//! how a raw value is shown in a skip reason or a log line.
//!
//! A provider may send anything, so nothing here copies more than a bounded prefix of a value it
//! does not keep: a 1 MB id costs its reason 64 bytes, not 1 MB per plan that mentions it.

use std::borrow::Cow;
use std::fmt;

use quick_xml::events::attributes::Attribute;

/// Bytes of a raw value shown in skip reasons and logs; longer values are cut and their length
/// is given instead.
pub const SHOWN_BYTES: usize = 64;

/// Longest title or zone name kept, in bytes. A title is copied into every plan of its base plan,
/// so an unbounded one would cost its length times the plans; real titles stay far below this.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Longest reference body between `&` and `;` (`#x10FFFF` is 8); a longer run without `;` is text.
const MAX_REFERENCE: usize = 10;

/// The attribute value with references resolved and literal tabs and line breaks turned into
/// spaces (XML attribute-value normalization).
///
/// Rules where XML would reject the document: a numeric reference to a character XML does not
/// allow (`&#0;`, `&#xD800;`, `&#x110000;`, `&#zz;`) becomes U+FFFD, so the valid references beside
/// it are still decoded and the value never reaches a client half raw; an unknown named entity
/// (`&nbsp;`) or a bare `&` stays literal text.
pub fn value<'v>(a: &'v Attribute<'_>) -> Cow<'v, str> {
    let raw: &str = &a.value;
    // Without an early exit the loop is vectorized: values are short and almost never special.
    let special = raw.bytes().fold(false, |any, c| any | matches!(c, b'&' | b'\t' | b'\r' | b'\n'));
    if !special {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(decode(raw))
}

/// A title or zone name: [`value`], without control characters (tabs and line breaks become
/// spaces, NUL and the other C0/C1 controls are dropped), cut to [`MAX_TEXT_BYTES`].
pub fn text(a: &Attribute<'_>) -> String {
    let v = value(a);
    let suspicious = v.bytes().fold(false, |any, c| any | (c < 0x20) | (c == 0x7f) | (c == 0xc2));
    let mut s = if suspicious && v.chars().any(char::is_control) {
        v.chars()
            .filter_map(|c| match c {
                '\t' | '\n' | '\r' => Some(' '),
                c if c.is_control() => None,
                c => Some(c),
            })
            .collect()
    } else {
        v.into_owned()
    };
    if s.len() > MAX_TEXT_BYTES {
        s.truncate(floor_char_boundary(&s, MAX_TEXT_BYTES));
    }
    s
}

fn decode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        push_normalized(&mut out, &rest[..amp]);
        let after = &rest[amp + 1..];
        let window = &after.as_bytes()[..after.len().min(MAX_REFERENCE + 1)];
        let resolved = window
            .iter()
            .position(|&c| c == b';')
            .and_then(|semi| resolve(&after[..semi]).map(|c| (c, semi)));
        match resolved {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    push_normalized(&mut out, rest);
    out
}

fn push_normalized(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| if matches!(c, '\t' | '\r' | '\n') { ' ' } else { c }));
}

/// The character a reference body stands for; `None` when it is no reference at all (kept as text).
fn resolve(body: &str) -> Option<char> {
    let numeric = |digits: &str, radix: u32| {
        let ok = !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix));
        ok.then(|| u32::from_str_radix(digits, radix).ok())
            .flatten()
            .and_then(char::from_u32)
            .filter(|&c| is_xml_char(c))
            .unwrap_or(char::REPLACEMENT_CHARACTER)
    };
    Some(match body {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => match body.strip_prefix('#') {
            Some(hex) if hex.starts_with(['x', 'X']) => numeric(&hex[1..], 16),
            Some(dec) => numeric(dec, 10),
            None => return None,
        },
    })
}

/// XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// A raw value as shown in skip reasons and logs: quoted, and when longer than [`SHOWN_BYTES`],
/// its first bytes followed by its length (`"xxxx"… (1048576 bytes)`).
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.len() <= SHOWN_BYTES {
            write!(f, "{s:?}")
        } else {
            write!(f, "{:?}… ({} bytes)", &s[..floor_char_boundary(s, SHOWN_BYTES)], s.len())
        }
    }
}

/// A raw value kept in a record (no quotes): the value itself when short, otherwise its first
/// [`SHOWN_BYTES`] bytes followed by its length.
pub fn clipped(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        s.to_owned()
    } else {
        format!("{}… ({} bytes)", &s[..floor_char_boundary(s, SHOWN_BYTES)], s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_decode_and_invalid_ones_become_replacement_characters() {
        assert_eq!(decode("a &amp; b &lt;&gt;&quot;&apos;"), "a & b <>\"'");
        assert_eq!(decode("&#x1F600; &#0; &#128512; &#xD800; &#x110000; &#zz; &#;"), "😀 � 😀 � � � �");
        assert_eq!(decode("&#1;&#x9;"), "�\t");
        assert_eq!(decode("&nbsp; AT&T & &amp"), "&nbsp; AT&T & &amp");
        assert_eq!(decode("a\tb\r\nc"), "a b  c");
        // A long run without `;` is text, however many `&` it holds.
        let many = "&".repeat(10_000) + "x";
        assert_eq!(decode(&many), many);
    }

    #[test]
    fn shown_and_clipped_values_are_bounded() {
        assert_eq!(Shown("abc").to_string(), "\"abc\"");
        let long = "x".repeat(1 << 20);
        let shown = Shown(&long).to_string();
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("… (1048576 bytes)"), "{shown}");
        assert_eq!(clipped("444"), "444");
        assert!(clipped(&long).len() < 100);
        // Cut at a character boundary.
        let wide = "é".repeat(100);
        assert!(Shown(&wide).to_string().starts_with("\"éé"));
    }
}
