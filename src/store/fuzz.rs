//! What the fuzz targets (`fuzz/`) drive in the store: the decoders of stored rows, behind and
//! past their checksums.

use crate::context::PayloadPolicy;
use crate::meter::Meter;

use super::schema::{self, RowKey};

/// Decodes `data` as every kind of stored value, both as found (the checksum rejects almost
/// everything) and sealed under its key first (so the decoders behind the checksum see the
/// bytes): no input may panic, and a value that decodes re-encodes to one that decodes the same.
pub(crate) fn stored_rows(data: &[u8]) {
    let (stream, n) = (7, 11);
    let sealed = |key: RowKey<'_>| {
        let mut value = data.to_vec();
        schema::seal(key, &mut value, 0);
        value
    };
    let _ = schema::decode_record(stream, n, data);
    let _ = schema::decode_change(stream, n, data);
    let _ = schema::decode_note(stream, n, data);
    let _ = schema::decode_meta("fuzz", data);

    let record = sealed(RowKey::Record { stream, seq: n });
    let _ = schema::last_ts(stream, n, &record);
    let _ = schema::created_revision(stream, n, &record);
    let _ = schema::last_revision_and_ts(stream, n, &record);
    let _ = schema::decode_cached(stream, n, &record, PayloadPolicy::Keep, &Meter::default());
    if let Ok((decoded, created)) = schema::decode_record(stream, n, &record) {
        let mut again = Vec::new();
        schema::encode_record(stream, &decoded, &created, &mut again);
        let round = schema::decode_record(stream, n, &again).expect("a re-encoded record decodes");
        assert_eq!(round, (decoded, created), "decode ∘ encode is the identity");
    }
    let change = sealed(RowKey::Change {
        stream,
        revision: n,
    });
    if let Ok(entry) = schema::decode_change(stream, n, &change) {
        let mut again = Vec::new();
        schema::encode_change(stream, n, &entry, &mut again);
        assert_eq!(schema::decode_change(stream, n, &again).ok(), Some(entry));
    }
    let note = sealed(RowKey::Note { stream, id: n });
    if let Ok(decoded) = schema::decode_note(stream, n, &note) {
        let mut again = Vec::new();
        schema::encode_note(stream, &decoded, &mut again);
        assert_eq!(schema::decode_note(stream, n, &again).ok(), Some(decoded));
    }
    let meta = sealed(RowKey::Stream("fuzz"));
    if let Ok(decoded) = schema::decode_meta("fuzz", &meta) {
        let again = schema::encode_meta("fuzz", &decoded);
        assert_eq!(schema::decode_meta("fuzz", &again).ok(), Some(decoded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Note, Record, Severity};
    use crate::payload::Payload;

    /// Writes the stored-row seeds of `fuzz/seeds/` (values without their checksum, as
    /// [`stored_rows`] seals them): `cargo test --lib write_row_seeds -- --ignored`.
    #[test]
    #[ignore = "writes committed seed files"]
    fn write_row_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        std::fs::create_dir_all(&dir).unwrap();
        let ts = crate::event::parse_timestamp("2024-05-01T10:31:41.123456Z").unwrap();
        let mut event = Event::new("tool", Severity::Error, "search(\"q\") timed out").unwrap();
        event.actor = Some("searcher".into());
        event.payload = Some(Payload::from_json(r#"{"query":"q","attempt":2}"#).unwrap());
        let record = Record::from_event(event, 11, 40, ts);
        let unsealed = |mut value: Vec<u8>| {
            value.truncate(value.len() - schema::CHECKSUM_BYTES);
            value
        };
        let mut value = Vec::new();
        schema::encode_record(7, &record, &schema::Created::of(&record), &mut value);
        std::fs::write(dir.join("row-record"), unsealed(value)).unwrap();
        let note = Note {
            id: 11,
            text: "use the staging database".into(),
            created_at: ts,
            expires_at: Some(ts),
        };
        let mut value = Vec::new();
        schema::encode_change(7, 11, &schema::ChangeEntry::Note(note.clone()), &mut value);
        std::fs::write(dir.join("row-change"), unsealed(value)).unwrap();
        let mut value = Vec::new();
        schema::encode_note(7, &note, &mut value);
        std::fs::write(dir.join("row-note"), unsealed(value)).unwrap();
        let meta = schema::encode_meta("fuzz", &schema::StreamMeta::new(7));
        std::fs::write(dir.join("row-stream"), unsealed(meta)).unwrap();
    }
}
