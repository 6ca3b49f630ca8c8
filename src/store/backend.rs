//! The storage interface: what a node asks of durable storage, whichever backend keeps it.
//!
//! Two implementations: [`Store`] (the embedded redb file, the default) and [`PgStore`] (a
//! PostgreSQL database several nodes share). The conformance suite (`tests/it/conformance.rs`)
//! runs the same operations through this trait against both and requires the same answers.
//!
//! The seam is at the level of requests (appends, notes, deletes, history pages, changelog
//! replay), because that is where the backends differ: the redb writer decides placements on
//! its shadows and pipelines commits to one file it owns alone, while the PostgreSQL writer
//! locks each stream's row and reloads its shadow when another node wrote since. Below the
//! seam both share the backend-agnostic parts: [`StreamState`](crate::stream::StreamState)
//! placement (collapse, seqs, revisions, totals, notes) and the batching of requests into one
//! transaction.

use std::future::Future;

use crate::anomaly::AnomalyOverrides;
use crate::event::{Event, Note, StreamName, Timestamp};
use crate::stream::Appended;

use super::pg::PgStore;
use super::{
    Change, ImportedRecord, RecordPage, RecordQuery, Retention, Store, StoreError, StreamStats,
};

/// Durable storage of streams: writes acknowledged only once durable, and the reads that come
/// from storage rather than from a node's in-memory state.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Appends events to a stream (created on first write), all or nothing; see
    /// [`Store::append`].
    fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send;

    /// Appends records from an export as they are; see [`Store::import`].
    fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send;

    /// Adds a note and its audit event; see [`Store::add_note`].
    fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Note, StoreError>> + Send;

    /// Deletes a note; `false` if it did not exist.
    fn delete_note(
        &self,
        stream: &StreamName,
        id: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes a stream; `false` if it did not exist.
    fn delete_stream(
        &self,
        stream: &StreamName,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets a stream's retention.
    fn set_retention(
        &self,
        stream: &StreamName,
        retention: Retention,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets what a stream overrides of the server's anomaly detection; see
    /// [`Store::set_anomalies`].
    fn set_anomalies(
        &self,
        stream: &StreamName,
        overrides: AnomalyOverrides,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs pending background work (retention, note expiry) as of `now` and resolves when
    /// none is left; see [`Store::maintain`].
    fn maintain(&self, now: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A page of a stream's history.
    fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> impl Future<Output = Result<RecordPage, StoreError>> + Send;

    /// Changes with revision greater than `after`, oldest first, at most `limit`.
    fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send;

    /// A stream's live notes, oldest first.
    fn notes(
        &self,
        stream: &StreamName,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Note>, StoreError>> + Send;

    /// One stream's statistics; `None` if it does not exist.
    fn stream(
        &self,
        stream: &StreamName,
    ) -> impl Future<Output = Result<Option<StreamStats>, StoreError>> + Send;
}

/// Runs a blocking read of the redb store off the async runtime.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|error| Err(StoreError::storage("a read of the data file failed", error)))
}

impl Backend for Store {
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Result<Vec<Appended>, StoreError> {
        Store::append(self, stream, events, now).await
    }

    async fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        Store::import(self, stream, records).await
    }

    async fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Note, StoreError> {
        Store::add_note(self, stream, text, expires_at, now).await
    }

    async fn delete_note(&self, stream: &StreamName, id: u64) -> Result<bool, StoreError> {
        Store::delete_note(self, stream, id).await
    }

    async fn delete_stream(&self, stream: &StreamName) -> Result<bool, StoreError> {
        Store::delete_stream(self, stream).await
    }

    async fn set_retention(
        &self,
        stream: &StreamName,
        retention: Retention,
    ) -> Result<(), StoreError> {
        Store::set_retention(self, stream, retention).await
    }

    async fn set_anomalies(
        &self,
        stream: &StreamName,
        overrides: AnomalyOverrides,
    ) -> Result<(), StoreError> {
        Store::set_anomalies(self, stream, overrides).await
    }

    async fn maintain(&self, now: Timestamp) -> Result<(), StoreError> {
        Store::maintain(self, now).await
    }

    async fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        let (store, stream, query) = (self.clone(), stream.clone(), query.clone());
        blocking(move || Store::records(&store, &stream, &query)).await
    }

    async fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let (store, stream) = (self.clone(), stream.clone());
        blocking(move || Store::changes(&store, &stream, after, limit)).await
    }

    async fn notes(&self, stream: &StreamName, now: Timestamp) -> Result<Vec<Note>, StoreError> {
        let (store, stream) = (self.clone(), stream.clone());
        blocking(move || Store::notes(&store, &stream, now)).await
    }

    async fn stream(&self, stream: &StreamName) -> Result<Option<StreamStats>, StoreError> {
        let (store, stream) = (self.clone(), stream.clone());
        blocking(move || Ok(Store::stream(&store, &stream))).await
    }
}

impl Backend for PgStore {
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Result<Vec<Appended>, StoreError> {
        PgStore::append(self, stream, events, now).await
    }

    async fn import(
        &self,
        stream: &StreamName,
        records: Vec<ImportedRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        PgStore::import(self, stream, records).await
    }

    async fn add_note(
        &self,
        stream: &StreamName,
        text: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Note, StoreError> {
        PgStore::add_note(self, stream, text, expires_at, now).await
    }

    async fn delete_note(&self, stream: &StreamName, id: u64) -> Result<bool, StoreError> {
        PgStore::delete_note(self, stream, id).await
    }

    async fn delete_stream(&self, stream: &StreamName) -> Result<bool, StoreError> {
        PgStore::delete_stream(self, stream).await
    }

    async fn set_retention(
        &self,
        stream: &StreamName,
        retention: Retention,
    ) -> Result<(), StoreError> {
        PgStore::set_retention(self, stream, retention).await
    }

    async fn set_anomalies(
        &self,
        stream: &StreamName,
        overrides: AnomalyOverrides,
    ) -> Result<(), StoreError> {
        PgStore::set_anomalies(self, stream, overrides).await
    }

    async fn maintain(&self, now: Timestamp) -> Result<(), StoreError> {
        PgStore::maintain(self, now).await
    }

    async fn records(
        &self,
        stream: &StreamName,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        PgStore::records(self, stream, query).await
    }

    async fn changes(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        PgStore::changes(self, stream, after, limit).await
    }

    async fn notes(&self, stream: &StreamName, now: Timestamp) -> Result<Vec<Note>, StoreError> {
        PgStore::notes(self, stream, now).await
    }

    async fn stream(&self, stream: &StreamName) -> Result<Option<StreamStats>, StoreError> {
        PgStore::stream(self, stream).await
    }
}
