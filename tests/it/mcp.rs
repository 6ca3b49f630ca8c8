//! The MCP tools against a real server on 127.0.0.1:0: `/mcp` in-process (raw JSON-RPC, as an
//! older-revision client sends it, each POST on its own: no session), keys and prefixes per
//! tool call, and `recap mcp` over stdio forwarding to the server. The official Python SDK
//! drives both transports in tests/python/test_mcp.py.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::Method;
use recap::server::ServerOptions;
use recap::server::auth::Keys;
use serde_json::{Value, json};

use crate::live_server::TestServer;

const VERSION: &str = "2025-06-18";

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
"#;

/// One JSON-RPC request to `/mcp`; returns the status and the parsed body (`Null` if none).
async fn rpc(server: &TestServer, key: Option<&str>, method: &str, params: Value) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut headers = vec![
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", VERSION),
    ];
    let bearer = key.map(|key| format!("Bearer {key}"));
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let reply = server
        .request(
            Method::POST,
            "/mcp",
            Some("application/json"),
            Bytes::from(body.to_string()),
            &headers,
        )
        .await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status.as_u16(), value)
}

/// A tool call's result: (isError, the text of its content blocks).
async fn call(
    server: &TestServer,
    key: Option<&str>,
    tool: &str,
    arguments: Value,
) -> (bool, String) {
    let (status, body) = rpc(
        server,
        key,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    let text = result["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {body}"))
        .iter()
        .map(|block| block["text"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    (result["isError"] == true, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_over_http_fold_repeats_and_pin_notes() {
    let server = TestServer::start().await;
    let (status, init) = rpc(
        &server,
        None,
        "initialize",
        json!({"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["result"]["protocolVersion"], VERSION);
    assert_eq!(init["result"]["serverInfo"]["name"], "recap");

    let (_, tools) = rpc(&server, None, "tools/list", json!({})).await;
    let mut names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "forget",
            "get_context",
            "get_events",
            "list_streams",
            "log_event",
            "remember"
        ]
    );

    let event =
        json!({"stream": "m", "kind": "tool", "severity": "error", "message": "search timed out"});
    for count in 1..=3 {
        let (error, text) = call(&server, None, "log_event", event.clone()).await;
        assert!(!error, "{text}");
        let written: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            written,
            json!({"seq": 1, "repeat_count": count, "collapsed": count > 1})
        );
    }
    let (_, text) = call(
        &server,
        None,
        "remember",
        json!({"stream": "m", "text": "patch, not rewrite"}),
    )
    .await;
    let note_id = serde_json::from_str::<Value>(&text).unwrap()["note_id"]
        .as_u64()
        .unwrap();
    let (_, window) = call(
        &server,
        None,
        "get_context",
        json!({"stream": "m", "budget": 300}),
    )
    .await;
    assert!(
        window.starts_with("## Notes\n- patch, not rewrite\n"),
        "{window}"
    );
    assert!(window.contains("ERROR: search timed out x3"), "{window}");
    // The window is the HTTP route's, byte for byte.
    let plain = server.get("/v1/streams/m/context?budget=300").await.text();
    assert!(window.starts_with(&plain), "{window}\n---\n{plain}");
    // The same window is a resource.
    let (_, read) = rpc(
        &server,
        None,
        "resources/read",
        json!({"uri": "recap://streams/m/context"}),
    )
    .await;
    let resource = read["result"]["contents"][0]["text"].as_str().unwrap_or("");
    assert!(resource.contains("search timed out x3"), "{read}");

    let (error, _) = call(
        &server,
        None,
        "forget",
        json!({"stream": "m", "note_id": note_id}),
    )
    .await;
    assert!(!error);
    let (_, window) = call(&server, None, "get_context", json!({"stream": "m"})).await;
    assert!(!window.contains("patch, not rewrite"), "{window}");

    // Mistakes are tool errors with the HTTP API's messages.
    let (error, text) = call(
        &server,
        None,
        "get_context",
        json!({"stream": "m", "budget": 10, "model": "gpt-4o", "encoding": "cl100k_base"}),
    )
    .await;
    assert!(
        error && text.contains("pass encoding= or model=, not both"),
        "{text}"
    );
    let (error, text) = call(
        &server,
        None,
        "log_event",
        json!({"stream": "bad name", "kind": "tool", "message": "x"}),
    )
    .await;
    assert!(error && text.contains("stream"), "{text}");
    let (error, text) = call(
        &server,
        None,
        "get_events",
        json!({"stream": "m", "min_severity": "loud"}),
    )
    .await;
    assert!(error && text.contains("min_severity"), "{text}");
    let (_, page) = call(
        &server,
        None,
        "get_events",
        json!({"stream": "m", "kinds": ["tool"]}),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&page).unwrap()["records"][0]["repeat_count"],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_keys_confine_each_tool_call() {
    let options = ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let (status, body) = rpc(&server, None, "tools/list", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = rpc(
        &server,
        Some("wrong-key-0123456789"),
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(status, 401);

    let team_a = Some("team-a-secret-0123456789");
    let (error, text) = call(
        &server,
        team_a,
        "log_event",
        json!({"stream": "team-a.x", "kind": "tool", "message": "ran"}),
    )
    .await;
    assert!(!error, "{text}");
    for (tool, arguments) in [
        ("get_context", json!({"stream": "team-b.x"})),
        ("remember", json!({"stream": "team-b.x", "text": "t"})),
        ("forget", json!({"stream": "team-b.x", "note_id": 1})),
    ] {
        let (error, text) = call(&server, team_a, tool, arguments).await;
        assert!(error, "{tool}");
        assert!(
            text.contains("confined to streams starting with \"team-a.\""),
            "{text}"
        );
    }
    let reader = Some("reader-secret-0123456789");
    let (error, text) = call(
        &server,
        reader,
        "remember",
        json!({"stream": "team-a.x", "text": "t"}),
    )
    .await;
    assert!(error && text.contains("lacks the write scope"), "{text}");
    let (error, text) = call(&server, reader, "list_streams", json!({})).await;
    assert!(!error && text.contains("team-a.x"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recap_mcp_forwards_stdio_to_the_server() {
    let server = TestServer::start().await;
    let url = server.url();
    let transcript = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(["mcp", "--server", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut exchange = |message: Value, answered: bool| {
            writeln!(stdin, "{message}").unwrap();
            let mut line = String::new();
            if answered {
                stdout.read_line(&mut line).unwrap();
            }
            serde_json::from_str::<Value>(&line).unwrap_or(Value::Null)
        };
        let init = exchange(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}}),
            true,
        );
        exchange(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), false);
        let mut replies = vec![init];
        for n in 0..2 {
            replies.push(exchange(
                json!({"jsonrpc": "2.0", "id": 2 + n, "method": "tools/call", "params": {"name": "log_event", "arguments": {"stream": "stdio", "kind": "tool", "message": "same"}}}),
                true,
            ));
        }
        replies.push(exchange(
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "get_context", "arguments": {"stream": "stdio"}}}),
            true,
        ));
        drop(stdin);
        assert!(child.wait().unwrap().success());
        replies
    })
    .await
    .unwrap();
    assert_eq!(transcript[0]["result"]["serverInfo"]["name"], "recap");
    let second: Value = serde_json::from_str(
        transcript[2]["result"]["content"][0]["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(second["repeat_count"], 2);
    let window = transcript[3]["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(window.contains("same x2"), "{window}");
    // The events reached the server.
    let page = server.get("/v1/streams/stdio/events").await.json();
    assert_eq!(page["records"][0]["repeat_count"], 2);
}
