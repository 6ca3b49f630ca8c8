//! `recap export STREAM`: the stream's records as JSONL, oldest first, one record per line in
//! the JSON shape of the API (`seq`, `first_ts`, `last_ts`, `repeat_count`, `revision` and the
//! event fields). `recap import` reads it back as records (`POST .../records`), losslessly but
//! for `seq` and `revision`, which the target stream assigns.

use std::io::Write;

use http::Method;
use serde::Deserialize;

use crate::event::{Record, StreamName};
use crate::jsonl;
use crate::store::MAX_PAGE_RECORDS;

use super::{Client, ClientError};

#[derive(Deserialize)]
struct Page {
    records: Vec<Record>,
    next: Option<u64>,
}

/// Writes every record of `stream` to `out`; returns how many.
pub async fn export(
    client: &Client,
    stream: &StreamName,
    out: &mut impl Write,
) -> Result<usize, ClientError> {
    let mut after = 0;
    let mut written = 0;
    loop {
        let page: Page = client
            .json(
                Method::GET,
                &format!("/v1/streams/{stream}/events?after={after}&limit={MAX_PAGE_RECORDS}"),
                None,
            )
            .await?;
        for record in &page.records {
            writeln!(out, "{}", jsonl::record_line(record)).map_err(ClientError::Output)?;
            written += 1;
        }
        match page.next {
            Some(next) if !page.records.is_empty() && next > after => after = next,
            _ => break,
        }
    }
    out.flush().map_err(ClientError::Output)?;
    Ok(written)
}
