//! Background maintenance on PostgreSQL: note expiry, retention by age and by count, changelog
//! trimming, through the node's writer task (so between its batches) and in bounded
//! transactions that lock each stream's row like any write (so serialized with every node's
//! writes and maintenance).
//!
//! What a step does to a stream is what the redb store's maintenance does
//! (`store/writer/maintenance.rs`), so both backends answer alike: each expired note is a
//! deletion with its own revision and changelog entry; removed records take no revision, keep
//! counting in the totals, join the tail book, and raise the changelog floor past every change
//! that touched them. Since no revision moves when only records go, the other nodes are told
//! by name (`listen.rs`) and their caches and shadows compare the row's first seq.
//!
//! Running on several nodes at once is safe and idempotent: a stream is only changed under its
//! row's lock, from the row as the previous holder left it, and a stream with nothing left to
//! do is left as it is.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use tokio_postgres::{Client, Transaction};

use crate::event::{StreamName, Timestamp};

use super::super::super::writer::MAINTENANCE_CHUNK_ROWS;
use super::super::super::{ChangeBody, Retention, StoreError};
use super::super::{BATCH_TIMEOUT, PgError, connect};
use super::{BatchError, MAX_RETRIES, Shadow, Writer, Writes, at_micros, statements};

/// Streams one maintenance step takes at most (locked together, in one transaction).
const STREAMS_PER_STEP: i64 = 64;

/// The streams from `from` on (in name order) that have maintenance due at `now`, at most
/// [`STREAMS_PER_STEP`]: expired notes, changes at or below the changelog floor, a changelog
/// past its keep, more records than `max_records`, or a first stored record older than
/// `max_age`. A stream's own retention replaces the server's whole, as in
/// [`Retention`]'s use everywhere. One pass over the streams' rows, with a probe by primary key
/// per stream; the writer checks again under the row's lock.
const DUE: &str = "
    WITH p AS (
        SELECT timestamptz 'epoch' + $3::int8 * interval '1 microsecond' AS now
    )
    SELECT s.name FROM recap_streams s, p
    WHERE (s.name > $1 OR ($2 AND s.name = $1)) AND s.revision > 0 AND (
        EXISTS (SELECT 1 FROM recap_notes n WHERE n.stream_id = s.id
            AND (n.body::jsonb->>'expires_at')::timestamptz <= p.now)
        OR EXISTS (SELECT 1 FROM recap_changes c WHERE c.stream_id = s.id
            AND c.revision <= s.changelog_floor)
        OR s.revision - $4 > s.changelog_floor + $5
        OR (coalesce((s.totals::jsonb->>'records')::int8, 0) + 1 - s.first_seq) > coalesce(
            CASE WHEN s.retention IS NULL THEN $6::int8
                ELSE (s.retention::jsonb->>'max_records')::int8 END,
            9223372036854775807)
        OR EXISTS (SELECT 1 FROM recap_records r WHERE r.stream_id = s.id AND r.seq = s.first_seq
            AND (r.body::jsonb->>'last_ts')::timestamptz < p.now - interval '1 second' * (
                CASE WHEN s.retention IS NULL THEN $7::int8
                    ELSE (s.retention::jsonb->>'max_age_seconds')::int8 END))
    )
    ORDER BY s.name LIMIT $8";

/// Where the next look for due streams starts.
struct Cursor {
    name: String,
    /// Whether `name` itself is looked at again (it had work left).
    inclusive: bool,
}

/// What one step came to.
#[derive(Default)]
struct Step {
    /// The last stream the step looked at; `None` when none had anything due.
    last: Option<String>,
    /// Whether it changed anything (a note, a record, the changelog).
    progressed: bool,
    /// The first stream (in name order) with work left.
    unfinished: Option<StreamName>,
}

impl Writer {
    /// Runs maintenance as of `now` until no stream has any left (see the module's doc).
    pub(in crate::store::pg) async fn maintain(
        &mut self,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let now = at_micros(now);
        let mut cursor = Cursor {
            name: String::new(),
            inclusive: true,
        };
        loop {
            let step = self.step_retried(&cursor, now).await?;
            let Some(last) = step.last else {
                return Ok(());
            };
            // A stream with work left is taken again, unless the step could not move it (a
            // damaged record stops age retention): the cursor only ever moves on, so
            // maintenance ends.
            cursor = match step.unfinished {
                Some(name) if step.progressed => Cursor {
                    name: name.to_string(),
                    inclusive: true,
                },
                _ => Cursor {
                    name: last,
                    inclusive: false,
                },
            };
        }
    }

    /// One step on the writer's connection (connecting first if needed), within
    /// [`BATCH_TIMEOUT`], tried again after a lost deadlock or serialization race.
    async fn step_retried(&mut self, cursor: &Cursor, now: Timestamp) -> Result<Step, StoreError> {
        let mut attempt = 0;
        loop {
            if self.client.as_ref().is_none_or(Client::is_closed) {
                let (client, _driver) = connect(&self.config, &self.tls, &self.place).await?;
                self.client = Some(client);
            }
            let mut client = self.client.take().expect("connected just above");
            let tried =
                tokio::time::timeout(BATCH_TIMEOUT, self.step(&mut client, cursor, now)).await;
            match tried {
                Ok(Ok(step)) => {
                    self.client = Some(client);
                    return Ok(step);
                }
                Ok(Err(error)) => {
                    if !client.is_closed() {
                        self.client = Some(client);
                    }
                    if error.retryable() && attempt < MAX_RETRIES {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                        continue;
                    }
                    return Err(error.into_store());
                }
                // The connection is in an unknown state: it is dropped, the next use connects.
                Err(_elapsed) => {
                    return Err(StoreError::Unavailable(format!(
                        "the database did not answer within {} s during maintenance",
                        BATCH_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    /// One bounded step in one transaction: the streams from `cursor` on with maintenance
    /// due (see [`DUE`]), locked, and at most [`MAINTENANCE_CHUNK_ROWS`] notes, records and
    /// changes removed from them.
    async fn step(
        &mut self,
        client: &mut Client,
        cursor: &Cursor,
        now: Timestamp,
    ) -> Result<Step, BatchError> {
        let transaction = client.transaction().await?;
        let keep = self.options.changelog_keep;
        let default = self.options.retention;
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let due = transaction
            .query(
                DUE,
                &[
                    &cursor.name,
                    &cursor.inclusive,
                    &now.timestamp_micros(),
                    &as_i64(keep),
                    &as_i64(keep / 16),
                    &default.max_records.map(as_i64),
                    &default.max_age.map(|age| age.num_seconds()),
                    &STREAMS_PER_STEP,
                ],
            )
            .await?;
        let names: BTreeSet<String> = due.iter().map(|row| row.get(0)).collect();
        let mut step = Step {
            last: names.last().cloned(),
            ..Step::default()
        };
        if names.is_empty() {
            return Ok(step);
        }
        let (mut batch, before) = self.lock_shadows(&transaction, names).await?;
        let mut order: Vec<StreamName> = batch.keys().cloned().collect();
        order.sort();
        let mut writes = Writes::default();
        let mut budget = MAINTENANCE_CHUNK_ROWS;
        let mut trimmed = Vec::new();
        let mut floors = Vec::new();
        for name in &order {
            let shadow = batch.get_mut(name).expect("listed from the batch");
            if budget == 0 {
                step.unfinished.get_or_insert_with(|| name.clone());
                continue;
            }
            let floor_before = shadow.changelog_floor;
            let done = self
                .maintain_stream(&transaction, name, shadow, now, &mut budget, &mut writes)
                .await?;
            if !done {
                step.unfinished.get_or_insert_with(|| name.clone());
            }
            let revision = before.get(&shadow.id).copied().unwrap_or_default();
            if shadow.state.revision() != revision {
                step.progressed = true;
            } else if writes.trimmed.iter().any(|t| t.0 == shadow.id) {
                trimmed.push(name.clone());
            }
            step.progressed |= shadow.changelog_floor != floor_before;
            floors.push((name.clone(), shadow.id, shadow.changelog_floor));
        }
        step.progressed |= !trimmed.is_empty();
        statements::write(&transaction, &batch, &writes).await?;
        // Changes at or below a floor go after the step's own changes are written (a floor
        // can pass them when the changelog keeps few), within what the budget leaves: readers
        // ignore them already, the rest goes in the next step.
        for (name, id, floor) in floors {
            let limit = i64::try_from(budget).unwrap_or(i64::MAX);
            if limit == 0 {
                step.unfinished = Some(step.unfinished.map_or(name.clone(), |u| u.min(name)));
                continue;
            }
            let deleted = transaction
                .execute(
                    "DELETE FROM recap_changes WHERE stream_id = $1 AND revision IN (
                         SELECT revision FROM recap_changes
                         WHERE stream_id = $1 AND revision <= $2 ORDER BY revision LIMIT $3)",
                    &[&(id as i64), &(floor as i64), &limit],
                )
                .await?;
            step.progressed |= deleted > 0;
            budget -= deleted as usize;
            if budget == 0 {
                // Perhaps more: looked at again.
                step.unfinished = Some(step.unfinished.map_or(name.clone(), |u| u.min(name)));
            }
        }
        let trimmed: Vec<&StreamName> = trimmed.iter().collect();
        self.finish(transaction, batch, &writes, &before, &trimmed)
            .await?;
        Ok(step)
    }

    /// One stream's share of a step (see `maintain_stream` in the redb store's
    /// `maintenance.rs`, which this follows rule for rule); `true` when it has nothing left
    /// to do but deleting changes below its floor.
    async fn maintain_stream(
        &self,
        transaction: &Transaction<'_>,
        name: &StreamName,
        shadow: &mut Shadow,
        now: Timestamp,
        budget: &mut usize,
        writes: &mut Writes,
    ) -> Result<bool, BatchError> {
        let id = shadow.id;
        // Notes past their expiry: each deletion is a change with its own revision.
        let expired = shadow.state.expired_note_ids(now, *budget);
        for note_id in expired {
            shadow.state.remove_note(note_id);
            writes.notes_removed.push((id, note_id));
            writes.change(
                id,
                shadow.state.revision(),
                &ChangeBody::NoteDeleted { id: note_id },
            );
            *budget -= 1;
        }

        // Retention removes the oldest records: a prefix, so stored seqs stay one dense range.
        let retention: Retention = shadow.retention.unwrap_or(self.options.retention);
        let first_seq = shadow.first_seq;
        let last_seq = shadow.state.totals().records;
        let stored = (last_seq + 1).saturating_sub(first_seq);
        let mut through = first_seq - 1;
        if let Some(max_records) = retention.max_records {
            through += stored.saturating_sub(max_records);
        }
        let cutoff = retention
            .max_age
            .and_then(|age| now.checked_sub_signed(age));
        let limit = (first_seq - 1).saturating_add(*budget as u64);
        through = through.min(limit).min(last_seq);
        let upper = if cutoff.is_some() {
            limit.min(last_seq)
        } else {
            through
        };
        let facts = if upper >= first_seq {
            removable(transaction, id, first_seq, upper).await?
        } else {
            HashMap::new()
        };
        let (mut max_revision, mut latest) = (0, None);
        let mut seq = first_seq;
        while seq <= last_seq && seq <= limit {
            let Some(&(revision, last_ts)) = facts.get(&seq) else {
                // Its age and revision are unknown: retention stops there rather than guess.
                tracing::error!(stream = %name, seq, "retention stops at a missing or damaged record");
                break;
            };
            if seq > through {
                // Past the count limit: only the age limit can remove more.
                let Some(cutoff) = cutoff else { break };
                if last_ts >= cutoff {
                    break;
                }
                through = seq;
            }
            max_revision = max_revision.max(revision);
            latest = latest.max(Some(last_ts));
            *budget = budget.saturating_sub(1);
            seq += 1;
        }
        let through = through.min(seq - 1);
        if through >= first_seq {
            writes.trimmed.push((id, first_seq, through + 1));
            shadow.first_seq = through + 1;
            // Changes that touched removed records cannot be replayed any more.
            shadow.changelog_floor = shadow.changelog_floor.max(max_revision);
            shadow.state.forget_through(through);
            if let Some(last_ts) = latest {
                shadow.book.removed(last_ts);
            }
        }
        let mut done = seq > last_seq || seq <= limit && seq > through;
        if let Some(max_records) = retention.max_records {
            done &= (last_seq + 1).saturating_sub(shadow.first_seq) <= max_records;
        }

        // The changelog keeps the newest `changelog_keep` revisions, trimmed with the slack
        // every write's trim has.
        let keep = self.options.changelog_keep;
        let keep_floor = shadow.state.revision().saturating_sub(keep);
        if keep_floor > shadow.changelog_floor + keep / 16 {
            shadow.changelog_floor = keep_floor;
        }
        Ok(done && shadow.state.notes().all(|note| note.is_live(now)))
    }
}

/// The last revision and last time of each stored record `from..=to` of stream `id`, by seq
/// (a record whose body does not say is left out). Times are whole microseconds, which
/// timestamptz keeps exactly.
async fn removable(
    transaction: &Transaction<'_>,
    id: u64,
    from: u64,
    to: u64,
) -> Result<HashMap<u64, (u64, Timestamp)>, PgError> {
    let rows = transaction
        .query(
            "SELECT seq, revision,
                 (extract(epoch FROM (body::jsonb->>'last_ts')::timestamptz) * 1000000)::int8
             FROM recap_records WHERE stream_id = $1 AND seq >= $2 AND seq <= $3",
            &[&(id as i64), &(from as i64), &(to as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let micros: Option<i64> = row.get(2);
            let last_ts = chrono::DateTime::from_timestamp_micros(micros?)?;
            Some((
                row.get::<_, i64>(0) as u64,
                (row.get::<_, i64>(1) as u64, last_ts),
            ))
        })
        .collect())
}
