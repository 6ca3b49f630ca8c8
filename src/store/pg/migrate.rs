//! Versioned schema migrations of the PostgreSQL backend, in code.
//!
//! Every node runs [`to_current`] when it opens the database. Migrations are applied in order,
//! each in its own transaction together with its row in `recap_schema_migrations`, under a
//! transaction-scoped advisory lock: nodes starting at once apply each migration once, and a
//! node that fails half-way leaves the database at the last whole migration. A database that
//! has migrations this build does not know (a newer recap ran against it) is refused rather
//! than written with an older idea of the schema.

use tokio_postgres::Client;

use super::super::StoreError;
use super::{PgError, unreachable_or};

/// One step of the schema: applied once, never edited once released (add a new one instead).
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// The schema's history, oldest first. Versions are dense from 1.
///
/// Why these shapes (`docs/design.md`, "The PostgreSQL backend", has the full story):
/// - `recap_streams` is the row every write to a stream locks (`SELECT … FOR UPDATE`): it
///   serializes writers on every node, and carries what a writer needs besides the newest
///   records (revision, note ids, totals). Ids come from an identity column, so they only grow
///   and are never reused, as in the redb file.
/// - Records, changes and notes are keyed `(stream_id, …)`, so one stream's rows are one range
///   of the primary key (and one shard under Citus, distributing by `stream_id`). Their bodies
///   are the JSON the API answers with; filters are applied by the reader, as with redb.
/// - A stream's anomaly detectors' state and its overrides are two columns of its row (JSON, as
///   the redb stream row keeps them): the state is written in the commit of the event it
///   observed, under the row's lock; the overrides are read apart, on every write, since they
///   change without a new revision.
/// - There are no foreign keys: a key check per inserted row costs ingest throughput, and rows
///   of a deleted stream are removed in the same transaction that deletes its stream row.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "streams, records, changes and notes",
        sql: "
        CREATE TABLE recap_streams (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            revision bigint NOT NULL DEFAULT 0,
            next_note_id bigint NOT NULL DEFAULT 1,
            first_seq bigint NOT NULL DEFAULT 1,
            severe_created bigint NOT NULL DEFAULT 0,
            totals text,
            retention text
        );
        CREATE TABLE recap_records (
            stream_id bigint NOT NULL,
            seq bigint NOT NULL,
            revision bigint NOT NULL,
            body text NOT NULL,
            PRIMARY KEY (stream_id, seq)
        );
        CREATE TABLE recap_changes (
            stream_id bigint NOT NULL,
            revision bigint NOT NULL,
            body text NOT NULL,
            PRIMARY KEY (stream_id, revision)
        );
        CREATE TABLE recap_notes (
            stream_id bigint NOT NULL,
            id bigint NOT NULL,
            body text NOT NULL,
            PRIMARY KEY (stream_id, id)
        );
    ",
    },
    Migration {
        version: 2,
        description: "changelog floor per stream",
        sql: "ALTER TABLE recap_streams ADD COLUMN changelog_floor bigint NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 3,
        description: "what loading a stream's state needs: its tail's bounds, severe records",
        sql: "
        ALTER TABLE recap_streams ADD COLUMN restore text;
        ALTER TABLE recap_records ADD COLUMN severe boolean NOT NULL DEFAULT false;
        UPDATE recap_records SET severe = true
            WHERE body::jsonb->>'severity' IN ('error', 'critical');
        CREATE INDEX recap_records_severe ON recap_records (stream_id, seq) WHERE severe;
    ",
    },
    Migration {
        version: 4,
        description: "anomaly detection: the detectors' state and the stream's overrides",
        sql: "
        ALTER TABLE recap_streams ADD COLUMN anomaly_detectors text;
        ALTER TABLE recap_streams ADD COLUMN anomaly_overrides text;
    ",
    },
];

/// The schema version this build writes.
pub const PG_SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Key of the advisory lock migrations take (an arbitrary constant: "recap" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6563_6170;

/// Brings the database to [`PG_SCHEMA_VERSION`]; `SchemaTooNew` if it is past it. Returns the
/// versions applied now.
pub(super) async fn to_current(client: &mut Client, place: &str) -> Result<Vec<i32>, StoreError> {
    let fail = |error: PgError| unreachable_or(error, "migrating the database schema");
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let transaction = client.transaction().await.map_err(fail)?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        // Under the lock: two nodes creating it at once would collide in the catalog.
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS recap_schema_migrations (
                    version integer PRIMARY KEY,
                    description text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(fail)?;
        let newest: Option<i32> = transaction
            .query_one("SELECT max(version) FROM recap_schema_migrations", &[])
            .await
            .map_err(fail)?
            .get(0);
        let newest = newest.unwrap_or(0);
        if newest > PG_SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: place.into(),
                found: newest as u32,
                supported: PG_SCHEMA_VERSION as u32,
            });
        }
        if newest >= migration.version {
            continue;
        }
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(fail)?;
        transaction
            .execute(
                "INSERT INTO recap_schema_migrations (version, description) VALUES ($1, $2)",
                &[&migration.version, &migration.description],
            )
            .await
            .map_err(fail)?;
        transaction.commit().await.map_err(fail)?;
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1);
        }
    }
}
