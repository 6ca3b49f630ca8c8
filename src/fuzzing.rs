//! Entry points of the fuzz targets in `fuzz/` (run with cargo-fuzz; see `fuzz/README.md`).
//! Each takes arbitrary bytes and must not panic; they are not part of recap's API.

use crate::event::StreamName;
use crate::server::auth::Keys;

/// The decoders of stored rows: records, changes, notes, stream rows.
pub fn stored_rows(data: &[u8]) {
    crate::store::fuzz::stored_rows(data);
}

/// A request body of events or exported records, in both framings, as the server parses it.
pub fn event_body(data: &[u8]) {
    crate::server::fuzz::event_body(data);
}

/// What names rows and grants access to them: stream names (every per-stream key derives from
/// one) and the keys file.
pub fn keys(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(name) = StreamName::new(text) {
            assert_eq!(name.as_str(), text, "a valid name is kept as given");
        }
        let _ = Keys::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points take the fuzzers' seeds (`fuzz/seeds/`) without panicking.
    #[test]
    fn seeds_run() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let mut count = 0;
        for entry in std::fs::read_dir(seeds).unwrap() {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            stored_rows(&seed);
            event_body(&seed);
            keys(&seed);
            count += 1;
        }
        assert!(count >= 6, "{count} seeds");
    }
}
