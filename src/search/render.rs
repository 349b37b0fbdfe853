//! The contract's `EventSummary` JSON, written straight into a string (no serde round trip).

use std::fmt::Write as _;

use chrono::NaiveDate;

use crate::domain::EventRow;

/// Estimated JSON bytes of one `EventSummary` besides its title, for the directory's sizes.
pub(super) const EVENT_OVERHEAD: u64 = 200;

/// The contract's `EventSummary`. Prices are written as exact decimal literals (`20.00`), which
/// are valid JSON numbers.
pub fn render_event(row: &EventRow) -> String {
    let mut out = String::with_capacity(EVENT_OVERHEAD as usize + row.title.len());
    write_event(&mut out, row);
    out
}

/// Renders without the formatting machinery: a cold year renders tens of thousands of plans, and
/// this runs while the search waits.
pub(super) fn write_event(out: &mut String, row: &EventRow) {
    out.push_str(r#"{"id":""#);
    out.push_str(row.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    out.push_str(r#"","title":"#);
    let _ = serde_json::to_writer(StringWriter(out), &row.title);
    out.push_str(r#","start_date":""#);
    push_date(out, row.start_local.date());
    out.push_str(r#"","start_time":""#);
    push_time(out, row.start_local.time());
    out.push_str(r#"","end_date":""#);
    push_date(out, row.end_local.date());
    out.push_str(r#"","end_time":""#);
    push_time(out, row.end_local.time());
    out.push_str(r#"","min_price":"#);
    write_price(out, row.min_price);
    out.push_str(r#","max_price":"#);
    write_price(out, row.max_price);
    out.push('}');
}

/// `YYYY-MM-DD`, as `%Y-%m-%d` writes it (feed dates are years 1 to 9999).
pub(super) fn push_date(out: &mut String, d: NaiveDate) {
    use chrono::Datelike;
    if !(0..=9999).contains(&d.year()) {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        return;
    }
    push_digits(out, d.year() as u32, 4);
    out.push('-');
    push_digits(out, d.month(), 2);
    out.push('-');
    push_digits(out, d.day(), 2);
}

/// `HH:MM:SS`, as `%H:%M:%S` writes it (a fraction is not shown).
pub(super) fn push_time(out: &mut String, t: chrono::NaiveTime) {
    use chrono::Timelike;
    push_digits(out, t.hour(), 2);
    out.push(':');
    push_digits(out, t.minute(), 2);
    out.push(':');
    // A leap second reads as second 60, as chrono's %S writes it.
    push_digits(out, t.second() + t.nanosecond() / 1_000_000_000, 2);
}

pub(super) fn push_digits(out: &mut String, v: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(char::from(b'0' + (v / 10u32.pow(i) % 10) as u8));
    }
}

pub(super) fn write_price(out: &mut String, p: Option<rust_decimal::Decimal>) {
    match p {
        Some(d) => out.push_str(crate::domain::DecimalText::new(&d).as_str()),
        None => out.push_str("null"),
    }
}

/// `serde_json` writes to an `io::Write`; this one appends to a `String` (serde_json writes whole
/// characters, so every piece is valid UTF-8).
pub(super) struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s =
            std::str::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.push_str(s);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
