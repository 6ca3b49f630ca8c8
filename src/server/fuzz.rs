//! What the `event_body` fuzz target (`fuzz/`) drives in the server: the parsers of request
//! bodies.

use crate::event::EventLimits;

use super::body::Framing;
use super::events::{parse_events, parse_records};

/// A request body of events or exported records, in both framings, as the server parses it.
pub(crate) fn event_body(data: &[u8]) {
    let limits = EventLimits::default();
    for framing in [Framing::Json, Framing::Ndjson] {
        let _ = parse_events(data, framing, &limits);
        let _ = parse_records(data, framing, &limits);
    }
}
