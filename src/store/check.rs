//! `recap check`: verifies a data file offline, row by row, and lists what is damaged.
//!
//! It opens the file read-only (a running server holds it, and is refused), reads every row of
//! every table once, in key order, and checks each against its checksum and against what its
//! stream's row says: seqs dense from `first_seq`, every revision past the changelog floor made
//! exactly once, the severe index naming exactly the severe records, the note count, the
//! totals. The server checks the same on each read; this finds all of it at once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use redb::{ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::event::Severity;

use super::schema::{self, StreamMeta};
use super::{DATA_FILE_NAME, StoreError, panic_message, reads};

/// At most this many problems are listed per stream and table; the rest are counted.
const LISTED_PER_STREAM: usize = 20;

/// One damaged or missing row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The stream it belongs to, when that is known.
    pub stream: Option<String>,
    /// The row: `record 17`, `records 10..=20`, `change 40`, `stream row`, ...
    pub row: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stream {
            Some(stream) => write!(f, "stream {stream:?}: {} {}", self.row, self.problem),
            None => write!(f, "{} {}", self.row, self.problem),
        }
    }
}

/// What a check read and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Streams whose row was read.
    pub streams: u64,
    /// Record rows read.
    pub records: u64,
    /// Changelog rows read.
    pub changes: u64,
    /// Note rows read.
    pub notes: u64,
    /// What is damaged or missing (at most 20 per stream).
    pub problems: Vec<Problem>,
    /// Problems found beyond those listed.
    pub unlisted: u64,
}

impl CheckReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.unlisted == 0
    }
}

/// What the check learns of one stream while it reads the tables.
struct Stream {
    name: String,
    meta: StreamMeta,
    next_seq: u64,
    severe: BTreeSet<u64>,
    /// Revisions past the changelog floor made by record creations and changelog rows.
    revisions: Vec<u64>,
    events: u64,
    notes: u64,
    listed: usize,
    /// A record or change of it did not decode: its revisions and totals cannot be checked.
    undecodable: bool,
}

struct Checker {
    streams: HashMap<u64, Stream>,
    purges: BTreeSet<u64>,
    report: CheckReport,
}

impl Checker {
    fn problem(&mut self, id: Option<u64>, row: String, problem: impl ToString) {
        let stream = id.and_then(|id| self.streams.get_mut(&id));
        let name = match stream {
            Some(stream) => {
                stream.listed += 1;
                if stream.listed > LISTED_PER_STREAM {
                    self.report.unlisted += 1;
                    return;
                }
                Some(stream.name.clone())
            }
            None => None,
        };
        self.report.problems.push(Problem {
            stream: name,
            row,
            problem: problem.to_string(),
        });
    }

    /// The stream of a per-stream row, or `None` (and a problem, unless its purge is pending)
    /// for a row whose stream is gone.
    fn owner(&mut self, id: u64, row: impl FnOnce() -> String) -> Option<&mut Stream> {
        if !self.streams.contains_key(&id) {
            if !self.purges.contains(&id) {
                self.problem(
                    None,
                    row(),
                    format!("belongs to stream id {id}, which no stream row names"),
                );
            }
            return None;
        }
        self.streams.get_mut(&id)
    }
}

/// Checks the data file in `data_dir` (see the module's documentation).
pub fn check(data_dir: &Path) -> Result<CheckReport, StoreError> {
    let path = data_dir.join(DATA_FILE_NAME);
    if !path.exists() {
        return Err(StoreError::Corrupt {
            path,
            detail: "there is no data file here; give the directory recap serve uses (--data)"
                .into(),
        });
    }
    let opened = std::panic::catch_unwind(|| redb::Builder::new().open_read_only(&path));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::RepairAborted)) => {
            return Err(StoreError::Corrupt {
                path,
                detail: "the file was not closed cleanly; start `recap serve` on it once (redb repairs it when it opens), stop it, then check again".into(),
            });
        }
        Ok(Err(error)) => return Err(reads::open_error(&path, error)),
        Err(panic) => {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("redb cannot open it ({})", panic_message(&*panic)),
            });
        }
    };
    check_database(&db)
}

/// One pass of the check over one table.
type Pass = fn(&ReadTransaction, &mut Checker) -> Result<(), StoreError>;

fn check_database(db: &ReadOnlyDatabase) -> Result<CheckReport, StoreError> {
    let txn = db.begin_read()?;
    let mut checker = Checker {
        streams: HashMap::new(),
        purges: BTreeSet::new(),
        report: CheckReport::default(),
    };
    // Each table is read in one pass; a page redb cannot read ends that table's pass.
    let passes: [(&str, Pass); 6] = [
        ("recap_streams", read_streams),
        ("recap_purge", read_purges),
        ("recap_records", read_records),
        ("recap_severe", read_severe),
        ("recap_changes", read_changes),
        ("recap_notes", read_notes),
    ];
    for (table, pass) in passes {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(&txn, &mut checker)));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => panic_message(&*panic),
        };
        checker.problem(
            None,
            format!("table {table}"),
            format!("could not be read to its end ({failure})"),
        );
    }
    finish_streams(&mut checker);
    Ok(checker.report)
}

fn read_streams(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    for entry in txn.open_table(schema::STREAMS)?.iter()? {
        let (name, value) = entry?;
        let name = name.value();
        checker.report.streams += 1;
        match schema::decode_meta(name, value.value()) {
            Ok(meta) => {
                let stream = Stream {
                    name: name.to_owned(),
                    next_seq: meta.first_seq,
                    meta,
                    severe: BTreeSet::new(),
                    revisions: Vec::new(),
                    events: 0,
                    notes: 0,
                    listed: 0,
                    undecodable: false,
                };
                checker.streams.insert(stream.meta.id, stream);
            }
            Err(error) => checker.report.problems.push(Problem {
                stream: Some(name.to_owned()),
                row: error.row,
                problem: format!(
                    "{} (none of the stream's rows can be checked)",
                    error.problem
                ),
            }),
        }
    }
    Ok(())
}

fn read_purges(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    for entry in txn.open_table(schema::PURGE)?.iter()? {
        checker.purges.insert(entry?.0.value());
    }
    Ok(())
}

fn read_records(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    let table = txn.open_table(schema::RECORDS)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (id, seq) = key.value();
        if !found_by_key(&table, (id, seq))? {
            checker.problem(Some(id), format!("record {seq}"), UNFINDABLE);
        }
        checker.report.records += 1;
        let Some(stream) = checker.owner(id, || format!("record {seq}")) else {
            continue;
        };
        let (first_seq, last_seq) = (stream.meta.first_seq, stream.meta.totals.records);
        let floor = stream.meta.changelog_floor;
        let expected = stream.next_seq;
        stream.next_seq = stream.next_seq.max(seq + 1);
        let decoded = schema::decode_record(id, seq, value.value());
        stream.undecodable |= decoded.is_err();
        if let Ok((record, created)) = &decoded {
            stream.events += record.repeat_count;
            if record.severity >= Severity::Error {
                stream.severe.insert(seq);
            }
            if created.revision > floor {
                stream.revisions.push(created.revision);
            }
        }
        if seq < first_seq || seq > last_seq {
            let problem =
                format!("is stored outside the stream's records {first_seq}..={last_seq}");
            checker.problem(Some(id), format!("record {seq}"), problem);
        } else if seq > expected {
            checker.problem(Some(id), seq_range("records", expected, seq - 1), MISSING);
        }
        if let Err(error) = decoded {
            checker.problem(Some(id), error.row, error.problem);
        }
    }
    Ok(())
}

const MISSING: &str = "missing though the stream's row says they are stored";

const UNFINDABLE: &str =
    "is in the table but cannot be found by its key (an index page of the file is damaged)";

/// Whether a lookup by `key` from the table's root finds the row a scan found: reads look rows
/// up by key (a page of history starts at its cursor), and a damaged branch page can send a
/// lookup astray while a scan from the first row still passes it.
fn found_by_key(
    table: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    key: (u64, u64),
) -> Result<bool, StoreError> {
    Ok(table.get(key)?.is_some())
}

fn seq_range(what: &str, from: u64, to: u64) -> String {
    if from == to {
        format!("{} {from}", what.trim_end_matches('s'))
    } else {
        format!("{what} {from}..={to}")
    }
}

fn read_severe(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    for entry in txn.open_table(schema::SEVERE)?.iter()? {
        let (id, seq) = entry?.0.value();
        let Some(stream) = checker.owner(id, || format!("severe index entry {seq}")) else {
            continue;
        };
        // Each entry found is taken out: what is left was never indexed.
        if !stream.severe.remove(&seq) {
            let stored = (stream.meta.first_seq..=stream.meta.totals.records).contains(&seq);
            let problem = if stored {
                "names a record that is not severe"
            } else {
                "names a record that is not stored"
            };
            checker.problem(Some(id), format!("severe index entry {seq}"), problem);
        }
    }
    let unindexed: Vec<(u64, u64)> = checker
        .streams
        .iter()
        .flat_map(|(&id, stream)| stream.severe.iter().map(move |&seq| (id, seq)))
        .collect();
    for (id, seq) in unindexed {
        checker.problem(
            Some(id),
            format!("record {seq}"),
            "is severe but missing from the severe index",
        );
    }
    Ok(())
}

fn read_changes(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    let table = txn.open_table(schema::CHANGES)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (id, revision) = key.value();
        if !found_by_key(&table, (id, revision))? {
            checker.problem(Some(id), format!("change {revision}"), UNFINDABLE);
        }
        checker.report.changes += 1;
        let Some(stream) = checker.owner(id, || format!("change {revision}")) else {
            continue;
        };
        // Rows at or under the floor are trimmed in the background; they are not replayed.
        if revision > stream.meta.changelog_floor {
            stream.revisions.push(revision);
        }
        if let Err(error) = schema::decode_change(id, revision, value.value()) {
            stream.undecodable = true;
            checker.problem(Some(id), error.row, error.problem);
        }
    }
    Ok(())
}

fn read_notes(txn: &ReadTransaction, checker: &mut Checker) -> Result<(), StoreError> {
    let table = txn.open_table(schema::NOTES)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (id, note) = key.value();
        if !found_by_key(&table, (id, note))? {
            checker.problem(Some(id), format!("note {note}"), UNFINDABLE);
        }
        checker.report.notes += 1;
        let Some(stream) = checker.owner(id, || format!("note {note}")) else {
            continue;
        };
        stream.notes += 1;
        if let Err(error) = schema::decode_note(id, note, value.value()) {
            checker.problem(Some(id), error.row, error.problem);
        }
    }
    Ok(())
}

/// What can only be checked once every table was read: records missing at the end, revisions
/// made once each, the note count, the totals.
fn finish_streams(checker: &mut Checker) {
    let mut found = Vec::new();
    for (&id, stream) in &mut checker.streams {
        let meta = &stream.meta;
        let last_seq = meta.totals.records;
        if stream.next_seq <= last_seq {
            found.push((
                id,
                seq_range("records", stream.next_seq, last_seq),
                MISSING.to_owned(),
            ));
        }
        if let Some(stored) = meta.notes.filter(|&stored| stored != stream.notes) {
            found.push((
                id,
                "notes".to_owned(),
                format!(
                    "number {} where the stream's row says {stored}",
                    stream.notes
                ),
            ));
        }
        // A record or change that did not decode hides its revision (and its count): the
        // rows are listed already, and what follows from them is not.
        if stream.undecodable {
            continue;
        }
        stream.revisions.sort_unstable();
        let mut expected = meta.changelog_floor + 1;
        let unmade = "missing: no record or changelog row made these revisions";
        for pair in stream.revisions.chunk_by(|a, b| a == b) {
            let revision = pair[0];
            if revision > expected {
                let row = seq_range("changes", expected, revision - 1);
                found.push((id, row, unmade.to_owned()));
            }
            if pair.len() > 1 {
                let times = format!("was made {} times", pair.len());
                found.push((id, format!("change {revision}"), times));
            }
            expected = revision + 1;
        }
        if expected <= meta.revision {
            let row = seq_range("changes", expected, meta.revision);
            found.push((id, row, unmade.to_owned()));
        }
        if meta.first_seq == 1 && stream.events != meta.totals.events {
            found.push((
                id,
                "records".to_owned(),
                format!(
                    "count {} events where the stream's row says {}",
                    stream.events, meta.totals.events
                ),
            ));
        }
    }
    for (id, row, problem) in found {
        checker.problem(Some(id), row, problem);
    }
}
