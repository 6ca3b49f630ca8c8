//! `PUT /v1/streams/{s}/anomalies`: a stream's anomaly detection settings (see
//! [`crate::anomaly`]).

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;

use crate::anomaly::{AnomalyOverrides, AnomalySettings};
use crate::event::StreamName;
use crate::store::StoreError;

use super::App;
use super::body;
use super::wire::{self, ApiError, Body, ErrorCode};

/// What a client may send: any of these, each a number (0 turns that detector off) or null;
/// what it leaves out (or sets to null) follows the server. `{}` goes back to the server's
/// settings.
const SHAPE: &str = r#"{"enabled": true, "repeat_actions": 3, "oscillation_cycles": 3, "error_recurrences": 3, "stall_seconds": 300} (any of them; null or absent follows the server)"#;

/// `PUT /v1/streams/{s}/anomalies`: replaces what the stream overrides of the server's
/// anomaly detection; answers with the settings now in force for it.
pub(super) async fn put(
    app: &App,
    stream: StreamName,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = body::read_json(body, headers, &app.options, &app.bodies).await?;
    let overrides: AnomalyOverrides = body::decode_object(body::utf8(&body.bytes)?, SHAPE)?;
    // Checked against the defaults: every threshold the stream sets must be valid on its own.
    let in_force = AnomalySettings::default().with(&overrides);
    if let Some((field, detail)) = in_force.check() {
        return Err(
            ApiError::new(ErrorCode::InvalidField, format!("{field} {detail}")).with_field(field),
        );
    }
    app.metrics
        .commit(app.store.set_anomalies(&stream, overrides))
        .await?;
    let stats = app
        .store
        .stream(&stream)
        .await?
        .ok_or_else(|| StoreError::UnknownStream(stream.to_string()))?;
    Ok(wire::json(StatusCode::OK, &stats.anomalies))
}
