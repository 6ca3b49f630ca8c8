//! Resource subscriptions as raw JSON-RPC: `subscriptions/listen` on the stateless `/mcp`
//! route over a real socket (the answer is an SSE stream: the acknowledgment, a first update
//! once the stream's feed is open, one update per change, and the listen request's result when
//! the server shuts down, so the server drains); `resources/subscribe` refused there; and
//! `recap mcp` keeping a `resources/subscribe` across a restart of the server it follows. The
//! official Python SDK drives subscriptions over both transports in
//! tests/python/test_mcp_subscriptions.py.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use recap::client::tail::SseParser;
use serde_json::{Value, json};

use crate::live_server::{DEADLINE, TestServer};

const URI: &str = "recap://streams/live/context";

/// The JSON-RPC messages of an SSE answer, one at a time.
struct Messages {
    body: Incoming,
    parser: SseParser,
    ready: VecDeque<Value>,
}

impl Messages {
    /// The next message; `None` once the answer has ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(message);
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("a frame before the deadline")?
                .expect("the answer does not break");
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8(data.to_vec()).expect("UTF-8 frames");
                for event in self.parser.push(&text) {
                    if !event.data.is_empty() {
                        self.ready
                            .push_back(serde_json::from_str(&event.data).expect("JSON-RPC data"));
                    }
                }
            }
        }
    }
}

/// Opens a `subscriptions/listen` request for `uris` (2026-07-28, no session).
async fn listen(server: &TestServer, uris: &[&str]) -> Messages {
    let body = json!({
        "jsonrpc": "2.0",
        "id": "listen-1",
        "method": "subscriptions/listen",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "it", "version": "0"},
            },
            "notifications": {"resourceSubscriptions": uris},
        },
    });
    let request = Request::post(format!("{}/mcp", server.url()))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let http = HyperClient::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(DEADLINE, http.request(request))
        .await
        .expect("an answer before the deadline")
        .expect("the server answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Messages {
        body: response.into_body(),
        parser: SseParser::default(),
        ready: VecDeque::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_request_streams_updates_until_the_server_shuts_down() {
    let server = TestServer::start().await;
    let mut messages = listen(&server, &[URI, "file:///etc/passwd"]).await;

    let ack = messages.next().await.expect("the acknowledgment");
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"resourceSubscriptions": [URI]}),
        "only context resources are honoured: {ack}"
    );
    // The first update: the feed is open.
    let first = messages.next().await.expect("the first update");
    assert_eq!(
        first["method"], "notifications/resources/updated",
        "{first}"
    );
    assert_eq!(first["params"]["uri"], URI);
    assert_eq!(
        first["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );
    assert_eq!(
        server
            .get("/metrics")
            .await
            .text()
            .lines()
            .find(|line| line.starts_with("recap_mcp_resource_feeds ")),
        Some("recap_mcp_resource_feeds 1")
    );

    let posted = server
        .post_json(
            "/v1/streams/live/events",
            r#"{"kind": "tool", "message": "ran"}"#,
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.text());
    let update = messages.next().await.expect("an update for the change");
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], URI);

    // Shutdown ends the subscription with the listen request's result, and the answer with
    // it: the server drains instead of waiting for the client.
    let shutdown = tokio::spawn(server.shutdown());
    let result = messages.next().await.expect("the listen request's result");
    assert_eq!(result["id"], "listen-1", "{result}");
    assert_eq!(
        result["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1",
        "{result}"
    );
    assert!(messages.next().await.is_none(), "the answer ends");
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("shutdown before the deadline")
        .expect("the shutdown task does not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_resources_subscribe_is_refused_on_the_stateless_route() {
    let server = TestServer::start().await;
    let version = "2025-06-18";
    let headers = [
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", version),
    ];
    let rpc = |method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    };
    let init = server
        .request(
            http::Method::POST,
            "/mcp",
            Some("application/json"),
            rpc(
                "initialize",
                json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}),
            ),
            &headers,
        )
        .await
        .json();
    let resources = &init["result"]["capabilities"]["resources"];
    assert!(resources.is_object(), "{init}");
    assert!(resources.get("subscribe").is_none(), "{init}");

    let refused = server
        .request(
            http::Method::POST,
            "/mcp",
            Some("application/json"),
            rpc("resources/subscribe", json!({"uri": URI})),
            &headers,
        )
        .await
        .json();
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("stateless"), "{refused}");
    assert!(message.contains("subscriptions/listen"), "{refused}");
}

/// `recap mcp --server URL` as a child process, spoken to one JSON line at a time; killed (by
/// its own handle) when dropped.
struct StdioServer {
    child: Child,
    stdin: ChildStdin,
    /// Each line it writes, parsed, from a reader thread.
    lines: mpsc::Receiver<Value>,
}

impl StdioServer {
    fn start(url: &str) -> StdioServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(["mcp", "--server", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        StdioServer {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, message: Value) {
        writeln!(self.stdin, "{message}").unwrap();
    }

    /// The next message it writes.
    fn next(&self) -> Value {
        tokio::task::block_in_place(|| self.lines.recv_timeout(DEADLINE))
            .expect("a message before the deadline")
    }
}

impl Drop for StdioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recap_mcp_keeps_a_subscription_across_a_server_restart() {
    let server = TestServer::start().await;
    let mut stdio = StdioServer::start(&server.url());
    let version = "2025-06-18";
    stdio.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}}));
    let init = stdio.next();
    assert_eq!(
        init["result"]["capabilities"]["resources"]["subscribe"], true,
        "{init}"
    );
    stdio.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    stdio.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": URI}}),
    );
    let subscribed = stdio.next();
    assert_eq!(subscribed["id"], 2, "{subscribed}");
    assert!(subscribed.get("error").is_none(), "{subscribed}");

    let event = r#"{"kind": "tool", "message": "ran"}"#;
    assert_eq!(
        server
            .post_json("/v1/streams/live/events", event)
            .await
            .status,
        StatusCode::OK
    );
    let update = stdio.next();
    assert_eq!(
        update["method"], "notifications/resources/updated",
        "{update}"
    );
    assert_eq!(update["params"]["uri"], URI);

    // The server restarts: `recap mcp`'s feed ends, and it reopens it from the last revision
    // it saw, so the next change is reported too (and nothing before it).
    let server = server.restart().await;
    assert_eq!(
        server
            .post_json("/v1/streams/live/events", event)
            .await
            .status,
        StatusCode::OK
    );
    let update = stdio.next();
    assert_eq!(
        update["method"], "notifications/resources/updated",
        "{update}"
    );
    assert_eq!(update["params"]["uri"], URI);
    let page = server.get("/v1/streams/live/events").await.json();
    assert_eq!(page["records"][0]["repeat_count"], 2, "{page}");
}
