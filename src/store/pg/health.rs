//! The health check's own connection. Checking through the read pool would queue the check
//! behind reads, and a node whose reads keep every pooled connection busy (a load spike, a
//! long lock) would fail its health check and be taken out of the load balancer's pool, every
//! node at once. One connection kept for the check answers whether the database does.

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};

use super::super::StoreError;
use super::{CONNECT_TIMEOUT, connect, tls, unreachable_or};

/// See the module documentation.
pub(super) struct HealthCheck {
    config: Config,
    tls: tls::Tls,
    place: String,
    /// The connection, once opened; dropped after a failure, opened again by the next check.
    connection: Mutex<Option<(Client, JoinHandle<()>)>>,
}

impl HealthCheck {
    pub(super) fn new(config: Config, tls: tls::Tls, place: String) -> HealthCheck {
        HealthCheck {
            config,
            tls,
            place,
            connection: Mutex::new(None),
        }
    }

    /// Whether the database answers `SELECT 1` now, within [`CONNECT_TIMEOUT`] (connecting
    /// first if needed).
    pub(super) async fn check(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.lock().await;
        let check = async {
            if connection
                .as_ref()
                .is_none_or(|(client, _)| client.is_closed())
            {
                *connection = Some(connect(&self.config, &self.tls, &self.place).await?);
            }
            let (client, _) = connection.as_ref().expect("connected above");
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|error| unreachable_or(error, "checking the database"))
                .map(drop)
        };
        let result = match tokio::time::timeout(CONNECT_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database at {} did not answer a health check within {} s",
                self.place,
                CONNECT_TIMEOUT.as_secs()
            ))),
        };
        if result.is_err() {
            // A connection that failed (or whose answer never came) is not trusted again.
            *connection = None;
        }
        result
    }
}
