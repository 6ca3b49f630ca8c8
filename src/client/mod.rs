//! The CLI's client side: commands that talk to a running server over HTTP (DESIGN section 7).
//!
//! [`Client`] wraps a hyper client with the server's base URL and optional API key, and turns
//! every non-2xx answer into a [`ClientError::Api`] carrying the server's error body, so the
//! CLI can print what the server said to fix. The requests live one concern per module:
//! [`commands`] (post, context), [`history`] (pages of records), [`notes`], [`streams`]
//! (list, show, delete, retention), [`status`] (health, metrics), [`tail`], [`import`],
//! [`export`], [`hook`], [`mcp`] (with [`changes`], the feeds behind its resource
//! subscriptions). What the command line prints is [`crate::cli`]'s business.

pub mod changes;
pub mod commands;
pub mod export;
pub mod history;
pub mod hook;
pub mod import;
pub mod mcp;
pub mod notes;
pub mod status;
pub mod streams;
pub mod tail;

use std::path::PathBuf;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::event::StreamName;

/// Default server URL of client commands.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:7070";

/// Why a client command failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL is not usable.
    #[error(
        "invalid server URL {url:?}: {detail}; use e.g. http://127.0.0.1:7070 (--server or RECAP_URL)"
    )]
    InvalidUrl {
        /// What was given.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// No server answered.
    #[error(
        "cannot reach a recap server at {url}: {detail}; start one with `recap serve`, or point --server / RECAP_URL at it"
    )]
    Connect {
        /// The server.
        url: String,
        /// The cause.
        detail: String,
    },
    /// The server refused the request.
    #[error("the server answered {status}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// The status.
        status: StatusCode,
        /// The error code.
        code: String,
        /// The server's message.
        message: String,
        /// The offending field.
        field: Option<String>,
        /// For a batch: the position (from 0) of the offending event in the request.
        index: Option<usize>,
    },
    /// The server refused one line of an import file (the server's message names it by the
    /// file's line number, not by its place in the batch).
    #[error("line {line}: {source}")]
    LineRefused {
        /// The line of the file.
        line: usize,
        /// What the server said.
        source: Box<ClientError>,
    },
    /// One line of an import file is over the server's request body cap even when sent alone.
    #[error(
        "line {line} is {bytes} bytes as sent, over the server's request body limit even alone (the server answered {status}); shorten it, or raise max_body_bytes in the server's config"
    )]
    LineTooLarge {
        /// The line of the file.
        line: usize,
        /// Its size in the request.
        bytes: usize,
        /// The status (413).
        status: StatusCode,
    },
    /// The stream named does not exist (the server answered 404 `unknown_stream`, or an empty
    /// context window for a stream it does not know).
    #[error(
        "stream {stream:?} does not exist; `recap streams list` lists the streams, and its first `recap post` creates it"
    )]
    UnknownStream {
        /// The stream.
        stream: String,
    },
    /// The server's answer was not what recap sends.
    #[error("unexpected answer from the server: {0}; is --server pointing at a recap server?")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// An import file has invalid lines; nothing was written.
    #[error(
        "{path}: {count} invalid line(s), nothing was imported:\n{listing}\nfix them, or pass --skip-invalid to import the valid lines only"
    )]
    InvalidLines {
        /// The file.
        path: PathBuf,
        /// How many lines are bad.
        count: usize,
        /// The first few, with line numbers.
        listing: String,
    },
    /// An import stopped part way (a batch was refused or the server went away); the batches
    /// before it stay written.
    #[error("the import stopped after {written} of {total} lines were written: {source}")]
    ImportStopped {
        /// Lines written before the failure.
        written: usize,
        /// Lines to write.
        total: usize,
        /// The cause.
        source: Box<ClientError>,
    },
}

/// A connection to a recap server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    key: Option<HeaderValue>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for the server at `url` (http only), sending `key` as `X-API-Key` if given.
    pub fn new(url: &str, key: Option<&str>) -> Result<Client, ClientError> {
        let invalid = |detail: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            detail: detail.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(invalid(
                    "only http:// is supported (put TLS in a proxy in front)",
                ));
            }
            None => return Err(invalid("it has no http:// scheme")),
        }
        if uri.authority().is_none() {
            return Err(invalid("it has no host"));
        }
        let key = key
            .map(|key| {
                HeaderValue::from_str(key)
                    .map_err(|_| invalid("the API key is not a valid header value"))
            })
            .transpose()?;
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client {
            base: url.trim_end_matches('/').to_owned(),
            key,
            http,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Bytes)>,
        headers: &[(&'static str, String)],
    ) -> Result<Response<Incoming>, ClientError> {
        let response = self.send_any(method, path_and_query, body, headers).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(api_error(response).await)
        }
    }

    /// Sends a request and returns the answer whatever its status (`/healthz` answers 503 with
    /// a body that says why).
    pub async fn send_any(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Bytes)>,
        headers: &[(&'static str, String)],
    ) -> Result<Response<Incoming>, ClientError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(key) = &self.key {
            request = request.header("x-api-key", key.clone());
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = match body {
            Some((content_type, bytes)) => request
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => request.body(Full::new(Bytes::new())),
        }
        .map_err(|error| ClientError::InvalidUrl {
            url: url.clone(),
            detail: error.to_string(),
        })?;
        self.http
            .request(request)
            .await
            .map_err(|error| ClientError::Connect {
                url: self.base.clone(),
                detail: error_chain(&error),
            })
    }

    /// Sends a request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path_and_query, body, &[]).await?;
        let bytes = read_body(response).await?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol(error.to_string()))
    }
}

/// Reads a whole response body.
pub async fn read_body(response: Response<Incoming>) -> Result<Bytes, ClientError> {
    response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| ClientError::Protocol(format!("the answer was cut off: {error}")))
}

/// A JSON answer as the server sent it (for `--json`, printed unchanged).
pub async fn raw_json(response: Response<Incoming>) -> Result<Box<RawValue>, ClientError> {
    let bytes = read_body(response).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|error| ClientError::Protocol(error.to_string()))?;
    RawValue::from_string(text).map_err(|error| ClientError::Protocol(error.to_string()))
}

async fn api_error(response: Response<Incoming>) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
        message: String,
        field: Option<String>,
        index: Option<usize>,
    }
    let status = response.status();
    let bytes = read_body(response).await.unwrap_or_default();
    match serde_json::from_slice::<Envelope>(&bytes) {
        Ok(envelope) => ClientError::Api {
            status,
            code: envelope.error.code,
            message: envelope.error.message,
            field: envelope.error.field,
            index: envelope.error.index,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".to_owned(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
            field: None,
            index: None,
        },
    }
}

/// An error with its causes, for people, each said once.
///
/// Some errors' messages stop short of their cause (hyper's top-level "client error (Connect)"
/// says little), while recap's own errors, like most `thiserror` types, already end with their
/// cause *and* return it as their `source`: printing every link of the chain (as anyhow's `{:#}`
/// does) would say it twice ("file: bad byte: bad byte"). So a cause is added only when the
/// text so far does not already say it. The binary prints every error through this.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Says a 404 `unknown_stream` from the server as [`ClientError::UnknownStream`], which tells a
/// command-line user how to find the streams there are; other errors pass unchanged.
pub fn name_unknown_stream(error: ClientError, stream: &StreamName) -> ClientError {
    match error {
        ClientError::Api { status, code, .. }
            if status == StatusCode::NOT_FOUND && code == "unknown_stream" =>
        {
            ClientError::UnknownStream {
                stream: stream.to_string(),
            }
        }
        other => other,
    }
}

/// A query string (`?a=1&b=x`, or nothing when there are no pairs) with every value
/// percent-encoded.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, &value);
    }
    let query = serializer.finish();
    if query.is_empty() {
        query
    } else {
        format!("?{query}")
    }
}

/// Percent-encodes a query value (stream names never need it; kinds, timestamps and weights may).
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad byte");
        // recap's errors end with their cause and also return it as their source.
        let error = ClientError::Io {
            path: PathBuf::from("f.jsonl"),
            source: io(),
        };
        assert_eq!(error_chain(&error), "f.jsonl: bad byte");
        let stopped = ClientError::ImportStopped {
            written: 1,
            total: 2,
            source: Box::new(ClientError::Output(io())),
        };
        assert_eq!(
            error_chain(&stopped),
            "the import stopped after 1 of 2 lines were written: cannot write the output: bad byte"
        );
        // An error whose message leaves its cause out gets it appended.
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Terse(#[source] std::io::Error);
        assert_eq!(
            error_chain(&Terse(io())),
            "client error (Connect): bad byte"
        );
    }
}
