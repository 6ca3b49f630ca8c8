//! Background maintenance, one bounded step at a time: retention by count and age, note
//! expiry, changelog trimming and purging deleted streams.

use super::*;

/// One stream's share of a maintenance step; `true` when it has nothing left to do.
#[allow(clippy::too_many_arguments)]
pub(super) fn maintain_stream(
    target: &mut WriterStream,
    tables: &mut Tables<'_>,
    now: Timestamp,
    default_retention: Retention,
    changelog_keep: u64,
    budget: &mut usize,
    work: &mut Work,
) -> Result<bool, StoreError> {
    let id = target.slot.id;
    // Notes past their expiry: each deletion is a change with its own revision.
    let expired = target.shadow.expired_note_ids(now, *budget);
    let mut rows = Rows::default();
    for note_id in expired {
        remove_note(target, &mut rows, note_id, work);
        *budget -= 1;
    }
    rows.write(tables)?;

    // Retention removes the oldest records: a prefix, so stored seqs stay one dense range.
    let retention = target.retention.unwrap_or(default_retention);
    let last_seq = target.shadow.totals().records;
    let stored = (last_seq + 1).saturating_sub(target.first_seq);
    let mut through = target.first_seq - 1;
    if let Some(max_records) = retention.max_records {
        through += stored.saturating_sub(max_records);
    }
    let cutoff = retention
        .max_age
        .and_then(|age| now.checked_sub_signed(age));
    let limit = (target.first_seq - 1).saturating_add(*budget as u64);
    through = through.min(limit).min(last_seq);
    // Past the count limit, only the age limit can remove more: read on until a record is
    // young enough.
    let first_seq = target.first_seq;
    let mut seq = through + 1;
    while let Some(cutoff) = cutoff
        && seq <= last_seq
        && seq <= limit
    {
        let Some(stored) = tables.records.get((id, seq))? else {
            break;
        };
        let last_ts = match schema::last_ts(id, seq, stored.value()) {
            Ok(last_ts) => last_ts,
            // Its age is unknown: age retention stops there rather than guess.
            Err(error) => {
                tracing::error!(stream = %target.name, %error, "age retention stops at a damaged record");
                break;
            }
        };
        if last_ts >= cutoff {
            break;
        }
        through = seq;
        seq += 1;
    }
    // Then the prefix goes, each table's range in one pass (removing key by key cost
    // more), noting the newest revision it held.
    if through >= first_seq {
        let mut max_revision = 0;
        let stream_revision = target.shadow.revision();
        tables
            .records
            .retain_in((id, first_seq)..=(id, through), |(_, seq), stored| {
                match schema::last_revision_and_ts(id, seq, stored) {
                    Ok((revision, last_ts)) => {
                        max_revision = max_revision.max(revision);
                        target.book.removed(last_ts);
                    }
                    // A damaged record goes like any other; since its last revision is
                    // unknown, no change up to now can be replayed any more (subscribers
                    // resuming get a reset).
                    Err(error) => {
                        tracing::warn!(stream = %target.name, %error, "retention removed a damaged record");
                        max_revision = stream_revision;
                    }
                }
                false
            })?;
        tables
            .severe
            .retain_in((id, first_seq)..=(id, through), |_, _| false)?;
        *budget = budget.saturating_sub((through + 1 - first_seq) as usize);
        target.first_seq = through + 1;
        // Changes that touched removed records cannot be replayed any more.
        target.changelog_floor = target.changelog_floor.max(max_revision);
        target.shadow.forget_through(through);
        work.ops
            .push(Op::Update(target.slot.clone(), Update::Forget(through)));
        work.touched.insert(target.name.clone());
    }
    let mut done = seq > last_seq || seq <= limit && seq > through;
    if let Some(max_records) = retention.max_records {
        done &= (last_seq + 1).saturating_sub(target.first_seq) <= max_records;
    }

    // The changelog keeps the newest `changelog_keep` revisions; trimmed with some slack so
    // that a busy stream trims in chunks rather than on every commit.
    let revision = target.shadow.revision();
    let keep_floor = revision.saturating_sub(changelog_keep);
    let slack = changelog_keep / 16;
    if keep_floor > target.changelog_floor + slack {
        target.changelog_floor = keep_floor;
        work.touched.insert(target.name.clone());
    }
    let floor = target.changelog_floor;
    let keys: Vec<(u64, u64)> = tables
        .changes
        .range((id, 0)..=(id, floor))?
        .take(*budget + 1)
        .map(|entry| entry.map(|(key, _)| key.value()))
        .collect::<Result<_, _>>()?;
    let more_changes = keys.len() > *budget;
    for key in keys.into_iter().take(*budget) {
        tables.changes.remove(key)?;
        *budget -= 1;
    }
    Ok(done && !more_changes && target.shadow.notes().all(|n| n.is_live(now)))
}

/// Removes up to `budget` rows of a deleted stream; returns how many it removed (fewer than
/// `budget` means the stream is gone).
pub(super) fn purge_rows(
    tables: &mut Tables<'_>,
    id: u64,
    budget: usize,
) -> Result<usize, StoreError> {
    fn purge_table<V: redb::Value + 'static>(
        table: &mut Table<'_, (u64, u64), V>,
        id: u64,
        budget: usize,
    ) -> Result<usize, StoreError> {
        let keys: Vec<(u64, u64)> = table
            .range((id, 0)..=(id, u64::MAX))?
            .take(budget)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<_, _>>()?;
        for key in &keys {
            table.remove(*key)?;
        }
        Ok(keys.len())
    }
    let mut removed = purge_table(&mut tables.records, id, budget)?;
    removed += purge_table(&mut tables.severe, id, budget - removed)?;
    removed += purge_table(&mut tables.changes, id, budget - removed)?;
    removed += purge_table(&mut tables.notes, id, budget - removed)?;
    Ok(removed)
}

/// Whether a stream has outgrown its record limit or its changelog (age limits and expiry are
/// found by the periodic sweep).
pub(super) fn needs_maintenance(
    stream: &WriterStream,
    default: Retention,
    changelog_keep: u64,
) -> bool {
    let stored = (stream.shadow.totals().records + 1).saturating_sub(stream.first_seq);
    let over_records = stream
        .retention
        .unwrap_or(default)
        .max_records
        .is_some_and(|max| stored > max);
    let keep_floor = stream.shadow.revision().saturating_sub(changelog_keep);
    over_records || keep_floor > stream.changelog_floor + changelog_keep / 16
}
