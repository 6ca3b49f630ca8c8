//! Upgrading a data file written by an older schema, once, when it is opened.
//!
//! Schema 1 stored values without checksums. The upgrade writes a sealed copy of every table
//! to `recap.redb.upgrading` beside the file, makes it durable, and renames it over the old
//! file: a crash at any point leaves either the old file whole (the copy is redone at the next
//! start) or the new one. It needs the file's size again in free space, once.

use std::path::Path;
use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};

use super::schema::{self, RowKey, SCHEMA_VERSION, UNSEALED_SCHEMA_VERSION};
use super::{StoreError, open_database};

/// Rows copied per (non-durable) transaction: bounds the upgrade's memory.
const ROWS_PER_TRANSACTION: usize = 50_000;

/// The file at `path`, upgraded to [`SCHEMA_VERSION`] if it is of an older schema.
pub(super) fn to_current(
    db: Database,
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    if schema_version(&db)? != Some(u64::from(UNSEALED_SCHEMA_VERSION)) {
        return Ok(db);
    }
    let started = Instant::now();
    let staging = path.with_extension("redb.upgrading");
    let io = |what: &str, error: std::io::Error| {
        StoreError::storage_text(format!("cannot {what} {}: {error}", staging.display()))
    };
    if staging.exists() {
        std::fs::remove_file(&staging).map_err(|error| io("remove the unfinished", error))?;
    }
    tracing::info!(path = %path.display(), "upgrading the data file to schema {SCHEMA_VERSION} (a checksum on every row)");
    {
        let target = Database::create(&staging)
            .map_err(|error| StoreError::storage_text(format!("{}: {error}", staging.display())))?;
        copy_sealed(&db, &target)?;
    }
    drop(db);
    std::fs::rename(&staging, path).map_err(|error| io("rename", error))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| io("sync the directory of", error))?;
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "upgraded the data file"
    );
    open_database(path, cache_bytes)
}

/// The schema version in the file, if it has one.
fn schema_version(db: &Database) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read()?;
    let has_meta = txn
        .list_tables()?
        .any(|table| table.name() == schema::META.name());
    if !has_meta {
        return Ok(None);
    }
    let version = txn
        .open_table(schema::META)?
        .get(schema::SCHEMA_VERSION_KEY)?
        .map(|value| value.value());
    Ok(version)
}

/// Copies every row of `$table` from the read transaction `$read` into `$batch`,
/// `ROWS_PER_TRANSACTION` rows per transaction, each row passed through `$map` (key and value as read → as written).
macro_rules! copy_table {
    ($read:expr, $batch:expr, $table:expr, $map:expr) => {
        copy_table!($read, $batch, $table, $map, |value| value)
    };
    ($read:expr, $batch:expr, $table:expr, $map:expr, $view:expr) => {{
        let table = match $read.open_table($table) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(error.into()),
        };
        let mut rows = match &table {
            Some(table) => Some(table.iter()?),
            None => None,
        }
        .into_iter()
        .flatten()
        .peekable();
        while rows.peek().is_some() {
            let txn = $batch.txn()?;
            let mut copied = txn.open_table($table)?;
            for entry in rows.by_ref().take(ROWS_PER_TRANSACTION) {
                let (key, value) = entry?;
                let key = key.value();
                let value = $map(key, value.value());
                copied.insert(key, $view(&value))?;
            }
            drop(copied);
            $batch.commit()?;
        }
    }};
}

/// Copies every table of `source` into `target`, each value sealed under its key, and marks the
/// copy as of the current schema in its last, durable, transaction.
fn copy_sealed(source: &Database, target: &Database) -> Result<(), StoreError> {
    let read = source.begin_read()?;
    let mut batch = Batch {
        db: target,
        txn: None,
    };
    copy_table!(
        read,
        batch,
        schema::STREAMS,
        |name: &str, value: &[u8]| { sealed(RowKey::Stream(name), value) },
        Vec::as_slice
    );
    copy_table!(
        read,
        batch,
        schema::RECORDS,
        |(stream, seq), value: &[u8]| { sealed(RowKey::Record { stream, seq }, value) },
        Vec::as_slice
    );
    copy_table!(
        read,
        batch,
        schema::CHANGES,
        |(stream, revision), value: &[u8]| { sealed(RowKey::Change { stream, revision }, value) },
        Vec::as_slice
    );
    copy_table!(
        read,
        batch,
        schema::NOTES,
        |(stream, id), value: &[u8]| { sealed(RowKey::Note { stream, id }, value) },
        Vec::as_slice
    );
    copy_table!(read, batch, schema::SEVERE, |_, ()| ());
    copy_table!(read, batch, schema::PURGE, |_, ()| ());
    copy_table!(read, batch, schema::META, |key: &str, value: u64| {
        if key == schema::SCHEMA_VERSION_KEY {
            u64::from(SCHEMA_VERSION)
        } else {
            value
        }
    });
    batch.finish()
}

fn sealed(key: RowKey<'_>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + schema::CHECKSUM_BYTES);
    out.extend_from_slice(value);
    schema::seal(key, &mut out, 0);
    out
}

/// The copy's write transactions: not durable one by one (a crash redoes the whole copy), made
/// durable together by the last.
struct Batch<'db> {
    db: &'db Database,
    txn: Option<WriteTransaction>,
}

impl Batch<'_> {
    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)
                .map_err(|error| StoreError::storage("", error))?;
            self.txn = Some(txn);
        }
        Ok(self.txn.as_ref().expect("just begun"))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if let Some(txn) = self.txn.take() {
            txn.commit()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), StoreError> {
        let mut txn = match self.txn.take() {
            Some(txn) => txn,
            None => self.db.begin_write()?,
        };
        txn.set_durability(Durability::Immediate)
            .map_err(|error| StoreError::storage("", error))?;
        txn.commit()?;
        Ok(())
    }
}
