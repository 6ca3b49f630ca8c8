//! `GET /healthz` and `GET /metrics`: whether the server takes writes, and its Prometheus text.

use http::Method;
use serde::Deserialize;

use super::{Client, ClientError, read_body};

/// What `/healthz` says.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`, `degraded` (writes fail, reads are served) or `failed` (the store stopped).
    pub status: String,
    /// Why it is not `ok`.
    #[serde(default)]
    pub cause: Option<String>,
}

impl Health {
    /// Whether the server is healthy.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Asks `/healthz`; an unhealthy server (503) is an answer, not an error.
pub async fn health(client: &Client) -> Result<Health, ClientError> {
    let response = client.send_any(Method::GET, "/healthz", None, &[]).await?;
    let status = response.status();
    let bytes = read_body(response).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ClientError::Protocol(format!(
            "/healthz answered {status} with {:?}: {error}",
            String::from_utf8_lossy(&bytes)
        ))
    })
}

/// The Prometheus text of `/metrics`.
pub async fn metrics(client: &Client) -> Result<String, ClientError> {
    let response = client.send(Method::GET, "/metrics", None, &[]).await?;
    let bytes = read_body(response).await?;
    String::from_utf8(bytes.to_vec()).map_err(|error| ClientError::Protocol(error.to_string()))
}
