//! The client commands as a user runs them: the real binary against a real server on
//! 127.0.0.1:0, for every route a user calls (issue 14: everything a user can do over HTTP they
//! can do with `recap`), with the error paths a user meets: a stream that does not exist, a
//! payload that is not JSON, a wrong key, a negative number.

use std::io::Write;
use std::process::{Output, Stdio};

use recap::server::ServerOptions;
use recap::server::auth::Keys;
use serde_json::Value;

use crate::live_server::{DEADLINE, TestServer};

/// Runs `recap ARGS` against `server` with `env` set and `stdin` fed, bounded by [`DEADLINE`].
async fn run_with(
    server: &TestServer,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Output {
    let url = server.url();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let stdin = stdin.map(str::to_owned);
    let run = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(&args)
            .env("RECAP_URL", url)
            .env_remove("RECAP_KEY")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the recap binary runs");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(stdin) = stdin {
            pipe.write_all(stdin.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    });
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("recap finished in time")
        .unwrap()
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    run_with(server, args, &[], None).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the exit code, showing both streams when it is not the one expected.
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(server: &TestServer, args: &[&str]) -> String {
    let output = run(server, args).await;
    assert_exit(&output, 0);
    stdout(&output)
}

/// Each line of stdout as JSON.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

async fn post(server: &TestServer, stream: &str, kind: &str, severity: &str, message: &str) {
    ok(
        server,
        &[
            "post",
            stream,
            "--kind",
            kind,
            "--severity",
            severity,
            message,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_sets_every_event_field_and_events_shows_them() {
    let server = TestServer::start().await;
    let out = ok(
        &server,
        &[
            "post",
            "demo",
            "search timed out",
            "--kind",
            "Tool",
            "--severity",
            "err",
            "--ts",
            "2024-05-01T12:31:41+02:00",
            "--actor",
            "searcher",
            "--step-id",
            "step-7",
            "--display-message",
            "timeout",
            "--payload",
            r#"{ "z": 1, "query": "redb" }"#,
        ],
    )
    .await;
    assert_eq!(out, "new record #1, revision 1\n");

    let records = json_lines(&ok(&server, &["events", "demo", "--json"]).await);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    for (field, expected) in [
        ("kind", "tool"),
        ("severity", "error"),
        ("message", "search timed out"),
        ("first_ts", "2024-05-01T10:31:41.000000Z"),
        ("actor", "searcher"),
        ("step_id", "step-7"),
        ("display_message", "timeout"),
    ] {
        assert_eq!(record[field], expected, "{field}: {record}");
    }
    // The payload arrives as given, minified, its keys in the order sent.
    let raw = ok(&server, &["events", "demo", "--json"]).await;
    assert!(raw.contains(r#""payload":{"z":1,"query":"redb"}"#), "{raw}");

    // A repeat collapses, and the answer says into which record; --json is the server's answer.
    let out = ok(
        &server,
        &[
            "post",
            "demo",
            "--kind",
            "tool",
            "--severity",
            "error",
            "--actor",
            "searcher",
            "search timed out",
            "--ts",
            "2024-05-01T10:32:00Z",
            "--json",
        ],
    )
    .await;
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["records"][0]["collapsed"], true, "{answer}");
    assert_eq!(answer["records"][0]["repeat_count"], 2, "{answer}");

    // The readable form: seq, date, and the context's line.
    let out = ok(&server, &["events", "demo"]).await;
    assert_eq!(
        out,
        "#1 2024-05-01 10:32:00 [tool] ERROR: search timed out x2\n"
    );

    // The message from stdin.
    let output = run_with(
        &server,
        &["post", "demo", "--kind", "tool", "-"],
        &[],
        Some("line one\nline two\n"),
    )
    .await;
    assert_exit(&output, 0);
    let records = json_lines(&ok(&server, &["events", "demo", "--after", "1", "--json"]).await);
    assert_eq!(records[0]["message"], "line one\nline two\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_usage_errors_that_say_what_to_write_and_send_nothing() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.json");
    std::fs::write(&file, "[1, 2]").unwrap();
    let from_file = format!("@{}", file.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "post",
                "demo",
                "m",
                "--kind",
                "tool",
                "--payload",
                "{\"a\": ",
            ],
            "is not a JSON object",
        ),
        (
            &["post", "demo", "m", "--kind", "tool", "--payload", "[1]"],
            "is not a JSON object",
        ),
        (
            &[
                "post",
                "demo",
                "m",
                "--kind",
                "tool",
                "--payload",
                &from_file,
            ],
            "is not a JSON object",
        ),
        (
            &["post", "demo", "m", "--kind", "tool", "--severity", "loud"],
            "debug, info, warning, error, critical",
        ),
        (
            &["post", "demo", "m", "--kind", "tool", "--ts", "yesterday"],
            "is not a time",
        ),
        (
            &["post", "demo", "m", "--kind", "no spaces"],
            "not a valid kind",
        ),
        (&["post", "bad/name", "m", "--kind", "tool"], "stream name"),
        (
            &["context", "demo", "--budget", "-5"],
            "budget must be positive",
        ),
        (
            &["context", "demo", "--budget", "0"],
            "budget must be positive",
        ),
        (&["context", "demo", "--goals", "5"], "0..=4"),
        (&["events", "demo", "--limit", "-1"], "must be positive"),
        (&["events", "demo", "--after", "-1"], "must not be negative"),
        (&["retention", "demo"], "--max-records"),
        (
            &["retention", "demo", "--max-records", "-3"],
            "must be positive",
        ),
        (
            &["retention", "demo", "--max-age", "7 days"],
            "not a duration",
        ),
        (
            &["retention", "demo", "--clear", "--max-age", "1d"],
            "cannot be used with",
        ),
        (&["notes", "rm", "demo", "-1"], "must not be negative"),
        (&["anomalies", "demo"], "--repeat-actions"),
        (
            &["anomalies", "demo", "--on", "--off"],
            "cannot be used with",
        ),
        (
            &["anomalies", "demo", "--repeat-actions", "many"],
            "whole number",
        ),
    ];
    for (args, says) in cases {
        let output = run(&server, args).await;
        assert_exit(&output, 2);
        let text = stderr(&output);
        assert!(text.contains(says), "{args:?}: {text}");
        assert!(
            !text.contains("-- -"),
            "{args:?}: clap's `-- -5` advice: {text}"
        );
    }
    // Nothing was sent.
    assert_eq!(server.get("/v1/streams/demo").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_takes_every_parameter_of_the_route() {
    let server = TestServer::start().await;
    post(&server, "ctx", "task", "info", "fix the flaky test").await;
    post(&server, "ctx", "tool", "info", "ran the tests").await;
    post(&server, "ctx", "tool", "error", "test_io failed").await;
    post(&server, "ctx", "plan", "info", "retry with a fixed seed").await;

    let output = run(&server, &["context", "ctx", "--budget", "300"]).await;
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("[plan]: retry with a fixed seed"));
    assert!(stderr(&output).contains(" tokens)"), "{}", stderr(&output));

    let receipt = |text: String| -> Value { serde_json::from_str(&text).unwrap() };
    let json = receipt(ok(&server, &["context", "ctx", "--json", "--model", "gpt-4o"]).await);
    assert_eq!(json["encoding"], "o200k_base");
    assert_eq!(json["budget"], 2000, "the server's default budget");
    let same = receipt(
        ok(
            &server,
            &["context", "ctx", "--format", "json", "--model", "gpt-4o"],
        )
        .await,
    );
    assert_eq!(same["text"], json["text"]);

    let json = receipt(
        ok(
            &server,
            &[
                "context",
                "ctx",
                "--json",
                "--encoding",
                "o200k_base",
                "--kinds",
                "tool",
                "--min-severity",
                "error",
                "--goals",
                "0",
            ],
        )
        .await,
    );
    let text = json["text"].as_str().unwrap();
    assert!(text.contains("test_io failed"), "{text}");
    assert!(
        !text.contains("ran the tests") && !text.contains("fix the flaky"),
        "{text}"
    );

    let json = receipt(
        ok(
            &server,
            &[
                "context",
                "ctx",
                "--json",
                "--kinds",
                "task",
                "--kinds",
                "plan",
                "--since",
                "2000-01-01T00:00:00Z",
                "--weights",
                "kind.plan=20",
                "--line-cap",
                "40",
            ],
        )
        .await,
    );
    let text = json["text"].as_str().unwrap();
    assert!(
        text.contains("fix the flaky") && text.contains("fixed seed"),
        "{text}"
    );
    assert!(!text.contains("test_io"), "{text}");

    // The server's refusals come through with what to fix, and exit 1.
    let output = run(&server, &["context", "ctx", "--weights", "kind.plan=lots"]).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("weights"), "{}", stderr(&output));
    let output = run(&server, &["context", "ctx", "--encoding", "p50k_base"]).await;
    assert_exit(&output, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_said_as_such_by_every_command_that_names_one() {
    let server = TestServer::start().await;
    for args in [
        &["context", "nosuchstream"][..],
        &["events", "nosuchstream"],
        &["notes", "list", "nosuchstream"],
        &["notes", "rm", "nosuchstream", "1"],
        &["streams", "show", "nosuchstream"],
        &["streams", "rm", "nosuchstream"],
        &["retention", "nosuchstream", "--max-records", "5"],
    ] {
        let output = run(&server, args).await;
        assert_exit(&output, 1);
        let text = stderr(&output);
        assert_eq!(
            text.trim_end(),
            "error: stream \"nosuchstream\" does not exist; `recap streams list` lists the streams, and its first `recap post` creates it",
            "{args:?}"
        );
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
    }
    // A stream that exists but holds nothing to show is not an error.
    post(&server, "quiet", "tool", "debug", "nothing much").await;
    let output = run(&server, &["context", "quiet", "--kinds", "plan"]).await;
    assert_exit(&output, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filters_and_follows_cursors_both_ways() {
    let server = TestServer::start().await;
    for index in 1..=5 {
        let severity = if index % 2 == 0 { "warning" } else { "info" };
        post(&server, "hist", "tool", severity, &format!("step {index}")).await;
    }
    post(&server, "hist", "llm", "info", "thinking").await;
    let seqs = |text: &str| -> Vec<u64> {
        json_lines(text)
            .iter()
            .map(|record| record["seq"].as_u64().unwrap())
            .collect()
    };

    let output = run(&server, &["events", "hist", "--limit", "2", "--json"]).await;
    assert_exit(&output, 0);
    assert_eq!(seqs(&stdout(&output)), [1, 2]);
    assert!(
        stderr(&output).contains("--after 2 for the next page, or --all"),
        "{}",
        stderr(&output)
    );

    let output = run(
        &server,
        &["events", "hist", "--limit", "2", "--all", "--json"],
    )
    .await;
    assert_exit(&output, 0);
    assert_eq!(seqs(&stdout(&output)), [1, 2, 3, 4, 5, 6]);
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));

    // Backwards from --before: pages come newest first, each in seq order.
    let backwards = ok(
        &server,
        &[
            "events", "hist", "--before", "6", "--limit", "2", "--all", "--json",
        ],
    )
    .await;
    assert_eq!(seqs(&backwards), [4, 5, 2, 3, 1]);

    let filtered = ok(
        &server,
        &[
            "events",
            "hist",
            "--kinds",
            "tool",
            "--min-severity",
            "warn",
            "--json",
        ],
    )
    .await;
    assert_eq!(seqs(&filtered), [2, 4]);
    let by_kind = ok(
        &server,
        &[
            "events",
            "hist",
            "--kinds",
            "llm,retry",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2999-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(
        by_kind.starts_with("#6 ") && by_kind.ends_with("[llm]: thinking\n"),
        "{by_kind}"
    );
    assert_eq!(by_kind.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_pinned_listed_paged_and_removed() {
    let server = TestServer::start().await;
    post(&server, "n", "tool", "info", "started").await;
    assert_eq!(
        ok(&server, &["notes", "add", "n", "user wants a patch"]).await,
        "pinned note 1 to n\n"
    );
    let out = ok(
        &server,
        &[
            "notes",
            "add",
            "n",
            "freeze\nuntil Friday",
            "--expires-at",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await;
    let note: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(note["id"], 2);
    assert_eq!(note["expires_at"], "2999-01-01T00:00:00.000000Z");

    let listed = ok(&server, &["notes", "list", "n"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(
        lines[0].starts_with("#1 ") && lines[0].ends_with(": user wants a patch"),
        "{listed}"
    );
    assert!(
        lines[1].starts_with("#2 ")
            && lines[1].contains(" until 2999-01-01T00:00:00.000000Z: freeze"),
        "{listed}"
    );
    assert_eq!(lines[2], "  until Friday");

    let output = run(&server, &["notes", "list", "n", "--limit", "1", "--json"]).await;
    assert_exit(&output, 0);
    assert_eq!(json_lines(&stdout(&output)).len(), 1);
    assert!(stderr(&output).contains("--after 1"), "{}", stderr(&output));
    let all = json_lines(
        &ok(
            &server,
            &["notes", "list", "n", "--limit", "1", "--all", "--json"],
        )
        .await,
    );
    let ids: Vec<u64> = all
        .iter()
        .map(|note| note["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);

    // The pinned note leads the context.
    let context = ok(&server, &["context", "n"]).await;
    assert!(
        context.starts_with("## Notes\n- user wants a patch\n"),
        "{context}"
    );

    assert_eq!(
        ok(&server, &["notes", "rm", "n", "1"]).await,
        "deleted note 1 of n\n"
    );
    let output = run(&server, &["notes", "rm", "n", "1"]).await;
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("has no note 1"),
        "{}",
        stderr(&output)
    );
    let output = run(
        &server,
        &[
            "notes",
            "add",
            "n",
            "too late",
            "--expires-at",
            "2000-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("already past"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        json_lines(&ok(&server, &["notes", "list", "n", "--json"]).await).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_listed_in_pages_shown_and_removed_and_retention_and_anomalies_are_set() {
    let server = TestServer::start().await;
    for name in ["team-a.one", "team-a.two", "team-b.one"] {
        post(&server, name, "tool", "info", "hello").await;
    }
    let table = ok(&server, &["streams", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].ends_with("LATEST EVENT"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[1].starts_with("team-a.one "), "{table}");

    let output = run(
        &server,
        &[
            "streams", "list", "--prefix", "team-a.", "--limit", "1", "--json",
        ],
    )
    .await;
    assert_exit(&output, 0);
    let page = json_lines(&stdout(&output));
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["name"], "team-a.one");
    assert!(
        stderr(&output).contains("--after team-a.one"),
        "{}",
        stderr(&output)
    );
    let all = json_lines(
        &ok(
            &server,
            &[
                "streams", "list", "--prefix", "team-a.", "--limit", "1", "--all", "--json",
            ],
        )
        .await,
    );
    let names: Vec<&str> = all.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-a.one", "team-a.two"]);
    let after = json_lines(
        &ok(
            &server,
            &["streams", "list", "--after", "team-a.two", "--json"],
        )
        .await,
    );
    assert_eq!(after.len(), 1);

    let shown = ok(&server, &["streams", "show", "team-b.one"]).await;
    assert!(
        shown.starts_with("stream       team-b.one\nrecords      1\nevents       1\n"),
        "{shown}"
    );
    assert!(shown.contains("kinds        tool=1\n"), "{shown}");
    assert!(
        shown.contains("retention    none (every record is kept)\n"),
        "{shown}"
    );

    assert_eq!(
        ok(
            &server,
            &[
                "retention",
                "team-b.one",
                "--max-records",
                "100",
                "--max-age",
                "7d"
            ]
        )
        .await,
        "retention of team-b.one: at most 100 records, none older than 1w\n"
    );
    let stats: Value =
        serde_json::from_str(&ok(&server, &["streams", "show", "team-b.one", "--json"]).await)
            .unwrap();
    assert_eq!(stats["retention"]["max_records"], 100);
    assert_eq!(stats["retention"]["max_age_seconds"], 604_800);
    let answer: Value = serde_json::from_str(
        &ok(
            &server,
            &["retention", "team-b.one", "--max-age", "90m", "--json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"max_records": null, "max_age_seconds": 5400})
    );
    assert_eq!(
        ok(&server, &["retention", "team-b.one", "--clear"]).await,
        "retention of team-b.one: none (every record is kept)\n"
    );

    assert_eq!(
        ok(
            &server,
            &[
                "anomalies",
                "team-b.one",
                "--on",
                "--repeat-actions",
                "5",
                "--stall",
                "off"
            ]
        )
        .await,
        "anomaly detection of team-b.one: on; repeats at 5 actions, oscillation at 3 cycles, recurring errors at 3 recurrences, stalls off\n"
    );
    let stats: Value =
        serde_json::from_str(&ok(&server, &["streams", "show", "team-b.one", "--json"]).await)
            .unwrap();
    assert_eq!(stats["anomalies"]["repeat_actions"], 5);
    assert_eq!(stats["anomalies"]["stall_seconds"], 0);
    assert_eq!(
        ok(&server, &["anomalies", "team-b.one", "--off"]).await,
        "anomaly detection of team-b.one: off\n"
    );
    let answer: Value = serde_json::from_str(
        &ok(
            &server,
            &["anomalies", "team-b.one", "--server-defaults", "--json"],
        )
        .await,
    )
    .unwrap();
    // The test server runs with detection off: back to the server's settings is off again.
    assert_eq!(answer["enabled"], false);
    assert_eq!(answer["repeat_actions"], 3);

    assert_eq!(
        ok(&server, &["streams", "rm", "team-b.one"]).await,
        "deleted stream team-b.one\n"
    );
    assert_eq!(server.get("/v1/streams/team-b.one").await.status, 404);
}

const KEYS: &str = r#"
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
async fn keys_come_from_the_flag_or_the_environment_and_refusals_say_why() {
    let server = TestServer::with_options(ServerOptions {
        keys: Some(Keys::parse(KEYS).unwrap()),
        ..ServerOptions::default()
    })
    .await;
    let admin = "admin-secret-0123456789";
    let output = run(
        &server,
        &["post", "k", "--kind", "tool", "hello", "--key", admin],
    )
    .await;
    assert_exit(&output, 0);

    let output = run(&server, &["streams", "list"]).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("401"), "{}", stderr(&output));
    let output = run(
        &server,
        &["events", "k", "--key", "wrong-secret-0123456789"],
    )
    .await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("401"), "{}", stderr(&output));

    let reader = [("RECAP_KEY", "reader-secret-0123456789")];
    let output = run_with(&server, &["streams", "list", "--json"], &reader, None).await;
    assert_exit(&output, 0);
    assert_eq!(json_lines(&stdout(&output))[0]["name"], "k");
    let output = run_with(
        &server,
        &["retention", "k", "--max-records", "5"],
        &reader,
        None,
    )
    .await;
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("lacks the admin scope"),
        "{}",
        stderr(&output)
    );
    let output = run_with(&server, &["metrics"], &reader, None).await;
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("recap_http_requests_total"));
    // The key is never shown in help.
    let output = run_with(&server, &["events", "--help"], &reader, None).await;
    assert!(
        !stdout(&output).contains("reader-secret"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_ok_and_an_unreachable_server_is_a_failure() {
    let server = TestServer::start().await;
    assert_eq!(ok(&server, &["health"]).await, "ok\n");
    let output = run(&server, &["health", "--server", "http://127.0.0.1:1"]).await;
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("cannot reach a recap server"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_pages_come_from_the_command_definitions() {
    let server = TestServer::start().await;
    for (shell, marker) in [
        ("bash", "_recap()"),
        ("zsh", "#compdef recap"),
        ("fish", "complete -c recap"),
    ] {
        let script = ok(&server, &["completions", shell]).await;
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        for command in ["retention", "streams", "notes", "min-severity"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    // bash reads the script without a syntax error.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("recap.bash");
    std::fs::write(&script, ok(&server, &["completions", "bash"]).await).unwrap();
    if let Ok(check) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
    {
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    let page = ok(&server, &["man"]).await;
    assert!(
        page.contains(".TH recap 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(
        page.contains("retention") && page.contains("Exit codes"),
        "{page}"
    );

    let pages = dir.path().join("man1");
    let output = run(&server, &["man", "--dir", pages.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    for name in [
        "recap.1",
        "recap-notes-add.1",
        "recap-streams-list.1",
        "recap-events.1",
    ] {
        let text =
            std::fs::read_to_string(pages.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            text.contains(".SH EXTRA") || name == "recap.1",
            "{name} has its examples"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_examples_and_serve_shows_its_defaults() {
    let server = TestServer::start().await;
    let help = ok(&server, &["serve", "--help"]).await;
    for default in [
        "[default: 127.0.0.1:7070]",
        "[default: ./recap-data]",
        "[default: 256MiB]",
        "Examples:",
    ] {
        assert!(help.contains(default), "{default}: {help}");
    }
    let help = ok(&server, &["context", "--help"]).await;
    assert!(
        help.contains("[default: 2000") && help.contains("Examples:"),
        "{help}"
    );
    let help = ok(&server, &["--help"]).await;
    assert!(help.contains("Exit codes: 0 ok, 1 failure"), "{help}");
}

/// The command a user runs for each HTTP route, or why there is none. A route added to the
/// server without a command (or a reason) fails here.
fn command_for(method: &str, route: &str) -> Result<&'static [&'static str], &'static str> {
    let command: &[&str] = match (method, route) {
        ("GET", "/healthz") => &["health"],
        ("GET", "/metrics") => &["metrics"],
        ("GET", "/v1/streams") => &["streams", "list"],
        ("GET", "/v1/streams/{s}") => &["streams", "show"],
        ("DELETE", "/v1/streams/{s}") => &["streams", "rm"],
        ("PUT", "/v1/streams/{s}/retention") => &["retention"],
        ("PUT", "/v1/streams/{s}/anomalies") => &["anomalies"],
        ("POST", "/v1/streams/{s}/events") => &["post"],
        ("GET", "/v1/streams/{s}/events") => &["events"],
        ("POST", "/v1/streams/{s}/records") => &["import"],
        ("GET", "/v1/streams/{s}/context") => &["context"],
        ("POST", "/v1/streams/{s}/notes") => &["notes", "add"],
        ("GET", "/v1/streams/{s}/notes") => &["notes", "list"],
        ("DELETE", "/v1/streams/{s}/notes/{id}") => &["notes", "rm"],
        ("GET", "/v1/streams/{s}/subscribe") => &["tail"],
        (_, "/mcp") => &["mcp"],
        (_, route) if route.starts_with("/api/v1/") => {
            return Err(
                "OpenIntent compatibility for its Python SDK; the same streams are served by the native commands",
            );
        }
        (_, route) if route.starts_with("/ui") => return Err("the web view, for a browser"),
        (_, "/openapi.json") => return Err("the API's description, for tools"),
        _ => return Ok(&[]),
    };
    Ok(command)
}

/// Every route the server describes in `GET /openapi.json` (built from its route table) has a
/// command whose help has examples, or a reason why not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_route_has_a_command() {
    let server = TestServer::start().await;
    let description = server.get("/openapi.json").await.json();
    let cli = recap::cli::command();
    let mut uncovered = Vec::new();
    let mut routes = 0;
    for (route, operations) in description["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if !["GET", "POST", "PUT", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            routes += 1;
            match command_for(&method, route) {
                Ok([]) => uncovered.push(format!("{method} {route}")),
                Ok(path) => {
                    let mut command = &cli;
                    for name in path.iter() {
                        command = command.find_subcommand(name).unwrap_or_else(|| {
                            panic!("{method} {route}: no `recap {}`", path.join(" "))
                        });
                    }
                    let help = command
                        .get_after_help()
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                    assert!(
                        help.contains("Examples:"),
                        "`recap {}` --help has no examples",
                        path.join(" ")
                    );
                }
                Err(reason) => assert!(!reason.is_empty()),
            }
        }
    }
    assert!(routes >= 20, "{routes} routes described");
    assert!(
        uncovered.is_empty(),
        "routes without a command: {uncovered:?}"
    );
}
