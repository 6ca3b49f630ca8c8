//! Context windows on a PostgreSQL node: from the node's cache of the stream's state
//! ([`super::cache`]), loaded or caught up from the database first when the stream has moved
//! on.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use crate::context::{ContextRequest, ContextWindow, PayloadPolicy};
use crate::event::{StreamName, Timestamp};

use super::super::{StoreError, StreamPosition};
use super::cache::Cached;
use super::{PgStore, load, pool_error, unreachable_or};

impl PgStore {
    /// The context window of a stream at revision `min_revision` or later (0: whatever is
    /// newest that this node has heard of); `None` if the stream does not exist. Served from
    /// the node's cache; a stream that moved on is caught up from the database first. A stream
    /// the database does not have at `min_revision` either is served as the database has it:
    /// the caller compares [`PgStore::position`]'s revision (see `X-Recap-Min-Revision`).
    pub async fn context(
        &self,
        stream: &StreamName,
        request: &ContextRequest,
        now: Timestamp,
        min_revision: u64,
    ) -> Result<Option<ContextWindow>, StoreError> {
        let Some(cached) = self.current(stream, min_revision).await? else {
            return Ok(None);
        };
        if let Some(window) = cached.warm_context(request, now) {
            return Ok(Some(window));
        }
        // Tokenizing (a cold load's records, a new encoding, line cap or note) takes
        // milliseconds or more: off the async runtime.
        let request = request.clone();
        tokio::task::spawn_blocking(move || Some(cached.context(&request, now)))
            .await
            .map_err(|error| StoreError::storage("building a context", error))
    }

    /// The stream's id and revision as this node serves it, caught up to `min_revision` like
    /// [`PgStore::context`]; `None` if the stream does not exist.
    pub async fn position(
        &self,
        stream: &StreamName,
        min_revision: u64,
    ) -> Result<Option<StreamPosition>, StoreError> {
        let cached = self.current(stream, min_revision).await?;
        Ok(cached.map(|cached| StreamPosition {
            stream_id: cached.id,
            revision: cached.revision(),
        }))
    }

    /// The stream's cached state, current as far as this node knows and at `min_revision` if
    /// the database has it.
    async fn current(
        &self,
        stream: &StreamName,
        min_revision: u64,
    ) -> Result<Option<Arc<Cached>>, StoreError> {
        let cache = &self.inner.cache;
        let Some(cached) = cache.get(stream) else {
            return self.load(stream).await;
        };
        if cached.is_current(min_revision) {
            return Ok(Some(cached));
        }
        match self.catch_up(stream, &cached, min_revision).await? {
            Caught::Up => Ok(Some(cached)),
            Caught::Gone => {
                cache.remove(stream);
                Ok(None)
            }
            Caught::Reload => self.load(stream).await,
        }
    }

    /// Brings a cached state up to the database's revision of the stream.
    async fn catch_up(
        &self,
        stream: &StreamName,
        cached: &Cached,
        min_revision: u64,
    ) -> Result<Caught, StoreError> {
        // One catch-up at a time per stream; those who waited find it done.
        let _turn = cached.catching_up.lock().await;
        if cached.is_current(min_revision) {
            return Ok(Caught::Up);
        }
        cached.start_catching_up();
        let mut client = self.inner.pool.get().await.map_err(pool_error)?;
        let transaction = snapshot(&mut client).await?;
        let Some(row) = load::stream_row(&*transaction, stream).await? else {
            return Ok(Caught::Gone);
        };
        if row.id != cached.id {
            return Ok(Caught::Reload);
        }
        let have = cached.revision();
        if row.revision == have {
            // Maintenance may have removed records without a new revision: the state forgets
            // them as a load would not find them (a no-op when it holds none).
            if row.first_seq > 1 {
                super::super::writer::write(&cached.state).forget_through(row.first_seq - 1);
            }
            cached.confirmed(have);
            return Ok(Caught::Up);
        }
        let Some(catch_up) = load::catch_up(&transaction, stream, &row, have).await? else {
            return Ok(Caught::Reload);
        };
        if catch_up.escalates(&super::super::writer::read(&cached.state)) {
            return Ok(Caught::Reload);
        }
        drop(transaction);
        let cache = &self.inner.cache;
        cache
            .catch_ups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        catch_up.apply(
            &mut super::super::writer::write(&cached.state),
            &cache.meter,
        );
        cached.confirmed(row.revision);
        Ok(Caught::Up)
    }

    /// Loads the stream's state from the database into the cache.
    async fn load(&self, stream: &StreamName) -> Result<Option<Arc<Cached>>, StoreError> {
        let cache = &self.inner.cache;
        let heard_count = cache.heard_count();
        let mut client = self.inner.pool.get().await.map_err(pool_error)?;
        let transaction = snapshot(&mut client).await?;
        let Some(row) = load::stream_row(&*transaction, stream).await? else {
            cache.remove(stream);
            return Ok(None);
        };
        let state = load::restore(
            &transaction,
            stream,
            &row,
            &self.inner.options,
            self.inner.options.tail,
            PayloadPolicy::Drop,
            &cache.meter,
        )
        .await?;
        drop(transaction);
        let cached = Arc::new(Cached::new(row.id, state));
        cache.insert(stream.clone(), cached.clone(), heard_count);
        Ok(Some(cached))
    }
}

/// What a catch-up came to.
enum Caught {
    Up,
    /// The stream no longer exists.
    Gone,
    /// The stream was created again, or is too far ahead: load it afresh.
    Reload,
}

/// A read-only transaction that sees one snapshot of the database throughout.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|error| unreachable_or(error, "reading a stream"))
}
