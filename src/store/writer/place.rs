//! Placement: deciding one request on the writer's shadows and encoding its table writes, while
//! earlier batches are still being committed.

use super::*;
use crate::anomaly::{self, AnomalyOverrides, AnomalySettings};
use crate::context::NOTE_ID_KEY;
use crate::event::MAX_EVENT_COUNT;
use crate::payload::Payload;

impl Writer {
    /// The writer's view of `name` if the stream exists, loaded if it was not in use.
    pub(super) fn loaded(
        &mut self,
        name: &StreamName,
    ) -> Result<Option<&mut WriterStream>, StoreError> {
        if !self.streams.contains_key(name) {
            let Some(slot) = read(&self.shared.streams).get(name).cloned() else {
                return Ok(None);
            };
            let shared = &self.shared;
            let stream = WriterStream::load(
                name.clone(),
                slot,
                &*shared.database()?,
                &shared.options,
                &shared.cache,
            )?;
            self.streams.insert(name.clone(), stream);
        }
        let stream = self
            .streams
            .get_mut(name)
            .expect("the stream was just looked up or loaded");
        self.shared.cache.touch(&stream.slot);
        Ok(Some(stream))
    }

    /// The stream a setting changes, loaded for writing; `None` if it does not exist (a
    /// setting never creates a stream).
    fn existing_for_write(
        &mut self,
        name: &StreamName,
        work: &mut Work,
    ) -> Result<Option<&mut WriterStream>, StoreError> {
        if self.loaded(name)?.is_none() {
            return Ok(None);
        }
        self.stream_for_write(name, work).map(Some)
    }

    /// The stream named `name`, loaded, or created (with a fresh id) if it does not exist; its
    /// metadata row is written with the batch.
    pub(super) fn stream_for_write(
        &mut self,
        name: &StreamName,
        work: &mut Work,
    ) -> Result<&mut WriterStream, StoreError> {
        if self.loaded(name)?.is_none() {
            let id = self.next_stream_id;
            self.next_stream_id += 1;
            let slot = Arc::new(Slot::new(StreamMeta::new(id)));
            self.shared.cache.touch(&slot);
            work.ops.push(Op::Created(name.clone(), slot.clone()));
            let options = &self.shared.options;
            let stream = WriterStream {
                name: name.clone(),
                slot,
                shadow: StreamState::metered(
                    options.collapse,
                    TailCapacity::shadow(options.collapse.lookback),
                    &self.shared.cache.meter,
                ),
                retention: None,
                first_seq: 1,
                changelog_floor: 0,
                created: CreatedFacts::new(options.collapse.lookback, &self.shared.cache.meter),
                book: TailBook::default(),
                detectors: None,
                anomalies: None,
            };
            self.streams.insert(name.clone(), stream);
        }
        work.touched.insert(name.clone());
        Ok(self
            .streams
            .get_mut(name)
            .expect("the stream was just looked up or created"))
    }

    /// Decides one request on the shadows and encodes its writes into `rows`. On an error (a
    /// record that could not be read) the request's answer is in `work` and the shadows are
    /// suspect: the caller fails the batch and forks them again.
    pub(super) fn apply(
        &mut self,
        request: Request,
        rows: &mut Rows,
        work: &mut Work,
    ) -> Result<(), StoreError> {
        let default_retention = self.shared.options.retention;
        let changelog_keep = self.shared.options.changelog_keep;
        let db = self.shared.database()?;
        let tail = self.shared.options.tail;
        let anomaly = self.shared.options.anomaly;
        match request {
            Request::Append {
                stream,
                events,
                now,
                reply,
            } => {
                if events.is_empty() {
                    work.answers.push(Answer::Appended(reply, Vec::new()));
                    return Ok(());
                }
                let target = self.stream_for_write(&stream, work)?;
                let mut results = Vec::with_capacity(events.len());
                let mut failure = None;
                let mut observer = anomaly::Observer::default();
                for event in events {
                    let ts = at_micros(event.ts.unwrap_or(now));
                    let placed = place_event(
                        &mut observer,
                        target,
                        rows,
                        &db,
                        tail,
                        anomaly,
                        event,
                        ts,
                        work,
                    );
                    match placed {
                        Ok(appended) => results.push(appended),
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                if failure.is_none()
                    && let Err(error) = finish_anomalies(observer, target, rows, &db, tail, work)
                {
                    failure = Some(error);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                work.answers.push(Answer::Appended(reply, results));
                if let Some(error) = failure {
                    return Err(error);
                }
                if over {
                    self.dirty.insert(stream);
                }
            }
            Request::Import {
                stream,
                records,
                reply,
            } => {
                if records.is_empty() {
                    work.answers.push(Answer::Appended(reply, Vec::new()));
                    return Ok(());
                }
                // Counts never wrap: an import that would take the stream past the limit is
                // refused whole, before anything is placed.
                let adding = records
                    .iter()
                    .fold(0u64, |sum, record| sum.saturating_add(record.repeat_count));
                let held = self
                    .loaded(&stream)?
                    .map_or(0, |target| target.shadow.totals().events);
                if held.saturating_add(adding) > MAX_EVENT_COUNT {
                    drop(reply.send(Err(StoreError::CountLimit {
                        held,
                        adding,
                        limit: MAX_EVENT_COUNT,
                    })));
                    return Ok(());
                }
                let target = self.stream_for_write(&stream, work)?;
                let mut results = Vec::with_capacity(records.len());
                let mut failure = None;
                let mut notes_expire = false;
                for imported in records {
                    let mut event = imported.event;
                    if let Some(note) = imported.note {
                        // An exported pinned note comes back as a note (with an id of this
                        // stream) and its audit record, linked as `add_note` links them.
                        let note = place_note(
                            target,
                            rows,
                            work,
                            event.message.clone(),
                            at_micros(note.created_at),
                            note.expires_at.map(at_micros),
                        );
                        notes_expire |= note.expires_at.is_some();
                        event.payload = Some(match event.payload {
                            Some(payload) => payload.with_number(NOTE_ID_KEY, note.id),
                            None => Payload::number(NOTE_ID_KEY, note.id),
                        });
                    }
                    let (appended, cached) = target.shadow.import_shared(
                        event,
                        at_micros(imported.first_ts),
                        at_micros(imported.last_ts),
                        imported.repeat_count,
                    );
                    if let Err(error) = store_appended(target, rows, &db, tail, &appended, work) {
                        failure = Some(error);
                        break;
                    }
                    work.ops.push(Op::Update(
                        target.slot.clone(),
                        Update::Adopt(cached, Origin::Import),
                    ));
                    results.push(appended);
                }
                let over = needs_maintenance(target, default_retention, changelog_keep);
                work.answers.push(Answer::Appended(reply, results));
                if let Some(error) = failure {
                    return Err(error);
                }
                if over || notes_expire {
                    self.dirty.insert(stream);
                }
            }
            Request::AddNote {
                stream,
                text,
                expires_at,
                now,
                reply,
            } => {
                let limits = self.shared.options.notes;
                let held = self.loaded(&stream)?.map(|target| &target.shadow);
                if let Some(error) = note_limit(limits, held, &text) {
                    drop(reply.send(Err(error)));
                    return Ok(());
                }
                let now = at_micros(now);
                let expires_at = expires_at.map(at_micros);
                let target = self.stream_for_write(&stream, work)?;
                let note = place_note(target, rows, work, text.clone(), now, expires_at);
                let note_id = note.id;
                work.answers.push(Answer::Note(reply, note));
                // The audit trail: the note is also an event of the stream (DESIGN section 2).
                let event = note_event(text, note_id);
                let mut observer = anomaly::Observer::default();
                place_event(
                    &mut observer,
                    target,
                    rows,
                    &db,
                    tail,
                    anomaly,
                    event,
                    now,
                    work,
                )?;
                finish_anomalies(observer, target, rows, &db, tail, work)?;
                let over = needs_maintenance(target, default_retention, changelog_keep);
                if expires_at.is_some() || over {
                    self.dirty.insert(stream);
                }
            }
            Request::DeleteNote { stream, id, reply } => {
                if self.loaded(&stream)?.is_none() {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                }
                let target = self.stream_for_write(&stream, work)?;
                let removed = remove_note(target, rows, id, work);
                work.answers.push(Answer::Flag(reply, removed));
            }
            Request::DeleteStream { stream, reply } => {
                let slot = match self.streams.remove(&stream) {
                    Some(target) => Some(target.slot),
                    None => read(&self.shared.streams).get(&stream).cloned(),
                };
                let existed = match slot {
                    Some(slot) => {
                        rows.stream_removed(stream.clone(), slot.id);
                        work.deleted_ids.push(slot.id);
                        work.ops.push(Op::Deleted(stream.clone()));
                        work.touched.insert(stream.clone());
                        self.dirty.remove(&stream);
                        true
                    }
                    None => false,
                };
                work.answers.push(Answer::Flag(reply, existed));
            }
            Request::SetRetention {
                stream,
                retention,
                reply,
            } => {
                let Some(target) = self.existing_for_write(&stream, work)? else {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                };
                target.retention = Some(retention);
                self.dirty.insert(stream);
                work.answers.push(Answer::Done(reply));
            }
            Request::SetAnomalies {
                stream,
                overrides,
                reply,
            } => {
                let Some(target) = self.existing_for_write(&stream, work)? else {
                    drop(reply.send(Err(StoreError::UnknownStream(stream.to_string()))));
                    return Ok(());
                };
                target.anomalies = (overrides != AnomalyOverrides::default()).then_some(overrides);
                work.answers.push(Answer::Done(reply));
            }
            // The run loop handles these itself and never puts them in a batch; answering
            // keeps a caller from hanging if that ever changes.
            Request::Evict => {}
            request @ (Request::Maintain { .. } | Request::Shutdown { .. }) => {
                request.fail(&StoreError::storage_text(
                    "internal error: a control request reached a batch",
                ));
            }
        }
        Ok(())
    }
}

/// Why a note of `text` cannot be added to a stream holding `held`'s notes, if it would pass a
/// [`NoteLimits`](super::super::NoteLimits).
pub(in crate::store) fn note_limit(
    limits: super::super::NoteLimits,
    held: Option<&StreamState>,
    text: &str,
) -> Option<StoreError> {
    let (count, bytes) = held.map_or((0, 0), |shadow| {
        shadow.notes().fold((0, 0), |(count, bytes), note| {
            (count + 1, bytes + note.text.len())
        })
    });
    if count >= limits.max_notes {
        return Some(StoreError::NoteLimit {
            what: "notes",
            held: count,
            limit: limits.max_notes,
            setting: "max_notes_per_stream",
        });
    }
    if bytes + text.len() > limits.max_bytes {
        return Some(StoreError::NoteLimit {
            what: "bytes of note text (with this note)",
            held: bytes + text.len(),
            limit: limits.max_bytes,
            setting: "max_note_bytes_per_stream",
        });
    }
    None
}

/// The metadata row of a stream, from the writer's view of it.
pub(super) fn stream_meta(stream: &WriterStream) -> StreamMeta {
    StreamMeta {
        id: stream.slot.id,
        totals: stream.shadow.totals().clone(),
        revision: stream.shadow.revision(),
        next_note_id: stream.shadow.next_note_id(),
        retention: stream.retention,
        first_seq: stream.first_seq,
        changelog_floor: stream.changelog_floor,
        older_last_ts: stream.book.older_last_ts,
        tail_blocks: Some(stream.book.tail_blocks.clone()),
        tail_bytes: stream.book.tail_bytes,
        block_times: stream.book.block_times,
        severe_created: Some(stream.shadow.severe_created()),
        first_goals: stream.shadow.first_goal_seqs(),
        latest_goal: stream.shadow.latest_goal_seq(),
        note_expiry: stream
            .shadow
            .notes()
            .filter_map(|note| note.expires_at)
            .min(),
        notes: Some(stream.shadow.notes().count() as u64),
        detectors: stream.detectors.clone(),
        anomalies: stream.anomalies,
    }
}

/// Places an event a client posted (at `ts`) on the shadow, encodes its writes, has the live
/// state adopt the record, and runs the anomaly detectors on it, placing what they raise now
/// (new anomaly records; `observer` holds updates of open episodes' records until the
/// request's end, see [`crate::anomaly`]). In the same batch, so in the same commit.
#[allow(clippy::too_many_arguments)]
fn place_event(
    observer: &mut anomaly::Observer,
    target: &mut WriterStream,
    rows: &mut Rows,
    db: &Database,
    tail: TailCapacity,
    server: AnomalySettings,
    event: Event,
    ts: Timestamp,
    work: &mut Work,
) -> Result<Appended, StoreError> {
    let (appended, cached) = target.shadow.append_shared(event, ts);
    store_appended(target, rows, db, tail, &appended, work)?;
    let origin = Origin::Event {
        ts,
        collapsed: appended.collapsed,
    };
    work.ops.push(Op::Update(
        target.slot.clone(),
        Update::Adopt(cached, origin),
    ));
    let raised = observer.observe(
        &mut target.detectors,
        target.anomalies.as_ref(),
        server,
        &mut target.shadow,
        &appended,
        ts,
        target.first_seq,
    );
    store_anomalies(target, rows, db, tail, raised, work)?;
    Ok(appended)
}

/// Places the anomaly updates `observer` held back until the end of a request.
fn finish_anomalies(
    observer: anomaly::Observer,
    target: &mut WriterStream,
    rows: &mut Rows,
    db: &Database,
    tail: TailCapacity,
    work: &mut Work,
) -> Result<(), StoreError> {
    let raised = observer.finish(&mut target.detectors, &mut target.shadow, target.first_seq);
    store_anomalies(target, rows, db, tail, raised, work)
}

/// Encodes anomaly records the detectors placed on the shadow, and has the live state adopt
/// them.
fn store_anomalies(
    target: &mut WriterStream,
    rows: &mut Rows,
    db: &Database,
    tail: TailCapacity,
    raised: Vec<anomaly::Raised>,
    work: &mut Work,
) -> Result<(), StoreError> {
    for raised in raised {
        match raised.origin {
            Origin::Revised { escalated, .. } => {
                store_revised(target, rows, tail, &raised, escalated, work);
            }
            _ => store_appended(target, rows, db, tail, &raised.appended, work)?,
        }
        work.ops.push(Op::Update(
            target.slot.clone(),
            Update::Adopt(raised.cached, raised.origin),
        ));
    }
    Ok(())
}

/// Encodes the next version of an anomaly record: its row (from the creation facts its episode
/// keeps), its severe index entry when it just became severe, and the repeat in the changelog.
fn store_revised(
    target: &mut WriterStream,
    rows: &mut Rows,
    tail: TailCapacity,
    raised: &anomaly::Raised,
    escalated: bool,
    work: &mut Work,
) {
    let record = &raised.appended.record;
    let id = target.slot.id;
    let last_seq = target.shadow.totals().records;
    target
        .book
        .took_last_ts(tail, record.seq, record.last_ts, last_seq);
    let first_ts = record.first_ts;
    let created = Created {
        revision: raised.episode.created_revision,
        repeat_count: 1,
        last_ts: first_ts,
    };
    rows.record_again(id, record.seq, |out| {
        schema::encode_record(id, record, &created, out)
    });
    if escalated {
        rows.severe(id, record.seq);
    }
    let entry = ChangeEntry::Repeat {
        seq: record.seq,
        repeat_count: record.repeat_count,
        last_ts: record.last_ts,
    };
    log_change(target, rows, work, record.revision, entry);
}

/// Encodes what one append or import did to a record: the record row, its severe index entry,
/// and for a repeat the changelog entry.
pub(super) fn store_appended(
    target: &mut WriterStream,
    rows: &mut Rows,
    db: &Database,
    tail: TailCapacity,
    appended: &Appended,
    work: &mut Work,
) -> Result<(), StoreError> {
    let record = &appended.record;
    let id = target.slot.id;
    if !appended.collapsed {
        let lookback = target.shadow.policy().lookback;
        target.book.created(tail, lookback, record);
    }
    let last_seq = target.shadow.totals().records;
    target
        .book
        .took_last_ts(tail, record.seq, record.last_ts, last_seq);
    if appended.collapsed {
        let created = match target.created.get(record.seq) {
            Some(created) => created,
            // Created before this shadow was made, so committed: the file has it.
            None => committed_creation(db, &target.name, id, record.seq)?,
        };
        rows.record_again(id, record.seq, |out| {
            schema::encode_record(id, record, &created, out)
        });
        let entry = ChangeEntry::Repeat {
            seq: record.seq,
            repeat_count: record.repeat_count,
            last_ts: record.last_ts,
        };
        log_change(target, rows, work, record.revision, entry);
    } else {
        let created = Created::of(record);
        rows.record(id, record.seq, |out| {
            schema::encode_record(id, record, &created, out)
        });
        if record.severity >= Severity::Error {
            rows.severe(id, record.seq);
        }
        target.created.push(record.seq, created);
        work.changes.push(Change {
            stream: target.name.clone(),
            stream_id: id,
            revision: record.revision,
            body: ChangeBody::Record(Arc::clone(record)),
        });
    }
    Ok(())
}

/// How a committed record was created, read from the file.
pub(super) fn committed_creation(
    db: &Database,
    name: &StreamName,
    stream: u64,
    seq: u64,
) -> Result<Created, StoreError> {
    let txn = db.begin_read()?;
    let records = txn.open_table(schema::RECORDS)?;
    let stored = records
        .get((stream, seq))?
        .ok_or_else(|| StoreError::storage_text(format!("record {seq} is missing")))?;
    let (_, created) = schema::decode_record(stream, seq, stored.value())
        .map_err(|error| reads::damaged(name.as_str(), error))?;
    Ok(created)
}

/// Adds a note to a stream's shadow and encodes its row and changelog entry; the caller adds
/// its audit record (`add_note` logs a new one, an import brings the exported one).
pub(super) fn place_note(
    target: &mut WriterStream,
    rows: &mut Rows,
    work: &mut Work,
    text: String,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> Note {
    let note = target.shadow.add_note(text, created_at, expires_at);
    let id = target.slot.id;
    rows.note(id, note.id, |out| schema::encode_note(id, &note, out));
    let revision = target.shadow.revision();
    log_change(
        target,
        rows,
        work,
        revision,
        ChangeEntry::Note(note.clone()),
    );
    work.ops.push(Op::Update(
        target.slot.clone(),
        Update::AddNote(note.clone()),
    ));
    note
}

/// Writes a change that is not a new record to the stream's changelog and publishes it.
pub(super) fn log_change(
    target: &WriterStream,
    rows: &mut Rows,
    work: &mut Work,
    revision: u64,
    entry: ChangeEntry,
) {
    let id = target.slot.id;
    rows.change(id, revision, |out| {
        schema::encode_change(id, revision, &entry, out)
    });
    work.changes.push(Change {
        stream: target.name.clone(),
        stream_id: id,
        revision,
        body: entry.into(),
    });
}

/// Removes a live note (a change with its own revision); `false` when there is none.
pub(super) fn remove_note(
    target: &mut WriterStream,
    rows: &mut Rows,
    id: u64,
    work: &mut Work,
) -> bool {
    if !target.shadow.remove_note(id) {
        return false;
    }
    let revision = target.shadow.revision();
    rows.note_removed(target.slot.id, id);
    log_change(
        target,
        rows,
        work,
        revision,
        ChangeEntry::NoteDeleted { id },
    );
    work.ops
        .push(Op::Update(target.slot.clone(), Update::RemoveNote(id)));
    work.touched.insert(target.name.clone());
    true
}

/// The `note` event that records a note in the event log; `payload.note_id` lets the context
/// leave it out while the note itself is pinned.
pub(in crate::store) fn note_event(text: String, id: u64) -> Event {
    let payload = Payload::number(NOTE_ID_KEY, id);
    Event {
        message: text,
        kind: crate::event::Kind::new("note").expect("`note` is a valid kind"),
        severity: Severity::Info,
        ts: None,
        display_message: None,
        actor: None,
        step_id: None,
        payload: Some(payload),
    }
}

/// Times are kept to the microsecond; normalizing before anything is decided makes what a
/// caller is answered equal to what a later read returns.
pub(in crate::store) fn at_micros(ts: Timestamp) -> Timestamp {
    ts.trunc_subsecs(6)
}
