//! `recap export STREAM`: the stream's records as JSONL, oldest first, one record per line in
//! the JSON shape of the API (`seq`, `first_ts`, `last_ts`, `repeat_count`, `revision` and the
//! event fields). `recap import` reads it back as records (`POST .../records`), losslessly but
//! for `seq` and `revision`, which the target stream assigns.
//!
//! Live pinned notes travel with their audit records: the `note` record that the server logged
//! when the note was added carries `note: {"created_at", "expires_at"?}`, and import makes the
//! note again from it (see [`crate::jsonl`]). A live note whose audit record is no longer stored
//! (retention removed it, or an identical note's record took its place) cannot be exported that
//! way; [`ExportSummary::notes_left_out`] lists it so the command can say so.

use std::collections::HashMap;
use std::io::Write;

use http::Method;
use serde::Deserialize;

use crate::event::{Note, Record, StreamName};
use crate::jsonl;
use crate::store::MAX_PAGE_RECORDS;

use super::{Client, ClientError};

#[derive(Deserialize)]
struct Page {
    records: Vec<Record>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct NoteList {
    notes: Vec<Note>,
    #[serde(default)]
    next: Option<u64>,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    /// Records written (one line each).
    pub records: usize,
    /// Live notes written with their audit records.
    pub notes: usize,
    /// Live notes that could not be written: their audit records are gone.
    pub notes_left_out: Vec<Note>,
}

/// Writes every record of `stream` to `out`, with its live notes on their audit records.
pub async fn export(
    client: &Client,
    stream: &StreamName,
    out: &mut impl Write,
) -> Result<ExportSummary, ClientError> {
    // Notes first: a note added while the records are paged is exported as a plain record
    // (its audit record) rather than missed.
    let mut live: HashMap<u64, Note> = HashMap::new();
    let mut after = 0;
    loop {
        let page: NoteList = client
            .json(
                Method::GET,
                &format!("/v1/streams/{stream}/notes?after={after}"),
                None,
            )
            .await?;
        live.extend(page.notes.into_iter().map(|n| (n.id, n)));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut summary = ExportSummary::default();
    let mut after = 0;
    loop {
        let page: Page = client
            .json(
                Method::GET,
                &format!("/v1/streams/{stream}/events?after={after}&limit={MAX_PAGE_RECORDS}"),
                None,
            )
            .await?;
        for record in &page.records {
            let note = record
                .note_id()
                .filter(|id| live.get(id).is_some_and(|note| note.text == record.message))
                .and_then(|id| live.remove(&id));
            let line = match &note {
                Some(note) => jsonl::note_record_line(record, note),
                None => jsonl::record_line(record),
            };
            writeln!(out, "{line}").map_err(ClientError::Output)?;
            summary.records += 1;
            summary.notes += usize::from(note.is_some());
        }
        match page.next {
            Some(next) if !page.records.is_empty() && next > after => after = next,
            _ => break,
        }
    }
    out.flush().map_err(ClientError::Output)?;
    summary.notes_left_out = live.into_values().collect();
    summary.notes_left_out.sort_by_key(|note| note.id);
    Ok(summary)
}
