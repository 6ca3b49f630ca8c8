//! The statements that write a placed batch (see `writer.rs`): one per table, with arrays
//! bound as parameters and expanded by `unnest`, so a batch of any size costs the same number
//! of statements.

use std::collections::HashMap;

use tokio_postgres::Transaction;

use crate::event::{Severity, StreamName};

use super::writer::{Shadow, Writes};
use super::{PgError, codec};

/// Sends a batch's writes: one statement per table, arrays through `unnest`. The statements of
/// each phase are independent and sent together (tokio-postgres pipelines futures polled at
/// once on one connection), so a batch costs two round trips of writes, not one per table.
/// The second phase removes rows the first may have written: records retention drops, changes
/// below the new floor, notes deleted after being added in the same batch, deleted streams.
pub(super) async fn write(
    transaction: &Transaction<'_>,
    batch: &HashMap<StreamName, Shadow>,
    writes: &Writes,
) -> Result<(), PgError> {
    let as_i64 = |value: u64| value as i64;
    let pairs = |rows: &[(u64, u64)]| -> (Vec<i64>, Vec<i64>) {
        rows.iter().map(|&(a, b)| (as_i64(a), as_i64(b))).unzip()
    };

    let (mut ids, mut seqs, mut revisions, mut bodies) = (vec![], vec![], vec![], vec![]);
    let mut severe = vec![];
    for (&(id, seq), record) in &writes.records {
        ids.push(as_i64(id));
        seqs.push(as_i64(seq));
        revisions.push(as_i64(record.revision));
        bodies.push(codec::encode_record(record));
        severe.push(record.severity >= Severity::Error);
    }
    let records = async {
        if ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "INSERT INTO recap_records (stream_id, seq, revision, body, severe)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::bool[])
                 ON CONFLICT (stream_id, seq)
                 DO UPDATE SET revision = EXCLUDED.revision, body = EXCLUDED.body,
                     severe = EXCLUDED.severe",
                &[&ids, &seqs, &revisions, &bodies, &severe],
            )
            .await
    };
    let change_ids: Vec<i64> = writes.changes.iter().map(|c| as_i64(c.0)).collect();
    let change_revisions: Vec<i64> = writes.changes.iter().map(|c| as_i64(c.1)).collect();
    let change_bodies: Vec<&str> = writes.changes.iter().map(|c| c.2.as_str()).collect();
    let changes = async {
        if change_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "INSERT INTO recap_changes (stream_id, revision, body)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[])",
                &[&change_ids, &change_revisions, &change_bodies],
            )
            .await
    };
    let note_ids: Vec<i64> = writes.notes_added.iter().map(|n| as_i64(n.0)).collect();
    let note_numbers: Vec<i64> = writes.notes_added.iter().map(|n| as_i64(n.1)).collect();
    let note_bodies: Vec<&str> = writes.notes_added.iter().map(|n| n.2.as_str()).collect();
    let notes = async {
        if note_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "INSERT INTO recap_notes (stream_id, id, body)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[])",
                &[&note_ids, &note_numbers, &note_bodies],
            )
            .await
    };
    // Every stream the batch holds gets its row written: revision, totals, note ids, first seq,
    // retention and changelog floor are what the next writer (on any node) starts from.
    let mut stream_ids = Vec::with_capacity(batch.len());
    let (mut stream_revisions, mut next_notes, mut firsts, mut severe_created, mut totals) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut retentions, mut floors, mut restores) = (vec![], vec![], vec![]);
    let (mut detectors, mut overrides) = (vec![], vec![]);
    for shadow in batch.values() {
        stream_ids.push(as_i64(shadow.id));
        stream_revisions.push(as_i64(shadow.state.revision()));
        next_notes.push(as_i64(shadow.state.next_note_id()));
        firsts.push(as_i64(shadow.first_seq));
        severe_created.push(as_i64(shadow.state.severe_created()));
        totals.push(codec::encode_totals(shadow.state.totals()));
        retentions.push(shadow.retention.as_ref().map(codec::encode_retention));
        floors.push(as_i64(shadow.changelog_floor));
        restores.push(codec::encode_restore(&shadow.restore()));
        detectors.push(shadow.detectors.as_deref().map(codec::encode_detectors));
        overrides.push(shadow.anomalies.as_ref().map(codec::encode_overrides));
    }
    let streams = async {
        if stream_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "UPDATE recap_streams s SET revision = u.revision, next_note_id = u.next_note_id,
                     first_seq = u.first_seq, severe_created = u.severe_created,
                     totals = u.totals, retention = u.retention, changelog_floor = u.changelog_floor,
                     restore = u.restore, anomaly_detectors = u.anomaly_detectors,
                     anomaly_overrides = u.anomaly_overrides
                 FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::text[],
                     $7::text[], $8::int8[], $9::text[], $10::text[], $11::text[])
                     AS u(id, revision, next_note_id, first_seq, severe_created, totals, retention,
                         changelog_floor, restore, anomaly_detectors, anomaly_overrides)
                 WHERE s.id = u.id",
                &[
                    &stream_ids,
                    &stream_revisions,
                    &next_notes,
                    &firsts,
                    &severe_created,
                    &totals,
                    &retentions,
                    &floors,
                    &restores,
                    &detectors,
                    &overrides,
                ],
            )
            .await
    };
    tokio::try_join!(records, changes, notes, streams)?;

    let (removed_ids, removed_notes) = pairs(&writes.notes_removed);
    let notes_removed = async {
        if removed_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "DELETE FROM recap_notes n USING unnest($1::int8[], $2::int8[]) AS u(stream_id, id)
                 WHERE n.stream_id = u.stream_id AND n.id = u.id",
                &[&removed_ids, &removed_notes],
            )
            .await
    };
    let (trimmed_ids, first_kept): (Vec<i64>, Vec<i64>) = writes
        .trimmed
        .iter()
        .map(|&(id, _, first_kept)| (as_i64(id), as_i64(first_kept)))
        .unzip();
    let trimmed = async {
        if trimmed_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "DELETE FROM recap_records r USING unnest($1::int8[], $2::int8[]) AS u(stream_id, first_seq)
                 WHERE r.stream_id = u.stream_id AND r.seq < u.first_seq",
                &[&trimmed_ids, &first_kept],
            )
            .await
    };
    let (floor_ids, new_floors) = pairs(&writes.floors);
    let floored = async {
        if floor_ids.is_empty() {
            return Ok(0);
        }
        transaction
            .execute(
                "DELETE FROM recap_changes c USING unnest($1::int8[], $2::int8[]) AS u(stream_id, floor)
                 WHERE c.stream_id = u.stream_id AND c.revision <= u.floor",
                &[&floor_ids, &new_floors],
            )
            .await
    };
    let deleted: Vec<i64> = writes.deleted.iter().map(|&id| as_i64(id)).collect();
    let deleted_rows = async {
        if deleted.is_empty() {
            return Ok(0);
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&deleted];
        let (records, changes, notes, streams) = tokio::join!(
            transaction.execute(
                "DELETE FROM recap_records WHERE stream_id = ANY($1)",
                &params
            ),
            transaction.execute(
                "DELETE FROM recap_changes WHERE stream_id = ANY($1)",
                &params
            ),
            transaction.execute("DELETE FROM recap_notes WHERE stream_id = ANY($1)", &params),
            transaction.execute("DELETE FROM recap_streams WHERE id = ANY($1)", &params),
        );
        Ok(records? + changes? + notes? + streams?)
    };
    tokio::try_join!(notes_removed, trimmed, floored, deleted_rows)?;
    Ok(())
}
