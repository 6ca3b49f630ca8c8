//! What a node reads of streams without their records: where a stream stands (its id and
//! revision, one indexed row) and the list of streams by name.

use super::super::{StoreError, StreamPosition, StreamStats};
use super::{PgStore, pool_error, unreachable_or};
use crate::event::StreamName;

/// Names read per query while listing streams: a page's worth, so that a key or prefix that
/// admits few names still pages through the table in few round trips.
const NAMES_PER_QUERY: i64 = 1_000;

impl PgStore {
    /// A stream's id and revision as the database has them now; `None` if it does not exist.
    /// One indexed row, without loading the stream's state (see [`PgStore::position`] for
    /// that).
    pub async fn head(&self, stream: &StreamName) -> Result<Option<StreamPosition>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT id, revision FROM recap_streams WHERE name = $1",
                &[&stream.as_str()],
            )
            .await
            .map_err(|error| unreachable_or(error, "reading a stream"))?;
        Ok(row.map(|row| StreamPosition {
            stream_id: row.get::<_, i64>(0) as u64,
            revision: row.get::<_, i64>(1) as u64,
        }))
    }

    /// A page of streams' statistics, by name: at most `limit` of those after `after` that
    /// `admit` lets through, and the name to continue after when there are more (the redb
    /// store's `streams_page`).
    pub async fn streams_page(
        &self,
        after: Option<&str>,
        limit: usize,
        admit: impl Fn(&StreamName) -> bool,
    ) -> Result<(Vec<StreamStats>, Option<StreamName>), StoreError> {
        let mut names = Vec::new();
        // PostgreSQL text cannot hold a NUL. No name holds one, and the names after `abc\0…`
        // are exactly those after `abc` (every name character sorts after NUL).
        let after = after.map(|after| after.split('\0').next().unwrap_or(""));
        let mut cursor = after.unwrap_or("").to_owned();
        // One name past the page says whether there is a next one.
        while names.len() <= limit {
            let page = self.names_after(&cursor).await?;
            let Some(last) = page.last() else { break };
            cursor = last.to_string();
            let exhausted = page.len() < NAMES_PER_QUERY as usize;
            names.extend(page.into_iter().filter(|name| admit(name)));
            if exhausted {
                break;
            }
        }
        let more = names.len() > limit;
        names.truncate(limit);
        let next = more.then(|| names.last().cloned()).flatten();
        let mut stats = Vec::with_capacity(names.len());
        for name in &names {
            // A stream deleted since its name was read is left out, as if listed a moment later.
            if let Some(one) = self.stream(name).await? {
                stats.push(one);
            }
        }
        Ok((stats, next))
    }

    /// Up to [`NAMES_PER_QUERY`] stream names after `after`, by name (byte order, as the redb
    /// store sorts them).
    async fn names_after(&self, after: &str) -> Result<Vec<StreamName>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT name FROM recap_streams WHERE name COLLATE \"C\" > $1 \
                 ORDER BY name COLLATE \"C\" LIMIT $2",
                &[&after, &NAMES_PER_QUERY],
            )
            .await
            .map_err(|error| unreachable_or(error, "listing streams"))?;
        rows.iter()
            .map(|row| {
                let name: &str = row.get(0);
                StreamName::new(name).map_err(|error| {
                    StoreError::storage(format!("stream name {name:?} in the database"), error)
                })
            })
            .collect()
    }
}
