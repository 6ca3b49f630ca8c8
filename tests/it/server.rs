//! The HTTP API against a real server on 127.0.0.1:0: the agent's round trip, every error
//! path, SSE resume under concurrent writers, auth, import/export of the shared traces, and
//! graceful shutdown.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use recap::client::{export, import, tail};
use recap::event::{Record, StreamName};
use recap::server::ServerOptions;
use recap::server::auth::Keys;
use recap::store::{RecordQuery, Store, StoreOptions};
use recap::tokens::Encoding;
use serde_json::Value;

use crate::live_server::{DEADLINE, TestServer};
use crate::support::shared_traces;

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_round_trip() {
    let server = TestServer::start().await;

    // First turn: no history yet, an empty valid window rather than a 404.
    let first = server.get("/v1/streams/agent-1/context?budget=500").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-recap-tokens"), Some("0"));
    assert_eq!(first.text(), "");

    let events = r#"[
        {"kind": "plan", "message": "find the flaky test", "ts": "2024-05-01T10:31:40Z"},
        {"kind": "tool", "message": "search(\"redb durability\") -> 12 results", "ts": "2024-05-01T10:31:41Z"},
        {"kind": "tool", "severity": "ERR", "message": "search timed out after 30s", "ts": "2024-05-01T10:31:44Z"},
        {"kind": "tool", "severity": "error", "message": "search timed out after 30s", "ts": "2024-05-01T10:31:45Z"}
    ]"#;
    let written = server.post_json("/v1/streams/agent-1/events", events).await;
    assert_eq!(written.status, 200, "{}", written.text());
    let body = written.json();
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[3]["collapsed"], true);
    assert_eq!(records[3]["seq"], records[2]["seq"]);
    assert_eq!(records[3]["repeat_count"], 2);
    let write_revision = body["revision"].as_u64().unwrap();
    assert_eq!(
        written.header("x-recap-revision"),
        Some(write_revision.to_string().as_str())
    );

    let note = server
        .post_json(
            "/v1/streams/agent-1/notes",
            r#"{"text": "the user wants a patch, not a report"}"#,
        )
        .await;
    assert_eq!(note.status, 201, "{}", note.text());
    let note_id = note.json()["id"].as_u64().unwrap();

    let context = server.get("/v1/streams/agent-1/context?budget=300").await;
    assert_eq!(context.status, 200);
    let text = context.text();
    let tokens: u32 = context.header("x-recap-tokens").unwrap().parse().unwrap();
    assert_eq!(
        tokens,
        Encoding::Cl100kBase.count(&text),
        "the header is the true count"
    );
    assert!(tokens <= 300);
    assert!(
        text.starts_with("## Notes\n- the user wants a patch, not a report\n"),
        "{text}"
    );
    // A run shows the time of its latest event.
    assert!(
        text.contains("10:31:45 [tool] ERROR: search timed out after 30s x2"),
        "{text}"
    );
    assert!(
        text.contains("10:31:41 [tool]: search(\"redb durability\") -> 12 results"),
        "{text}"
    );
    let read_revision: u64 = context.header("x-recap-revision").unwrap().parse().unwrap();
    assert!(
        read_revision > write_revision,
        "read-your-writes: the note's revision is seen"
    );

    // The JSON form carries the same text, the count and the receipt; model= picks o200k_base.
    let json = server
        .get("/v1/streams/agent-1/context?budget=300&format=json&model=gpt-4o")
        .await
        .json();
    assert_eq!(json["encoding"], "o200k_base");
    let json_text = json["text"].as_str().unwrap();
    assert_eq!(
        json["tokens"].as_u64().unwrap(),
        u64::from(Encoding::O200kBase.count(json_text))
    );
    // Three event records and the `note` record logged for the audit trail.
    assert_eq!(json["items"].as_array().unwrap().len(), 4);

    // Filters apply: only errors.
    let errors = server
        .get("/v1/streams/agent-1/context?min_severity=error")
        .await
        .text();
    assert!(
        errors.contains("ERROR") && !errors.contains("12 results"),
        "{errors}"
    );

    // History with a cursor.
    let page = server
        .get("/v1/streams/agent-1/events?limit=2")
        .await
        .json();
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], 2);
    let rest = server
        .get("/v1/streams/agent-1/events?after=2")
        .await
        .json();
    assert_eq!(rest["records"][0]["seq"], 3);
    assert_eq!(rest["records"][0]["repeat_count"], 2);
    assert_eq!(rest["next"], Value::Null);

    // Notes list and delete.
    let notes = server.get("/v1/streams/agent-1/notes").await.json();
    assert_eq!(
        notes["notes"][0]["text"],
        "the user wants a patch, not a report"
    );
    let deleted = server
        .request(
            Method::DELETE,
            &format!("/v1/streams/agent-1/notes/{note_id}"),
            None,
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    let again = server
        .request(
            Method::DELETE,
            &format!("/v1/streams/agent-1/notes/{note_id}"),
            None,
            Bytes::new(),
            &[],
        )
        .await;
    again.assert_error(404, "unknown_note", None);
    // Forgotten: neither the note nor its audit record is in the window any more.
    assert!(
        !server
            .get("/v1/streams/agent-1/context")
            .await
            .text()
            .contains("the user wants a patch")
    );

    // Stream stats, list, delete.
    let stats = server.get("/v1/streams/agent-1").await.json();
    assert_eq!(
        (stats["records"].as_u64(), stats["events"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(
        server.get("/v1/streams").await.json()["streams"][0]["name"],
        "agent-1"
    );
    let gone = server
        .request(
            Method::DELETE,
            "/v1/streams/agent-1",
            None,
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(gone.status, 204);
    server
        .get("/v1/streams/agent-1")
        .await
        .assert_error(404, "unknown_stream", None);
    server
        .get("/v1/streams/agent-1/events")
        .await
        .assert_error(404, "unknown_stream", None);

    assert_eq!(server.get("/healthz").await.status, 200);
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains("recap_ingest_events_total 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recap_collapsed_repeats_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recap_context_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recap_store_commit_seconds_count"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batches_are_accepted() {
    let server = TestServer::start().await;
    let body =
        "{\"kind\": \"tool\", \"message\": \"a\"}\n\n{\"kind\": \"llm\", \"message\": \"b\"}\n";
    let reply = server
        .request(
            Method::POST,
            "/v1/streams/n/events",
            Some("application/x-ndjson"),
            body,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["records"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_has_its_status_and_code() {
    let server = TestServer::start().await;
    let events = "/v1/streams/s/events";

    server
        .post_json(events, r#"{"kind": "tool", "message": "#)
        .await
        .assert_error(400, "invalid_json", None);
    server
        .request(
            Method::POST,
            events,
            Some("application/json"),
            Bytes::from_static(b"{\"kind\": \"tool\", \"message\": \"\xff\xfe\"}"),
            &[],
        )
        .await
        .assert_error(400, "invalid_utf8", None);
    server
        .post_json(events, r#"{"kind": "tool", "message": 5}"#)
        .await
        .assert_error(400, "invalid_field", Some("message"));
    server
        .post_json(
            events,
            r#"{"kind": "tool", "message": "m", "sevrity": "info"}"#,
        )
        .await
        .assert_error(400, "unknown_field", Some("sevrity"));
    server
        .post_json(events, r#"{"kind": "tool", "message": "m", "kind": "llm"}"#)
        .await
        .assert_error(400, "duplicate_field", Some("kind"));
    let batch =
        r#"[{"kind": "tool", "message": "ok"}, {"kind": "tool", "message": "m", "extra": 1}]"#;
    let reply = server.post_json(events, batch).await;
    reply.assert_error(400, "unknown_field", Some("extra"));
    assert_eq!(reply.json()["error"]["index"], 1);
    server
        .post_json(events, r#"{"message": "m"}"#)
        .await
        .assert_error(400, "missing_field", Some("kind"));

    // One bad event in a batch: the whole batch is refused, naming the index and the field.
    let batch = r#"[{"kind": "tool", "message": "ok"}, {"kind": "tool", "message": "m", "severity": "loud"}]"#;
    let reply = server.post_json(events, batch).await;
    reply.assert_error(400, "unknown_severity", Some("severity"));
    let error = &reply.json()["error"];
    assert_eq!(error["index"], 1);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("event 1") && message.contains("debug, info, warning, error, critical"),
        "{message}"
    );
    server
        .get(events)
        .await
        .assert_error(404, "unknown_stream", None);

    server
        .post_json(
            "/v1/streams/bad%20name!/events",
            r#"{"kind": "tool", "message": "m"}"#,
        )
        .await
        .assert_error(400, "invalid_stream_name", Some("stream"));
    server
        .get(&format!("/v1/streams/{}/context", "x".repeat(129)))
        .await
        .assert_error(400, "invalid_stream_name", Some("stream"));
    server
        .request(Method::POST, events, Some("text/plain"), "{}", &[])
        .await
        .assert_error(415, "unsupported_media_type", None);
    server
        .get("/v2/anything")
        .await
        .assert_error(404, "not_found", None);
    let wrong_method = server
        .request(Method::PUT, events, None, Bytes::new(), &[])
        .await;
    wrong_method.assert_error(405, "method_not_allowed", None);
    assert_eq!(wrong_method.header("allow"), Some("GET, POST"));
    // HEAD is GET without the body.
    let head = server
        .request(Method::HEAD, "/healthz", None, Bytes::new(), &[])
        .await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    assert_eq!(head.header("content-type"), Some("application/json"));
    server
        .get("/v1/streams/s/context?budjet=10")
        .await
        .assert_error(400, "invalid_parameter", Some("budjet"));
    server
        .get("/v1/streams/s/context?encoding=p50k")
        .await
        .assert_error(400, "invalid_parameter", Some("encoding"));
    server
        .get("/v1/streams/s/context?weights=kind.tool=-1")
        .await
        .assert_error(400, "invalid_parameter", Some("weights"));
    server
        .get("/v1/streams/s/events?min_severity=loud")
        .await
        .assert_error(400, "invalid_parameter", Some("min_severity"));
    // Notes and retention name their fields the same way.
    let notes = "/v1/streams/s/notes";
    server
        .post_json(notes, r#"{"txt": "x"}"#)
        .await
        .assert_error(400, "unknown_field", Some("txt"));
    server
        .post_json(notes, "{}")
        .await
        .assert_error(400, "missing_field", Some("text"));
    server
        .post_json(notes, r#"{"text": 5}"#)
        .await
        .assert_error(400, "invalid_field", Some("text"));
    server
        .post_json(notes, r#"[{"text": "x"}]"#)
        .await
        .assert_error(400, "invalid_json", None);
    server
        .post_json(notes, r#"{"text": "x"} trailing"#)
        .await
        .assert_error(400, "invalid_json", None);
    // A note that has already expired would never be shown: refused, not silently dropped.
    let expired = server
        .post_json(
            notes,
            r#"{"text": "x", "expires_at": "2020-01-01T00:00:00Z"}"#,
        )
        .await;
    expired.assert_error(400, "expired_note", Some("expires_at"));
    assert!(
        expired.text().contains("is already past"),
        "{}",
        expired.text()
    );
    let put = |body: &'static [u8]| {
        server.request(
            Method::PUT,
            "/v1/streams/s/retention",
            Some("application/json"),
            Bytes::from_static(body),
            &[],
        )
    };
    put(br#"{"max_records": "many"}"#).await.assert_error(
        400,
        "invalid_field",
        Some("max_records"),
    );
    put(br#"{"max_recods": 5}"#)
        .await
        .assert_error(400, "unknown_field", Some("max_recods"));
    put(b"{\"max_records\": 5, \"x\": \"\xff\"}")
        .await
        .assert_error(400, "invalid_utf8", None);

    // A time days ahead of the server's clock is a bug in the client, not an event.
    let batch = r#"[{"kind": "tool", "message": "ok"}, {"kind": "tool", "message": "m", "ts": "9999-01-01T00:00:00Z"}]"#;
    let reply = server.post_json(events, batch).await;
    reply.assert_error(400, "invalid_field", Some("ts"));
    assert_eq!(reply.json()["error"]["index"], 1);
    assert!(
        reply.text().contains("more than 24 hours after"),
        "{}",
        reply.text()
    );
    // Which of two values was meant would be a guess.
    server
        .get("/v1/streams/s/context?budget=100&budget=5000")
        .await
        .assert_error(400, "invalid_parameter", Some("budget"));
}

/// Sends raw bytes on a fresh connection and returns what comes back until the server closes.
fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(head.as_bytes()).unwrap();
    // The server may close before reading it all: that is the point.
    let _ = tcp.write_all(body);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_body_gets_413_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let big = vec![b' '; 2 * 1024 * 1024];

    let declared = format!(
        "POST /v1/streams/s/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let body = big.clone();
    let answer = tokio::task::spawn_blocking(move || raw_exchange(addr, &declared, &body))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");

    // Chunked, so the size is only known while reading: cut off at the cap.
    let chunked_head = "POST /v1/streams/s/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut chunked = Vec::new();
    for piece in big.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = tokio::task::spawn_blocking(move || raw_exchange(addr, chunked_head, &chunked))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let after = server
        .post_json(
            "/v1/streams/s/events",
            r#"{"kind": "tool", "message": "still here"}"#,
        )
        .await;
    assert_eq!(after.status, 200);
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_sees_every_revision_once_in_order_under_concurrent_writers() {
    let server = TestServer::start().await;
    let client = server.client(None);
    let name = stream("live");
    for i in 0..10 {
        let reply = server
            .post_json(
                "/v1/streams/live/events",
                &format!(r#"{{"kind": "tool", "message": "before {i}"}}"#),
            )
            .await;
        assert_eq!(reply.status, 200);
    }

    const WRITERS: usize = 4;
    const POSTS: usize = 40;
    let url = server.url();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = recap::client::Client::new(&url, None).unwrap();
                let name = StreamName::new("live").unwrap();
                for post in 0..POSTS {
                    // Every third post repeats the previous message: repeats take revisions too.
                    let message =
                        format!("writer {writer} post {}", post - usize::from(post % 3 == 2));
                    let event =
                        recap::event::Event::new("tool", recap::event::Severity::Info, message)
                            .unwrap();
                    recap::client::commands::post(&client, &name, &event)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();

    // Resume from revision 5 while the writers are busy.
    let mut subscription = tail::subscribe(&client, &name, Some(5)).await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let final_revision = server.get("/v1/streams/live").await.json()["revision"]
        .as_u64()
        .unwrap();
    assert_eq!(final_revision, 10 + (WRITERS * POSTS) as u64);

    let mut seen = Vec::new();
    let mut kinds = BTreeMap::new();
    while seen.last().copied().unwrap_or(5) < final_revision {
        let event = tokio::time::timeout(DEADLINE, subscription.next())
            .await
            .expect("the feed delivers before the deadline")
            .unwrap()
            .expect("the feed stays open");
        let id: u64 = event.id.as_deref().unwrap().parse().unwrap();
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["revision"].as_u64(), Some(id), "{event:?}");
        *kinds.entry(event.event).or_insert(0) += 1;
        seen.push(id);
    }
    let expected: Vec<u64> = (6..=final_revision).collect();
    assert_eq!(
        seen, expected,
        "every revision after 5 exactly once, in order"
    );
    assert!(kinds.get("repeat").copied().unwrap_or(0) > 0, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_keepalives_and_notes_while_idle() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(50),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let answer = tokio::task::spawn_blocking({
        let addr = server.addr;
        move || {
            let mut tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            tcp.write_all(b"GET /v1/streams/quiet/subscribe HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut seen = String::new();
            let mut buffer = [0u8; 4096];
            while !seen.contains(": keepalive\n\n") {
                let read = tcp.read(&mut buffer).unwrap();
                assert!(read > 0, "the feed closed: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
            seen
        }
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("content-type: text/event-stream"),
        "{answer}"
    );

    // Notes are changes too.
    let client = server.client(None);
    let name = stream("quiet");
    let mut subscription = tail::subscribe(&client, &name, None).await.unwrap();
    server
        .post_json("/v1/streams/quiet/notes", r#"{"text": "remember me"}"#)
        .await;
    let event = tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.event, "note");
    assert_eq!(tail::describe(&event).unwrap(), "note 1: remember me");
}

const KEYS: &str = r#"
[[keys]]
name = "team a"
key = "team-a-secret-0123456789"
scopes = ["read", "write"]
prefix = "team-a."

[[keys]]
name = "reader"
key = "reader-secret-0123456789"
scopes = ["read"]

[[keys]]
name = "ops"
key = "admin-secret-0123456789"
scopes = ["admin"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_confine_callers_to_their_scope_and_prefix() {
    let options = ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let event = r#"{"kind": "tool", "message": "m"}"#;
    let post =
        |path: &'static str, key: Option<&'static str>| server.post_json_as(path, event, key);

    let no_key = post("/v1/streams/team-a.x/events", None).await;
    no_key.assert_error(401, "unauthorized", None);
    assert_eq!(
        no_key.header("www-authenticate"),
        Some("Bearer realm=\"recap\"")
    );
    post("/v1/streams/team-a.x/events", Some("wrong-key-0123456789"))
        .await
        .assert_error(401, "unauthorized", None);
    assert_eq!(
        post(
            "/v1/streams/team-a.x/events",
            Some("team-a-secret-0123456789")
        )
        .await
        .status,
        200
    );
    post(
        "/v1/streams/team-b.x/events",
        Some("team-a-secret-0123456789"),
    )
    .await
    .assert_error(403, "forbidden", None);
    let bearer = [("authorization", "Bearer team-a-secret-0123456789")];
    server
        .request(
            Method::GET,
            "/v1/streams/team-b.x/context",
            None,
            Bytes::new(),
            &bearer,
        )
        .await
        .assert_error(403, "forbidden", None);
    let own = server
        .request(
            Method::GET,
            "/v1/streams/team-a.x/context",
            None,
            Bytes::new(),
            &bearer,
        )
        .await;
    assert_eq!(own.status, 200);

    // A read-only key reads anything and writes nothing.
    post(
        "/v1/streams/team-a.x/events",
        Some("reader-secret-0123456789"),
    )
    .await
    .assert_error(403, "forbidden", None);
    let reader = [("x-api-key", "reader-secret-0123456789")];
    assert_eq!(
        server
            .request(
                Method::GET,
                "/v1/streams/team-a.x/events",
                None,
                Bytes::new(),
                &reader
            )
            .await
            .status,
        200
    );

    // Deleting a stream needs admin; the listing only shows what the key may see.
    server
        .request(
            Method::DELETE,
            "/v1/streams/team-a.x",
            None,
            Bytes::new(),
            &bearer,
        )
        .await
        .assert_error(403, "forbidden", None);
    post(
        "/v1/streams/team-b.y/events",
        Some("admin-secret-0123456789"),
    )
    .await;
    let listed = server
        .request(Method::GET, "/v1/streams", None, Bytes::new(), &bearer)
        .await
        .json();
    let names: Vec<&str> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a.x"]);

    // Liveness stays open; metrics need a key.
    assert_eq!(server.get("/healthz").await.status, 200);
    server
        .get("/metrics")
        .await
        .assert_error(401, "unauthorized", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_is_served_without_a_key_and_its_data_is_not() {
    let options = ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    for (path, content_type) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/streams/team-a.x", "text/html; charset=utf-8"),
        ("/ui/assets/stream.js", "text/javascript; charset=utf-8"),
        ("/ui/assets/ui.css", "text/css; charset=utf-8"),
        ("/ui/assets/icon.svg", "image/svg+xml"),
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        let policy = reply.header("content-security-policy").unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
    }
    // The page tells its script to ask for a key; the data it would show still needs one.
    assert!(
        server
            .get("/ui/streams/team-a.x")
            .await
            .text()
            .contains("data-auth=\"keys\"")
    );
    server
        .get("/v1/streams/team-a.x/events")
        .await
        .assert_error(401, "unauthorized", None);
    server
        .get("/ui/assets/nope.js")
        .await
        .assert_error(404, "not_found", None);
    server.get("/ui/streams/bad%20name").await.assert_error(
        400,
        "invalid_stream_name",
        Some("stream"),
    );
    let head = server
        .request(Method::HEAD, "/ui", None, Bytes::new(), &[])
        .await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    let metrics = server
        .request(
            Method::GET,
            "/metrics",
            None,
            Bytes::new(),
            &[("x-api-key", "admin-secret-0123456789")],
        )
        .await
        .text();
    assert!(metrics.contains("route=\"/ui/assets/{file}\""), "{metrics}");

    let open = TestServer::start().await;
    assert!(open.get("/ui").await.text().contains("data-auth=\"open\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_server_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = recap::server::run(
        listener,
        store,
        ServerOptions::default(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("without API keys"), "{error}");
}

/// The fields a trace line and a record share, for comparing what went in with what came out.
fn fingerprint(
    kind: &Value,
    severity: &Value,
    actor: &Value,
    message: &Value,
    source: &Value,
) -> String {
    serde_json::json!([kind, severity, actor, message, source]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_export_round_trips_the_shared_traces() {
    let server = TestServer::start().await;
    let client = server.client(None);
    let traces = [
        "swe-agent__gpt4-pydicom__pydicom-1458.jsonl",
        "swe-agent__ctf-web-i_got_id.jsonl",
        "chatdev__WaterBreakv2_20231026175200.jsonl",
    ];
    for (index, file) in traces.iter().enumerate() {
        let path = shared_traces().join(file);
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();

        // Trace → stream (repeats collapse) → export.
        let name = stream(&format!("trace-{index}"));
        let summary = import::import(&client, &name, &path, import::ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(summary.lines, lines.len());
        assert!(!summary.records_format);
        let mut exported = Vec::new();
        let count = export::export(&client, &name, &mut exported)
            .await
            .unwrap()
            .records;
        let records: Vec<Record> = String::from_utf8(exported.clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(count, records.len());
        assert_eq!(count, summary.new_records);

        // Every line is accounted for: expanding each record by its repeat count gives back the
        // trace's events (kind, severity, actor, message, source), and each record's first and
        // last times are times of its own lines.
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in &lines {
            let key = fingerprint(
                &line["kind"],
                &line["severity"],
                &line["actor"],
                &line["message"],
                &line["source"],
            );
            expected
                .entry(key)
                .or_default()
                .push(line["ts"].as_str().unwrap().to_owned());
        }
        let mut actual: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in &records {
            let json = serde_json::to_value(record).unwrap();
            let key = fingerprint(
                &json["kind"],
                &json["severity"],
                &json["actor"],
                &json["message"],
                &json["payload"]["source"],
            );
            let times = actual.entry(key.clone()).or_default();
            let first = recap::event::format_timestamp(&record.first_ts);
            let last = recap::event::format_timestamp(&record.last_ts);
            assert!(
                expected[&key].contains(&first) && expected[&key].contains(&last),
                "{key}"
            );
            for _ in 0..record.repeat_count {
                times.push(first.clone());
            }
        }
        let counts = |map: &BTreeMap<String, Vec<String>>| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(counts(&actual), counts(&expected), "{file}");
        if file.contains("WaterBreak") {
            assert!(summary.collapsed > 0, "the rate-limit storm collapses");
        }

        // Export → import → export gives the same records, but for seq and revision.
        let export_path = server
            .data_dir
            .parent()
            .unwrap()
            .join(format!("export-{index}.jsonl"));
        std::fs::write(&export_path, &exported).unwrap();
        let copy = stream(&format!("copy-{index}"));
        let summary = import::import(
            &client,
            &copy,
            &export_path,
            import::ImportOptions::default(),
        )
        .await
        .unwrap();
        assert!(summary.records_format);
        assert_eq!(summary.lines, records.len());
        let mut again = Vec::new();
        export::export(&client, &copy, &mut again).await.unwrap();
        let strip = |bytes: &[u8]| -> Vec<Value> {
            String::from_utf8(bytes.to_vec())
                .unwrap()
                .lines()
                .map(|line| {
                    let mut value: Value = serde_json::from_str(line).unwrap();
                    value.as_object_mut().unwrap().remove("revision");
                    value
                })
                .collect()
        };
        assert_eq!(strip(&again), strip(&exported), "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_all_or_nothing_and_exits_with_its_codes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"kind\": \"tool\", \"message\": \"a\"}\n{\"kind\": \"tool\", \"message\": \"b\", \"severity\": \"loud\"}\n",
    )
    .unwrap();
    let url = server.url();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_recap"))
                .args(args)
                .env("RECAP_URL", url)
                .output()
                .unwrap()
        })
    };

    let output = run(vec![
        "import".into(),
        "cli".into(),
        bad.display().to_string(),
    ])
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2: field `severity`") && stderr.contains("--skip-invalid"),
        "{stderr}"
    );
    server
        .get("/v1/streams/cli/events")
        .await
        .assert_error(404, "unknown_stream", None);

    let output = run(vec![
        "import".into(),
        "cli".into(),
        bad.display().to_string(),
        "--skip-invalid".into(),
    ])
    .await
    .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(vec![
        "post".into(),
        "cli".into(),
        "--kind".into(),
        "llm".into(),
        "hello".into(),
    ])
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "new record #2, revision 2\n"
    );
    let output = run(vec![
        "context".into(),
        "cli".into(),
        "--budget".into(),
        "100".into(),
    ])
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("[llm]: hello"));
    let output = run(vec![
        "tail".into(),
        "cli".into(),
        "--after".into(),
        "0".into(),
        "--count".into(),
        "2".into(),
    ])
    .await
    .unwrap();
    let tailed = String::from_utf8_lossy(&output.stdout);
    assert!(
        tailed.starts_with("#1 ") && tailed.contains("#2 ") && tailed.contains("[llm]: hello"),
        "{tailed}"
    );

    let output = run(vec![
        "post".into(),
        "cli".into(),
        "--kind".into(),
        "llm".into(),
        "--severity".into(),
        "loud".into(),
        "x".into(),
    ])
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let output = run(vec![
        "context".into(),
        "cli".into(),
        "--server".into(),
        "http://127.0.0.1:1".into(),
    ])
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("recap serve"),
        "the error says what to do"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_an_in_flight_request() {
    let mut server = TestServer::start().await;
    let addr = server.addr;
    let body = r#"{"kind": "tool", "message": "in flight during shutdown"}"#;
    let (half, rest) = body.split_at(10);
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        tcp,
        "POST /v1/streams/drain/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{half}",
        body.len()
    )
    .unwrap();

    // Wait until the server is inside that request (the metrics request counts itself too).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let metrics = server.get("/metrics").await.text();
        if metrics.contains("recap_http_requests_in_flight 2\n") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never started: {metrics}"
        );
        tokio::task::yield_now().await;
    }
    server.trigger_shutdown();

    let rest = rest.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        tcp.write_all(rest.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let (data_dir, _guard) = server.shutdown().await;
    let page = tokio::task::spawn_blocking(move || {
        let store = Store::open(&data_dir, StoreOptions::default()).unwrap();
        let page = store
            .records(&stream("drain"), &RecordQuery::default())
            .unwrap();
        store.close().unwrap();
        page
    })
    .await
    .unwrap();
    assert_eq!(page.records[0].message, "in flight during shutdown");
}

/// `recap tail` outlives a server restart: it reconnects and resumes after the last revision it
/// printed, so the change posted while it was away is printed once, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_across_a_server_restart() {
    let server = TestServer::start().await;
    let stream = StreamName::new("watched").unwrap();
    let post = |server: &TestServer, message: &str| {
        let body = format!(r#"{{"kind": "tool", "message": "{message}"}}"#);
        let server_url = server.url();
        async move {
            let client = recap::client::Client::new(&server_url, None).unwrap();
            client
                .send(
                    Method::POST,
                    "/v1/streams/watched/events",
                    Some(("application/json", Bytes::from(body))),
                    &[],
                )
                .await
                .unwrap();
        }
    };
    post(&server, "before the tail").await;
    let client = server.client(None);
    let follower = tokio::spawn({
        let stream = stream.clone();
        async move {
            let mut out = Vec::new();
            let printed = tail::tail(&client, &stream, None, Some(2), &mut out).await;
            (printed.unwrap(), String::from_utf8(out).unwrap())
        }
    });
    // The tail starts from the stream's revision when it subscribes: post once it has.
    tokio::time::timeout(DEADLINE, async {
        while !server
            .get("/metrics")
            .await
            .text()
            .contains("recap_sse_subscribers 1\n")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the tail subscribes before the deadline");
    post(&server, "first while tailing").await;
    let server = server.restart().await;
    post(&server, "after the restart").await;
    let (printed, out) = tokio::time::timeout(DEADLINE, follower)
        .await
        .expect("the tail ends before the deadline")
        .unwrap();
    assert_eq!(printed, 2, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("first while tailing"), "{out}");
    assert!(lines[1].contains("after the restart"), "{out}");
}

/// A client that sends headers and then trickles (here: stops sending) its body gets 408 once
/// the body time limit passes, instead of holding a handler forever; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_server_keeps_serving() {
    let server = TestServer::with_options(ServerOptions {
        body_read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    })
    .await;
    let addr = server.addr;
    let head = "POST /v1/streams/s/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(b"{\"kind\": \"tool\",").unwrap();
        // Nothing more is sent; read the server's answer.
        let mut buffer = [0u8; 4096];
        let read = tcp.read(&mut buffer).unwrap();
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    let reply = server
        .post_json(
            "/v1/streams/s/events",
            r#"{"kind": "tool", "message": "still here"}"#,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
}

/// The sum of `recap_http_requests_total` over the statuses of one method and route.
fn requests_counted(metrics: &str, method: &str, route: &str) -> u64 {
    let labels = format!("recap_http_requests_total{{method=\"{method}\",route=\"{route}\",");
    metrics
        .lines()
        .filter(|line| line.starts_with(&labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Regression (issue 14): a client that hangs up in the middle of its upload used to leave
/// `recap_http_requests_in_flight` one higher for good and was never counted. Now the request
/// is counted (as whatever it came to, or 499 when the client left first) and the gauge comes
/// back to where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_counted_and_leave_the_in_flight_gauge_as_it_was() {
    const ABANDONED: u64 = 20;
    let server = TestServer::start().await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        for _ in 0..ABANDONED {
            let mut tcp = TcpStream::connect(addr).unwrap();
            tcp.write_all(b"POST /v1/streams/s/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\": \"tool\",")
                .unwrap();
            // Half a body, then the client is gone.
            drop(tcp);
        }
    })
    .await
    .unwrap();
    // The server notices each hang-up on its own time: wait (bounded) until all are counted.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let metrics = loop {
        let metrics = server.get("/metrics").await.text();
        if requests_counted(&metrics, "POST", "/v1/streams/{s}/events") == ABANDONED {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all counted: {metrics}"
        );
        tokio::task::yield_now().await;
    };
    // Only the request for the metrics themselves is in flight.
    assert!(
        metrics.contains("recap_http_requests_in_flight 1\n"),
        "{metrics}"
    );
    let reply = server
        .post_json(
            "/v1/streams/s/events",
            r#"{"kind": "tool", "message": "after"}"#,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
}

/// A 405 on a known path is counted under that path's route and the refused method, not as an
/// unmatched request; the metrics carry the build's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_405_is_counted_under_its_route() {
    let server = TestServer::start().await;
    let reply = server
        .request(Method::PUT, "/v1/streams/s/events", None, Bytes::new(), &[])
        .await;
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    reply.assert_error(405, "method_not_allowed", None);
    server
        .get("/nowhere")
        .await
        .assert_error(404, "not_found", None);
    let metrics = server.get("/metrics").await.text();
    for line in [
        "recap_http_requests_total{method=\"PUT\",route=\"/v1/streams/{s}/events\",status=\"405\"} 1\n",
        "recap_http_requests_total{method=\"any\",route=\"unmatched\",status=\"404\"} 1\n",
        &format!(
            "recap_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("recap_store_file_bytes "), "{metrics}");
}

/// `GET /openapi.json` needs no key on a server with keys (like `/healthz`), and describes every
/// route the server answers: each documented operation is answered (not a 404 or 405), and the
/// error codes it lists are the ones the server sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_is_open_and_names_what_the_server_serves() {
    let options = ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let reply = server.get("/openapi.json").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let mut operations = 0;
    for (template, methods) in paths {
        let path = template
            .replace("{s}", "team-a.x")
            .replace("{id}", "1")
            .replace("{file}", "ui.css");
        for (method, operation) in methods.as_object().unwrap() {
            operations += 1;
            if path.contains("subscribe") || path == "/mcp" {
                continue;
            }
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let reply = server
                .request(method.clone(), &path, None, Bytes::new(), &[])
                .await;
            let status = reply.status.as_u16().to_string();
            assert!(
                ![404, 405].contains(&reply.status.as_u16())
                    || reply.json()["error"]["code"] != "not_found"
                        && reply.json()["error"]["code"] != "method_not_allowed",
                "{method} {path}: {}",
                reply.text()
            );
            assert!(
                operation["responses"].get(&status).is_some(),
                "{method} {path} answered {status}, which its description does not list"
            );
        }
    }
    assert!(operations > 20, "{operations} operations");
    assert!(paths["/v1/streams/{s}/context"]["get"]["parameters"].is_array());
    let codes: Vec<&str> = document["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap())
        .collect();
    for code in [
        "unauthorized",
        "forbidden",
        "invalid_json",
        "unknown_stream",
        "disk_full",
    ] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }
}

/// Notes are bounded per stream: past the cap a note is refused with a 409 that names the limit
/// and the setting, nothing is written, and deleting a note makes room again. Lists page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_capped_per_stream_and_listed_in_pages() {
    let server = TestServer::start().await;
    let notes = "/v1/streams/capped/notes";
    let big = "n".repeat(64 * 1024 - 16);
    let body = |i: usize| format!(r#"{{"text": "{i:>4} {big}"}}"#);
    // The default cap is 1 MiB of note text: sixteen notes of 64 KiB fit, a seventeenth does not.
    for i in 0..16 {
        assert_eq!(
            server.post_json(notes, &body(i)).await.status,
            201,
            "note {i}"
        );
    }
    let refused = server.post_json(notes, &body(16)).await;
    refused.assert_error(409, "note_limit", None);
    assert!(
        refused.text().contains("max_note_bytes_per_stream"),
        "{}",
        refused.text()
    );
    let revision = server.get("/v1/streams/capped").await.json()["revision"].clone();

    // Pages of five, in id order, with a cursor until the end.
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .get(&format!("{notes}?after={after}&limit=5"))
            .await
            .json();
        let page_ids: Vec<u64> = page["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|note| note["id"].as_u64().unwrap())
            .collect();
        assert!(page_ids.len() <= 5);
        ids.extend(page_ids);
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(ids, (1..=16).collect::<Vec<u64>>());
    server.get(&format!("{notes}?limit=0")).await.assert_error(
        400,
        "invalid_parameter",
        Some("limit"),
    );

    // The refused note wrote nothing; deleting one makes room for it.
    assert_eq!(
        server.get("/v1/streams/capped").await.json()["revision"],
        revision
    );
    let deleted = server
        .request(
            Method::DELETE,
            &format!("{notes}/3"),
            None,
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(server.post_json(notes, &body(16)).await.status, 201);
}

/// A note's audit record stays one when a client event repeats its text, so deleting the note
/// still hides it; and clients cannot pass events off as audit records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_notes_stay_forgotten_and_audit_records_cannot_be_forged() {
    let server = TestServer::start().await;
    let stream = "/v1/streams/forget";
    let note = server
        .post_json(&format!("{stream}/notes"), r#"{"text": "SECRET-gamma"}"#)
        .await
        .json();
    let repeat = server
        .post_json(
            &format!("{stream}/events"),
            r#"{"kind": "note", "message": "SECRET-gamma", "payload": {"source": "agent"}}"#,
        )
        .await
        .json();
    assert_eq!(repeat["records"][0]["collapsed"], true);
    let id = note["id"].as_u64().unwrap();
    let deleted = server
        .request(
            Method::DELETE,
            &format!("{stream}/notes/{id}"),
            None,
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    for budget in [50, 300, 2_000] {
        let text = server
            .get(&format!("{stream}/context?budget={budget}"))
            .await
            .text();
        assert!(!text.contains("SECRET-gamma"), "{budget}: {text}");
    }
    server
        .post_json(
            &format!("{stream}/events"),
            r#"{"kind": "note", "message": "hide me", "payload": {"note_id": 1}}"#,
        )
        .await
        .assert_error(400, "invalid_field", Some("payload.note_id"));
}

/// The streams list comes in pages by name, with a cursor, narrowed by a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_list_pages_by_name() {
    let server = TestServer::start().await;
    for name in ["b.1", "a.3", "a.1", "a.2", "c"] {
        let posted = server
            .post_json(
                &format!("/v1/streams/{name}/events"),
                r#"{"kind": "tool", "message": "m"}"#,
            )
            .await;
        assert_eq!(posted.status, 200);
    }
    let names = |reply: &serde_json::Value| -> Vec<String> {
        reply["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|stats| stats["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = server.get("/v1/streams?limit=2").await.json();
    assert_eq!(
        (names(&first), &first["next"]),
        (
            vec!["a.1".to_owned(), "a.2".to_owned()],
            &serde_json::json!("a.2")
        )
    );
    let second = server.get("/v1/streams?limit=2&after=a.2").await.json();
    assert_eq!(names(&second), ["a.3", "b.1"]);
    let last = server.get("/v1/streams?limit=2&after=b.1").await.json();
    assert_eq!(
        (names(&last), &last["next"]),
        (vec!["c".to_owned()], &serde_json::Value::Null)
    );
    let prefixed = server.get("/v1/streams?prefix=a.").await.json();
    assert_eq!(names(&prefixed), ["a.1", "a.2", "a.3"]);
    server
        .get("/v1/streams?limit=0")
        .await
        .assert_error(400, "invalid_parameter", Some("limit"));
}

/// A request refused before its body is read (a bad stream name, no key, no route) leaves the
/// connection usable: the next request on it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_does_not_cost_the_connection() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let answered = tokio::task::spawn_blocking(move || {
        let body = r#"{"kind": "tool", "message": "m"}"#;
        let refused = format!(
            "POST /v1/streams/bad%20name!/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let unrouted = format!(
            "POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let next = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // Each body a moment after its head, as a slow client sends it: the refusal is decided
        // before the body arrives.
        for part in [refused.as_str(), body, unrouted.as_str(), body, next] {
            // A write after the server gave up on the connection fails; what it answered shows.
            if std::io::Write::write_all(&mut stream, part.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut answers = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut answers);
        String::from_utf8_lossy(&answers).into_owned()
    })
    .await
    .unwrap();
    let statuses: Vec<&str> = answered
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|answer| answer.lines().next())
        .collect();
    assert_eq!(
        statuses,
        ["400 Bad Request", "404 Not Found", "200 OK"],
        "{answered}"
    );
}

/// `X-Recap-Min-Revision` on one redb node: a revision the node has answers at once, one that
/// a write in flight brings answers when it lands, one that never comes is a 503 `behind` with
/// `Retry-After` after the bounded wait, and a malformed or repeated header is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_the_revision_they_name() {
    let server = TestServer::start().await;
    let wrote = server
        .post_json(
            "/v1/streams/ryw/events",
            r#"{"kind": "plan", "message": "first"}"#,
        )
        .await;
    let revision = wrote.json()["revision"].as_u64().unwrap();
    let context = "/v1/streams/ryw/context?budget=300";
    let get = |path: &'static str, value: String| {
        let server = &server;
        async move {
            let headers = [("x-recap-min-revision", value.as_str())];
            server
                .request(Method::GET, path, None, Bytes::new(), &headers)
                .await
        }
    };
    assert_eq!(get(context, revision.to_string()).await.status, 200);

    // The next revision, written while the read (usually) waits for it: in either order the
    // read answers with it.
    let (read, _) = tokio::join!(get(context, (revision + 1).to_string()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server
            .post_json(
                "/v1/streams/ryw/events",
                r#"{"kind": "plan", "message": "second"}"#,
            )
            .await
    });
    assert_eq!(read.status, 200, "{}", read.text());
    assert!(read.text().contains("second"), "{}", read.text());

    let behind = get("/v1/streams/ryw/events", (revision + 50).to_string()).await;
    behind.assert_error(503, "behind", None);
    assert_eq!(behind.header("retry-after"), Some("1"));

    get(context, "soon".into()).await.assert_error(
        400,
        "invalid_parameter",
        Some("X-Recap-Min-Revision"),
    );
    let twice = server
        .request(
            Method::GET,
            context,
            None,
            Bytes::new(),
            &[("x-recap-min-revision", "1"), ("x-recap-min-revision", "2")],
        )
        .await;
    twice.assert_error(400, "invalid_parameter", Some("X-Recap-Min-Revision"));
    let disagree = server
        .request(
            Method::GET,
            "/v1/streams/ryw/notes?min_revision=2",
            None,
            Bytes::new(),
            &[("x-recap-min-revision", "1")],
        )
        .await;
    disagree.assert_error(400, "invalid_parameter", Some("min_revision"));
}
