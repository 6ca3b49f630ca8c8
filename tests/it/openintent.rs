//! The OpenIntent routes against a real server on 127.0.0.1:0: the shapes the `openintent`
//! client parses (event objects, `created_at`, intents, error bodies with `message`), the
//! mapping of types the client does not know to `comment`, the `event_type`/`since`/`limit`
//! filters, SSE frames and resume, and `X-API-Key`. The Python tests in `tests/python` drive
//! the same routes with the real client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

use http::Method;
use recap::server::ServerOptions;
use recap::server::auth::Keys;
use serde_json::{Value, json};

use crate::live_server::{DEADLINE, Reply, TestServer};

/// Exactly what the client's `log_event` sends.
async fn log_event(server: &TestServer, intent: &str, event_type: &str, payload: Value) -> Reply {
    let body = json!({"event_type": event_type, "actor": "agent-1", "payload": payload});
    server
        .post_json(
            &format!("/api/v1/intents/{intent}/events"),
            &body.to_string(),
        )
        .await
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`: what Python 3.10's `fromisoformat` takes.
fn assert_client_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let bytes = text.as_bytes();
    assert_eq!(text.len(), 32, "{text}");
    assert!(text.ends_with("+00:00"), "{text}");
    assert_eq!((bytes[10], bytes[19]), (b'T', b'.'), "{text}");
    assert!(text[20..26].bytes().all(|b| b.is_ascii_digit()), "{text}");
}

fn types(events: &Value) -> Vec<&str> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_come_back_in_the_client_shape() {
    let server = TestServer::start().await;
    let posted = log_event(
        &server,
        "intent-1",
        "tool_call_failed",
        json!({"tool_name": "search", "tool_id": "c-1", "arguments": {"q": "x"}, "error": "timed out"}),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    let event = posted.json();
    assert_eq!(event["id"], "intent-1:1");
    assert_eq!(event["intent_id"], "intent-1");
    assert_eq!(event["event_type"], "tool_call_failed");
    assert_eq!(event["actor"], "agent-1");
    assert_eq!(event["sequence"], 1);
    assert_eq!(event["payload"]["error"], "timed out");
    assert!(
        event["payload"].get("_openintent").is_none(),
        "the envelope stays inside recap: {event}"
    );
    assert_client_timestamp(&event["created_at"]);

    // The actor falls back to X-Agent-ID; trace ids come back.
    let reply = server
        .request(
            Method::POST,
            "/api/v1/intents/intent-1/events",
            Some("application/json"),
            r#"{"event_type": "task.completed", "payload": {"task": "t"}, "trace_id": "tr-1"}"#,
            &[("x-agent-id", "agent-2")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        (&reply.json()["actor"], &reply.json()["trace_id"]),
        (&json!("agent-2"), &json!("tr-1"))
    );

    // Newest first, as a bare array.
    let listed = server.get("/api/v1/intents/intent-1/events").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        types(&listed.json()),
        ["task.completed", "tool_call_failed"]
    );
    assert_eq!(listed.json()[1], event);

    // recap's own view: the mapping to kind and severity.
    let records = server.get("/v1/streams/intent-1/events").await.json();
    assert_eq!(records["records"][0]["kind"], "tool");
    assert_eq!(records["records"][0]["severity"], "error");
    assert_eq!(records["records"][1]["kind"], "task");

    // An intent nobody wrote to has no events (the reference server answers the same).
    assert_eq!(
        server.get("/api/v1/intents/nobody/events").await.json(),
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_the_client_does_not_know_go_out_as_comments() {
    let server = TestServer::start().await;
    let reply = log_event(&server, "mixed", "llm_chunk", json!({"chunk": "Hel"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = reply.json();
    assert_eq!(event["event_type"], "comment");
    assert_eq!(event["payload"]["original_event_type"], "llm_chunk");
    assert_eq!(event["payload"]["payload"], json!({"chunk": "Hel"}));

    let native = server
        .post_json(
            "/v1/streams/mixed/events",
            r#"{"kind": "retry", "severity": "warn", "message": "retry 2/5"}"#,
        )
        .await;
    assert_eq!(native.status, 200, "{}", native.text());
    let listed = server.get("/api/v1/intents/mixed/events").await.json();
    assert_eq!(types(&listed), ["comment", "comment"]);
    assert_eq!(
        listed[0]["payload"],
        json!({"kind": "retry", "severity": "warning", "message": "retry 2/5", "repeat_count": 1})
    );
    assert_eq!(listed[0]["actor"], Value::Null);
    assert_client_timestamp(&listed[0]["created_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_type_since_and_limit_filter() {
    let server = TestServer::start().await;
    for (event_type, n) in [
        ("tool_call_failed", 1),
        ("comment", 2),
        ("tool_call_failed", 3),
        ("task.progress", 4),
        ("tool_call_failed", 5),
    ] {
        let reply = log_event(&server, "f", event_type, json!({"n": n})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    server
        .post_json(
            "/v1/streams/f/events",
            r#"{"kind": "tool", "message": "native"}"#,
        )
        .await;
    let ns = |path: &str| {
        let server = &server;
        let path = path.to_owned();
        async move {
            let reply = server.get(&path).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|event| event["payload"]["n"].as_i64().unwrap_or(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ns("/api/v1/intents/f/events?event_type=tool_call_failed").await,
        [5, 3, 1]
    );
    // `comment` is also what natively posted records are shown as.
    assert_eq!(
        ns("/api/v1/intents/f/events?event_type=comment").await,
        [0, 2]
    );
    assert_eq!(ns("/api/v1/intents/f/events?limit=2").await, [0, 5]);
    assert_eq!(
        ns("/api/v1/intents/f/events?event_type=tool_call_failed&limit=2&offset=1").await,
        [3, 1]
    );

    let all = server.get("/api/v1/intents/f/events").await.json();
    let third = all[3]["created_at"].as_str().unwrap().to_owned();
    let escaped = third.replace('+', "%2B");
    assert_eq!(
        ns(&format!("/api/v1/intents/f/events?since={escaped}")).await,
        [0, 5, 4, 3]
    );
    // Naive is UTC, as Python's isoformat() of a naive datetime sends it.
    let naive = third.trim_end_matches("+00:00");
    assert_eq!(
        ns(&format!(
            "/api/v1/intents/f/events?since={naive}&event_type=tool_call_failed"
        ))
        .await,
        [5, 3]
    );

    let bad = server
        .get("/api/v1/intents/f/events?event_type=llm_chunk")
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["errors"][0]["field"], "event_type");
    assert_eq!(
        server.get("/api/v1/intents/f/events?limit=0").await.status,
        400
    );
    assert_eq!(
        server
            .get("/api/v1/intents/f/events?since=soon")
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_are_created_and_read_back() {
    let server = TestServer::start().await;
    let created = server
        .request(
            Method::POST,
            "/api/v1/intents",
            Some("application/json"),
            r#"{"title": "ship 1.0", "description": "by Friday", "constraints": {}, "state": {"phase": 1}}"#,
            &[("x-agent-id", "planner")],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let intent = created.json();
    let id = intent["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            &intent["title"],
            &intent["status"],
            &intent["created_by"],
            &intent["version"]
        ),
        (
            &json!("ship 1.0"),
            &json!("active"),
            &json!("planner"),
            &json!(1)
        )
    );
    assert_client_timestamp(&intent["created_at"]);

    let fetched = server.get(&format!("/api/v1/intents/{id}")).await;
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.json()["state"], json!({"phase": 1}));
    assert_eq!(fetched.json()["description"], "by Friday");
    let events = server
        .get(&format!("/api/v1/intents/{id}/events"))
        .await
        .json();
    assert_eq!(types(&events), ["intent_created"]);

    let missing = server
        .post_json("/api/v1/intents", r#"{"description": "no title"}"#)
        .await;
    assert_eq!(missing.status, 400);
    assert!(
        missing.json()["message"]
            .as_str()
            .unwrap()
            .contains("title")
    );
    let unknown = server.get("/api/v1/intents/never-written").await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_message_and_bad_ids_say_what_to_do() {
    let server = TestServer::start().await;
    let bad_id = log_event(&server, "no%20spaces", "comment", json!({})).await;
    assert_eq!(bad_id.status, 400);
    let body = bad_id.json();
    assert!(
        body["message"].as_str().unwrap().contains("intent id"),
        "{body}"
    );
    assert_eq!(body["error"]["code"], "invalid_intent_id");
    assert_eq!(body["errors"][0]["field"], "intent_id");

    let no_type = server
        .post_json(
            "/api/v1/intents/i/events",
            r#"{"actor": "a", "payload": {}}"#,
        )
        .await;
    assert_eq!(no_type.status, 400);
    assert_eq!(no_type.json()["errors"][0]["field"], "event_type");
    let bad_payload = server
        .post_json(
            "/api/v1/intents/i/events",
            r#"{"event_type": "comment", "payload": [1]}"#,
        )
        .await;
    assert_eq!(bad_payload.status, 400);
    assert_eq!(bad_payload.json()["errors"][0]["field"], "payload");

    // Routes the compatibility layer does not serve still answer JSON with a message (the
    // client raises NotFoundError on 404 only when the body parses).
    let unknown = server.get("/api/v1/portfolios/p/subscribe").await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["message"]
            .as_str()
            .unwrap()
            .contains("/api/v1/intents")
    );
    // recap's own routes keep their error shape.
    let native = server.get("/v1/streams/no%20spaces/events").await;
    native.assert_error(400, "invalid_stream_name", Some("stream"));
    assert!(native.json().get("message").is_none());
}

const KEYS: &str = r#"
[[keys]]
name = "team a"
key = "team-a-secret-0123456789"
scopes = ["read", "write"]
prefix = "team-a."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_is_required_when_keys_are_configured() {
    let options = ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let event = r#"{"event_type": "comment", "actor": "a", "payload": {}}"#;
    let post =
        |path: &'static str, key: Option<&'static str>| server.post_json_as(path, event, key);
    for reply in [
        post("/api/v1/intents/team-a.i/events", None).await,
        post(
            "/api/v1/intents/team-a.i/events",
            Some("wrong-key-0123456789"),
        )
        .await,
        server.get("/api/v1/intents/team-a.i/subscribe").await,
    ] {
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("API key")
        );
    }
    let ok = post(
        "/api/v1/intents/team-a.i/events",
        Some("team-a-secret-0123456789"),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let outside = post(
        "/api/v1/intents/team-b.i/events",
        Some("team-a-secret-0123456789"),
    )
    .await;
    assert_eq!(outside.status, 403);
    assert!(
        outside.json()["message"]
            .as_str()
            .unwrap()
            .contains("team-a.")
    );

    // A confined key creates intents inside its prefix, so it can use them.
    let created = server
        .request(
            Method::POST,
            "/api/v1/intents",
            Some("application/json"),
            r#"{"title": "t"}"#,
            &[("x-api-key", "team-a-secret-0123456789")],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(
        created.json()["id"]
            .as_str()
            .unwrap()
            .starts_with("team-a.")
    );
    assert_eq!(created.json()["created_by"], "team a");
}

/// Reads an SSE response on a raw socket until `frames` frames with `data:` have arrived,
/// telling `connected` once the feed is set up (its first comment).
fn read_sse(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    frames: usize,
    connected: mpsc::Sender<()>,
) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let resume = last_event_id
        .map(|id| format!("last-event-id: {id}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n{resume}\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    let mut told = false;
    while seen.matches("\ndata: ").count() < frames {
        let read = tcp.read(&mut buffer).unwrap();
        assert!(read > 0, "the feed closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        if !told && seen.contains(": subscribed") {
            connected.send(()).unwrap();
            told = true;
        }
    }
    seen
}

/// `(id, event, data)` of each frame with data, in order.
fn frames(text: &str) -> Vec<(u64, String, Value)> {
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    body.split("\n\n")
        .filter_map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::to_owned)
            };
            let data = field("data: ")?;
            Some((
                field("id: ")?.parse().unwrap(),
                field("event: ")?,
                serde_json::from_str(&data).unwrap(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_frames_are_events_and_resume_after_last_event_id() {
    let server = TestServer::start().await;
    log_event(&server, "live", "task.started", json!({"n": 1})).await;
    log_event(&server, "live", "llm_chunk", json!({"n": 2})).await;

    // Resume after revision 1: the second event is replayed, then a third arrives live, then a
    // repeat of it (the same record again, with its new count).
    let (connected, ready) = mpsc::channel();
    let reader = tokio::task::spawn_blocking({
        let addr = server.addr;
        move || {
            read_sse(
                addr,
                "/api/v1/intents/live/subscribe",
                Some(1),
                3,
                connected,
            )
        }
    });
    tokio::task::spawn_blocking(move || ready.recv_timeout(DEADLINE).unwrap())
        .await
        .unwrap();
    let failure = json!({"tool_name": "t", "arguments": {}, "error": "e", "n": 3});
    let live = log_event(&server, "live", "tool_call_failed", failure.clone())
        .await
        .json();
    let repeat = log_event(&server, "live", "tool_call_failed", failure)
        .await
        .json();
    assert_eq!(
        (&repeat["id"], &repeat["repeat_count"]),
        (&live["id"], &json!(2))
    );
    let text = reader.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    let got = frames(&text);
    assert_eq!(
        got.iter()
            .map(|(id, event, _)| (*id, event.as_str()))
            .collect::<Vec<_>>(),
        [
            (2, "comment"),
            (3, "tool_call_failed"),
            (4, "tool_call_failed")
        ]
    );
    assert_eq!(got[0].2["payload"]["original_event_type"], "llm_chunk");
    assert_eq!(got[1].2, live, "data is the event object the POST answered");
    assert_eq!(
        got[2].2, repeat,
        "a repeat is the record again, with its count"
    );

    // The other path the reference server uses, from the start of the stream: every revision
    // so far (the repeat too), replayed in one go.
    let (connected, _ready) = mpsc::channel();
    let text = tokio::task::spawn_blocking({
        let addr = server.addr;
        move || {
            read_sse(
                addr,
                "/api/v1/subscribe/intents/live",
                Some(0),
                4,
                connected,
            )
        }
    })
    .await
    .unwrap();
    let ids: Vec<u64> = frames(&text).iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
}
