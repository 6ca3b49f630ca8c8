//! Reads of the PostgreSQL backend, on pooled connections: history pages, changelog replay,
//! notes, stream statistics. They answer exactly as the redb store's reads do (the conformance
//! suite compares them).

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::anomaly::AnomalySettings;
use crate::event::{Note, Record, StreamName, Timestamp};

use super::super::{
    Change, MAX_PAGE_RECORDS, MAX_SCAN_RECORDS, RecordPage, RecordQuery, Retention, SeqRange,
    StoreError, StreamStats,
};
use super::load::{self, StreamRow};
use super::{codec, pool_error, unreachable_or};

/// A stream's row; a stream that does not exist is [`StoreError::UnknownStream`].
async fn stream_row(
    client: &tokio_postgres::Client,
    stream: &StreamName,
) -> Result<StreamRow, StoreError> {
    load::stream_row(client, stream)
        .await?
        .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))
}

/// A page of history, with the redb store's paging rules (`reads::records` there).
pub(super) async fn records(
    pool: &Pool,
    stream: &StreamName,
    query: &RecordQuery,
) -> Result<RecordPage, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    // One snapshot for the stream row and its records.
    let client = &**client;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|error| unreachable_or(error, "reading records"))?;
    let page = records_in(client, stream, query).await;
    // A failed read leaves nothing to keep; the connection goes back to the pool either way.
    let _ = client.batch_execute("COMMIT").await;
    page
}

async fn records_in(
    client: &tokio_postgres::Client,
    stream: &StreamName,
    query: &RecordQuery,
) -> Result<RecordPage, StoreError> {
    let meta = stream_row(client, stream).await?;
    let limit = query.limit.min(MAX_PAGE_RECORDS);
    let last_seq = meta.totals.records;
    let low = query
        .after
        .map_or(0, |after| after.saturating_add(1))
        .max(meta.first_seq);
    let high = query
        .before
        .unwrap_or(u64::MAX)
        .min(last_seq.saturating_add(1));
    let asked_low = query.after.map_or(1, |after| after.saturating_add(1));
    let removed = (asked_low < meta.first_seq && asked_low < high).then(|| SeqRange {
        from: asked_low,
        to: (meta.first_seq - 1).min(high - 1),
    });
    if limit == 0 || low >= high {
        return Ok(RecordPage {
            records: Vec::new(),
            next: None,
            removed,
        });
    }
    let backward = query.before.is_some() && query.after.is_none();
    let filtered = query.kinds.is_some()
        || query.min_severity.is_some()
        || query.since.is_some()
        || query.until.is_some();
    // Without filters every row scanned is returned: one more than the page says whether
    // there is a next one. With filters the scan goes as far as the redb store's does.
    let fetch = if filtered {
        MAX_SCAN_RECORDS
    } else {
        limit + 1
    } as i64;
    let sql = if backward {
        "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND seq >= $2 AND seq < $3
         ORDER BY seq DESC LIMIT $4"
    } else {
        "SELECT seq, body FROM recap_records WHERE stream_id = $1 AND seq >= $2 AND seq < $3
         ORDER BY seq LIMIT $4"
    };
    let rows = client
        .query(
            sql,
            &[&(meta.id as i64), &(low as i64), &(high as i64), &fetch],
        )
        .await
        .map_err(|error| unreachable_or(error, "reading records"))?;
    let mut page = Vec::new();
    let mut next = None;
    // Seqs `low..high` are all stored (dense): a missing one is damage, never a short page.
    let mut expected = if backward { high - 1 } else { low };
    let mut scanned = 0;
    for row in &rows {
        let seq = row.get::<_, i64>(0) as u64;
        if seq != expected {
            return Err(missing(stream, expected));
        }
        let record = codec::decode_record(stream.as_str(), row.get(0), row.get(1))?;
        scanned += 1;
        if admits(query, &record) {
            page.push(record);
        }
        let at_end = if backward {
            seq == low
        } else {
            seq + 1 == high
        };
        if at_end {
            break;
        }
        if page.len() == limit || scanned == MAX_SCAN_RECORDS {
            next = Some(seq);
            break;
        }
        expected = if backward { seq - 1 } else { seq + 1 };
    }
    if next.is_none() && scanned as u64 != high - low {
        return Err(missing(stream, expected));
    }
    if backward {
        page.reverse();
    }
    Ok(RecordPage {
        records: page,
        next,
        removed,
    })
}

fn missing(stream: &StreamName, seq: u64) -> StoreError {
    StoreError::Damaged {
        stream: stream.to_string(),
        row: format!("record {seq}"),
        problem: "is missing".into(),
    }
}

fn admits(query: &RecordQuery, record: &Record) -> bool {
    query
        .kinds
        .as_ref()
        .is_none_or(|kinds| kinds.contains(&record.kind))
        && query.min_severity.is_none_or(|min| record.severity >= min)
        && query.since.is_none_or(|since| record.last_ts >= since)
        && query.until.is_none_or(|until| record.first_ts < until)
}

/// Changes with revision greater than `after`, oldest first, at most `limit`.
pub(super) async fn changes(
    pool: &Pool,
    stream: &StreamName,
    after: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let row = client
        .query_opt(
            "SELECT id, changelog_floor FROM recap_streams WHERE name = $1",
            &[&stream.as_str()],
        )
        .await
        .map_err(|error| unreachable_or(error, "reading changes"))?
        .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))?;
    let id: i64 = row.get(0);
    // Changes at or below the floor may be only partly deleted yet (maintenance deletes them
    // in bounded steps): none of them is served, as the redb store serves none.
    let floor: i64 = row.get(1);
    let after = (after as i64).max(floor);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT revision, body FROM recap_changes WHERE stream_id = $1 AND revision > $2
             ORDER BY revision LIMIT $3",
            &[&id, &after, &(limit as i64)],
        )
        .await
        .map_err(|error| unreachable_or(error, "reading changes"))?;
    rows.iter()
        .map(|row| codec::decode_change(stream, id as u64, row.get(0), row.get(1)))
        .collect()
}

async fn stored_notes(
    client: &tokio_postgres::Client,
    stream: &StreamName,
    id: i64,
    now: Timestamp,
) -> Result<Vec<Note>, StoreError> {
    let rows: Vec<Row> = client
        .query(
            "SELECT id, body FROM recap_notes WHERE stream_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .map_err(|error| unreachable_or(error, "reading notes"))?;
    let mut notes = rows
        .iter()
        .map(|row| codec::decode_note(stream.as_str(), row.get(0), row.get(1)))
        .collect::<Result<Vec<_>, _>>()?;
    notes.retain(|note| note.is_live(now));
    Ok(notes)
}

/// A stream's live notes, oldest first.
pub(super) async fn notes(
    pool: &Pool,
    stream: &StreamName,
    now: Timestamp,
) -> Result<Vec<Note>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let meta = stream_row(&client, stream).await?;
    stored_notes(&client, stream, meta.id as i64, now).await
}

/// One stream's statistics; `None` if it does not exist.
pub(super) async fn stream(
    pool: &Pool,
    stream: &StreamName,
    default_retention: Retention,
    server_anomalies: AnomalySettings,
) -> Result<Option<StreamStats>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let meta = match stream_row(&client, stream).await {
        Ok(meta) => meta,
        Err(StoreError::UnknownStream(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    let notes = stored_notes(&client, stream, meta.id as i64, chrono::Utc::now()).await?;
    Ok(Some(stats(
        stream.clone(),
        &meta,
        notes.len() as u64,
        default_retention,
        server_anomalies,
    )))
}

/// A stream's statistics from its row and the number of its live notes, with the server's
/// defaults where the stream sets nothing of its own.
pub(super) fn stats(
    name: StreamName,
    meta: &StreamRow,
    live_notes: u64,
    default_retention: Retention,
    server_anomalies: AnomalySettings,
) -> StreamStats {
    let totals = &meta.totals;
    StreamStats {
        name,
        records: totals.records,
        stored_records: (totals.records + 1).saturating_sub(meta.first_seq),
        events: totals.events,
        revision: meta.revision,
        first_ts: totals.first_ts,
        last_ts: totals.last_ts,
        kinds: totals.kinds.clone(),
        severities: totals.severity_counts(),
        notes: live_notes,
        retention: meta.retention.unwrap_or(default_retention),
        anomalies: meta.anomalies.map_or(server_anomalies, |overrides| {
            server_anomalies.with(&overrides)
        }),
    }
}
