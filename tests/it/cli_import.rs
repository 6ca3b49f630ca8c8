//! `recap import` and `recap export` as a user runs them: the real binary against a real server
//! on 127.0.0.1:0. Regressions of the CLI audit: lines that are not UTF-8, causes printed twice,
//! refusals named by their place in a batch instead of the file, servers with a small body cap,
//! and pinned notes lost on export → import.

use std::path::{Path, PathBuf};
use std::process::Output;

use recap::server::ServerOptions;
use serde_json::Value;

use crate::live_server::{DEADLINE, TestServer};

/// Runs `recap ARGS` against `server`, bounded by [`DEADLINE`].
async fn recap(server: &TestServer, args: &[&str]) -> Output {
    let url = server.url();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(&args)
            .env("RECAP_URL", url)
            .env_remove("RECAP_KEY")
            .output()
            .expect("the recap binary runs")
    });
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("recap finished in time")
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn event_line(message: &str) -> String {
    serde_json::json!({"kind": "tool", "message": message}).to_string()
}

/// How many records a stream holds (0 if it does not exist).
async fn records(server: &TestServer, stream: &str) -> u64 {
    let reply = server.get(&format!("/v1/streams/{stream}")).await;
    if reply.status == 404 {
        return 0;
    }
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["records"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_is_not_utf8_is_named_by_its_number_and_can_be_skipped() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format!("{}\n", event_line("first")).into_bytes();
    bytes.extend_from_slice(b"{\"kind\": \"tool\", \"message\": \"caf\xe9\"}\n");
    bytes.extend_from_slice(format!("{}\n", event_line("third")).as_bytes());
    let file = write(dir.path(), "badutf.jsonl", &bytes);
    let file = file.to_str().unwrap();

    let output = recap(&server, &["import", "utf", file]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("1 invalid line(s), nothing was imported")
            && text.contains("line 2: not valid UTF-8")
            && text.contains("--skip-invalid"),
        "{text}"
    );
    assert!(!text.contains("stream did not contain"), "{text}");
    assert_eq!(records(&server, "utf").await, 0, "nothing was written");

    let output = recap(&server, &["import", "utf", file, "--skip-invalid"]).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("skipped line 2: not valid UTF-8") && text.contains("1 lines skipped"),
        "{text}"
    );
    assert_eq!(records(&server, "utf").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_says_its_cause_once() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let output = recap(&server, &["import", "s", missing.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(
        text.trim_end(),
        format!(
            "error: {}: {}",
            missing.display(),
            std::fs::read(&missing).unwrap_err()
        ),
        "{text}"
    );

    // A directory is not a file: the OS says so once.
    let output = recap(&server, &["import", "s", dir.path().to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.matches("(os error").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_refused_by_a_stricter_server_is_named_by_its_line_in_the_file() {
    let server = TestServer::with_options(ServerOptions {
        limits: recap::event::EventLimits {
            max_message_bytes: 1_000,
        },
        ..ServerOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for number in 1..=1_500 {
        let message = if number == 1_200 {
            "x".repeat(2_000)
        } else {
            format!("event {number}")
        };
        text.push_str(&event_line(&message));
        text.push('\n');
    }
    let file = write(dir.path(), "strict.jsonl", text.as_bytes());

    let output = recap(&server, &["import", "strict", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("the import stopped after 1000 of 1500 lines were written")
            && text.contains("line 1200: the server answered 400")
            && text.contains("field `message`"),
        "{text}"
    );
    assert!(
        !text.contains("event 199") && !text.contains("line 200"),
        "{text}"
    );
    assert_eq!(
        text.matches("the server answered").count(),
        1,
        "said once: {text}"
    );
    // What the message says was written is what the stream holds.
    assert_eq!(records(&server, "strict").await, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_cap_splits_batches_down_to_one_line() {
    let server = TestServer::with_options(ServerOptions {
        max_body_bytes: 65_536,
        ..ServerOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    // ~600 KiB of small events: every default batch is over the cap.
    let mut text = String::new();
    for number in 1..=3_000 {
        text.push_str(&event_line(&format!("{number:0>160}")));
        text.push('\n');
    }
    let file = write(dir.path(), "many.jsonl", text.as_bytes());
    let output = recap(&server, &["import", "small", file.to_str().unwrap()]).await;
    let stderr_text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr_text}");
    assert!(
        stderr_text.contains("imported 3000 events into small: 3000 new records"),
        "{stderr_text}"
    );
    assert_eq!(records(&server, "small").await, 3_000);

    // A line that is over the cap on its own (the client's checks allow 64 KiB messages).
    let mut text = String::new();
    for number in 1..=10 {
        let message = if number == 5 {
            "y".repeat(65_530)
        } else {
            format!("line {number}")
        };
        text.push_str(&event_line(&message));
        text.push('\n');
    }
    let file = write(dir.path(), "huge.jsonl", text.as_bytes());
    let output = recap(&server, &["import", "huge", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("the import stopped after 4 of 10 lines were written")
            && text.contains("line 5 is 65577 bytes as sent")
            && text.contains("max_body_bytes"),
        "{text}"
    );
    assert_eq!(records(&server, "huge").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_keeps_pinned_notes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let post = |body: &'static str| server.post_json("/v1/streams/src/events", body);
    post(r#"{"kind": "plan", "message": "fix the flaky test"}"#).await;
    let pinned = server
        .post_json(
            "/v1/streams/src/notes",
            r#"{"text": "the repo uses tabs", "expires_at": "2999-01-01T00:00:00Z"}"#,
        )
        .await;
    assert_eq!(pinned.status, 201, "{}", pinned.text());
    let gone = server
        .post_json("/v1/streams/src/notes", r#"{"text": "temporary"}"#)
        .await
        .json();
    let deleted = server
        .request(
            http::Method::DELETE,
            &format!("/v1/streams/src/notes/{}", gone["id"]),
            None,
            "",
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204);
    post(r#"{"kind": "tool", "severity": "error", "message": "timed out"}"#).await;

    let output = recap(&server, &["export", "src"]).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("exported 4 records (1 with a pinned note) from src"),
        "{text}"
    );
    let exported = output.stdout;
    let file = write(dir.path(), "src.jsonl", &exported);

    let output = recap(&server, &["import", "copy", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // The live note is back, with its times; the deleted one is only a record, as it was.
    let source_notes = server.get("/v1/streams/src/notes").await.json()["notes"].clone();
    let copied_notes = server.get("/v1/streams/copy/notes").await.json()["notes"].clone();
    assert_eq!(copied_notes.as_array().unwrap().len(), 1, "{copied_notes}");
    for field in ["text", "created_at", "expires_at"] {
        assert_eq!(copied_notes[0][field], source_notes[0][field], "{field}");
    }
    // Its audit record names it, so the context shows the note once, in the Notes section.
    let copied = server.get("/v1/streams/copy/events").await.json();
    let audit: Vec<&Value> = copied["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["message"] == "the repo uses tabs")
        .collect();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["payload"]["note_id"], copied_notes[0]["id"]);
    let context = server
        .get("/v1/streams/copy/context?budget=1000")
        .await
        .text();
    assert!(context.contains("## Notes"), "{context}");
    assert_eq!(
        context.matches("the repo uses tabs").count(),
        1,
        "{context}"
    );

    // Export → import → export gives the same lines, but for revisions.
    let output = recap(&server, &["export", "copy"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
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
    assert_eq!(strip(&output.stdout), strip(&exported));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_says_which_live_notes_it_cannot_carry() {
    let server = TestServer::start().await;
    // The same note twice in a row: the second audit event collapses into the first's record,
    // which then names the second note; the first has no record of its own to travel on.
    for _ in 0..2 {
        let reply = server
            .post_json(
                "/v1/streams/twice/notes",
                r#"{"text": "deploys are frozen"}"#,
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let output = recap(&server, &["export", "twice"]).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("exported 1 records (1 with a pinned note)")
            && text.contains("note 1 was not exported")
            && text.contains("deploys are frozen"),
        "{text}"
    );
}
