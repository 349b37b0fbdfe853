//! What the feed benches share: quick-xml's own speed over a body, the ceiling for any parser.

use quick_xml::events::Event;

/// quick-xml's event loop over `body`, doing nothing with the events; returns their count.
pub fn raw_events(body: &[u8]) -> u64 {
    walk(body, false)
}

/// The same loop reading every attribute value (no conversion); returns the attribute count.
pub fn events_with_attributes(body: &[u8]) -> u64 {
    walk(body, true)
}

/// Events, or attributes when `attributes` is set, of the whole body.
fn walk(body: &[u8], attributes: bool) -> u64 {
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut count = 0u64;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return count,
            Ok(Event::Start(e) | Event::Empty(e)) if attributes => {
                for a in e.attributes().with_checks(false) {
                    std::hint::black_box(&a.expect("well-formed attribute").value);
                    count += 1;
                }
            }
            Ok(e) => {
                std::hint::black_box(&e);
                count += u64::from(!attributes);
            }
            Err(e) => panic!("the benched feed is not XML: {e}"),
        }
    }
}
