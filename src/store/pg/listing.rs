//! What a node reads of streams without their records: where a stream stands (its id and
//! revision, one indexed row) and the list of streams by name.

use std::collections::HashMap;

use super::super::{StoreError, StreamPosition, StreamStats};
use super::load::{STREAM_COLUMNS, StreamRow};
use super::{PgStore, codec, pool_error, reads, unreachable_or};
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

    /// A page of streams' statistics, by name: at most `limit` of those after `after` whose
    /// names start with `prefix` and that `admit` lets through, and the name to continue after
    /// when there are more (the redb store's `streams_page`). A page takes a few queries,
    /// whatever its length: the names, then the rows and the live notes' count of the page.
    pub async fn streams_page(
        &self,
        after: Option<&str>,
        prefix: &str,
        limit: usize,
        admit: impl Fn(&StreamName) -> bool,
    ) -> Result<(Vec<StreamStats>, Option<StreamName>), StoreError> {
        let mut names = Vec::new();
        // PostgreSQL text cannot hold a NUL. No name holds one, and the names after `abc\0…`
        // are exactly those after `abc` (every name character sorts after NUL).
        let after = after.map(|after| after.split('\0').next().unwrap_or(""));
        let prefix = prefix.split('\0').next().unwrap_or("");
        // Names sort after their prefix: a page starts there at the earliest.
        let mut cursor = after.unwrap_or("").max(prefix).to_owned();
        // A stream named the prefix itself is listed, unless the page starts after it.
        let mut inclusive = after.is_none_or(|after| after < prefix);
        // One name past the page says whether there is a next one.
        while names.len() <= limit {
            let page = self.names_from(&cursor, inclusive, prefix).await?;
            let Some(last) = page.last() else { break };
            cursor = last.to_string();
            inclusive = false;
            let exhausted = page.len() < NAMES_PER_QUERY as usize;
            names.extend(page.into_iter().filter(|name| admit(name)));
            if exhausted {
                break;
            }
        }
        let more = names.len() > limit;
        names.truncate(limit);
        let next = more.then(|| names.last().cloned()).flatten();
        Ok((self.stats_of(&names).await?, next))
    }

    /// The statistics of `names`, in their order; a stream deleted since its name was read is
    /// left out, as if listed a moment later.
    async fn stats_of(&self, names: &[StreamName]) -> Result<Vec<StreamStats>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let wanted: Vec<&str> = names.iter().map(StreamName::as_str).collect();
        let rows = client
            .query(
                &format!("SELECT {STREAM_COLUMNS} FROM recap_streams WHERE name = ANY($1)"),
                &[&wanted],
            )
            .await
            .map_err(|error| unreachable_or(error, "listing streams"))?;
        let mut by_name = HashMap::new();
        for row in &rows {
            let name: &str = row.get(1);
            by_name.insert(name.to_owned(), StreamRow::decode(name, row)?);
        }
        let ids: Vec<i64> = by_name.values().map(|row| row.id as i64).collect();
        // Notes that never expire are counted by the database; those that may have expired are
        // read and judged as a single stream's statistics judge them.
        let counted = client
            .query(
                "SELECT stream_id, count(*) FROM recap_notes WHERE stream_id = ANY($1) \
                 AND (body::jsonb ->> 'expires_at') IS NULL GROUP BY stream_id",
                &[&ids],
            )
            .await
            .map_err(|error| unreachable_or(error, "counting notes"))?;
        let mut live: HashMap<i64, u64> = counted
            .iter()
            .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1) as u64))
            .collect();
        let expiring = client
            .query(
                "SELECT stream_id, id, body FROM recap_notes WHERE stream_id = ANY($1) \
                 AND (body::jsonb ->> 'expires_at') IS NOT NULL",
                &[&ids],
            )
            .await
            .map_err(|error| unreachable_or(error, "counting notes"))?;
        let names_by_id: HashMap<i64, &str> = by_name
            .iter()
            .map(|(name, row)| (row.id as i64, name.as_str()))
            .collect();
        let now = chrono::Utc::now();
        for row in &expiring {
            let stream_id: i64 = row.get(0);
            let stream = names_by_id.get(&stream_id).copied().unwrap_or_default();
            let note = codec::decode_note(stream, row.get(1), row.get(2))?;
            if note.is_live(now) {
                *live.entry(stream_id).or_default() += 1;
            }
        }
        let (retention, anomalies) = (self.inner.options.retention, self.inner.options.anomaly);
        Ok(names
            .iter()
            .filter_map(|name| {
                let row = by_name.get(name.as_str())?;
                let notes = live.get(&(row.id as i64)).copied().unwrap_or(0);
                Some(reads::stats(name.clone(), row, notes, retention, anomalies))
            })
            .collect())
    }

    /// Up to [`NAMES_PER_QUERY`] stream names after `after` (from it, when `inclusive`) that
    /// start with `prefix`, by name (byte order, as the redb store sorts them).
    async fn names_from(
        &self,
        after: &str,
        inclusive: bool,
        prefix: &str,
    ) -> Result<Vec<StreamName>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let comparison = if inclusive { ">=" } else { ">" };
        let rows = client
            .query(
                &format!(
                    "SELECT name FROM recap_streams WHERE name COLLATE \"C\" {comparison} $1 \
                     AND starts_with(name, $2) ORDER BY name COLLATE \"C\" LIMIT $3"
                ),
                &[&after, &prefix, &NAMES_PER_QUERY],
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
