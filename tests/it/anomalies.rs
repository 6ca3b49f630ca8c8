//! Anomaly detection at ingest, through a real server: each pattern raises exactly one
//! `anomaly` record per episode, updated while the episode lasts, visible in history, in the
//! context window at 400 tokens and in the SSE feed; the detectors' state survives a restart;
//! streams turn detection off or tune it; imports are not observed.

use http::Method;
use recap::client::tail;
use recap::event::StreamName;
use serde_json::{Value, json};

use crate::live_server::{DEADLINE, TestServer};

/// `n` seconds after the traces' epoch, as RFC 3339.
fn at(seconds: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z").unwrap();
    (base + chrono::TimeDelta::seconds(seconds)).to_rfc3339()
}

fn event(kind: &str, severity: &str, message: &str, seconds: i64) -> Value {
    json!({"kind": kind, "severity": severity, "message": message, "ts": at(seconds)})
}

async fn post(server: &TestServer, stream: &str, events: &[Value]) {
    let reply = server
        .post_json(
            &format!("/v1/streams/{stream}/events"),
            &Value::Array(events.to_vec()).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

async fn anomalies(server: &TestServer, stream: &str) -> Vec<Value> {
    let reply = server
        .get(&format!("/v1/streams/{stream}/events?kinds=anomaly"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["records"].as_array().unwrap().clone()
}

/// The patterns: a stream's events, the detector that must fire, and words its message has.
fn patterns() -> Vec<(&'static str, Vec<Value>, &'static str, &'static str)> {
    // The same click six times, each with a different page in between.
    let repeat: Vec<Value> = (0..6)
        .flat_map(|i| {
            [
                event("action", "info", "click #submit", 2 * i),
                event("observation", "info", &format!("page v{i}"), 2 * i + 1),
            ]
        })
        .collect();
    // Back and forth between two pages, their numbers changing.
    let oscillation: Vec<Value> = (0..8)
        .map(|i| {
            let message = if i % 2 == 0 {
                format!("open page {}", 10 + i)
            } else {
                "go back".to_owned()
            };
            event("action", "info", &message, i)
        })
        .collect();
    // The same timeout after every retry.
    let recurring: Vec<Value> = (0..4)
        .flat_map(|i| {
            [
                event(
                    "tool",
                    "error",
                    &format!("search timed out after {}s", 30 + i),
                    2 * i,
                ),
                event("retry", "warning", &format!("retry {}/5", i + 1), 2 * i + 1),
            ]
        })
        .collect();
    // Twenty minutes of silence.
    let stall = vec![
        event("llm", "info", "asking the model", 0),
        event("llm", "info", "the model answered", 1_200),
        event("llm", "info", "next step", 1_201),
    ];
    vec![
        ("repeat", repeat, "repeat", "likely a loop"),
        (
            "oscillation",
            oscillation,
            "oscillation",
            "alternate between",
        ),
        ("recurring", recurring, "recurring_error", "came back"),
        ("stall", stall, "stall", "may have stalled"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pattern_raises_one_record_seen_in_history_the_window_and_the_feed() {
    let server = TestServer::with_anomalies().await;
    for (stream, events, detector, words) in patterns() {
        // One event per request, as an agent posts them.
        for event in &events {
            post(&server, stream, std::slice::from_ref(event)).await;
        }
        let raised = anomalies(&server, stream).await;
        assert_eq!(raised.len(), 1, "{stream}: {raised:#?}");
        let record = &raised[0];
        assert_eq!(record["actor"], "recap", "{record}");
        assert_eq!(record["payload"]["detector"], detector, "{record}");
        assert!(
            record["message"].as_str().unwrap().contains(words),
            "{record}"
        );
        let seqs = record["payload"]["seqs"].as_array().unwrap();
        assert!(!seqs.is_empty(), "{record}");
        let first = record["payload"]["first_seq"].as_u64().unwrap();
        let named: Vec<u64> = seqs.iter().map(|seq| seq.as_u64().unwrap()).collect();
        assert!(
            named.windows(2).all(|pair| pair[0] < pair[1]) && first <= named[0],
            "distinct, ascending, from where the episode began: {record}"
        );

        // In the window at 400 tokens, ranked as an anomaly.
        let reply = server
            .get(&format!("/v1/streams/{stream}/context?budget=400"))
            .await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert!(
            text.contains("[anomaly]") && text.contains(words),
            "{stream}: {text}"
        );

        // In the feed, from the start: created once, then only repeats of that record.
        let client = server.client(None);
        let name = StreamName::new(stream).unwrap();
        let mut feed = tail::subscribe(&client, &name, Some(0)).await.unwrap();
        let seq = record["seq"].as_u64().unwrap();
        let revision = record["revision"].as_u64().unwrap();
        let (mut created, mut repeats) = (0, 0);
        loop {
            let event = tokio::time::timeout(DEADLINE, feed.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let data: Value = serde_json::from_str(&event.data).unwrap();
            if data["seq"].as_u64() == Some(seq) {
                match event.event.as_str() {
                    "record" => {
                        assert_eq!(data["kind"], "anomaly");
                        created += 1;
                    }
                    "repeat" => repeats += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            if event.id.as_deref() == Some(&revision.to_string()) {
                break;
            }
        }
        assert_eq!(created, 1, "{stream}");
        assert_eq!(
            repeats + 1,
            record["repeat_count"].as_u64().unwrap(),
            "{stream}: every update is a repeat of the one record"
        );
    }

    // The repeat episode went on past twice its threshold: raised to error, counted as events.
    let raised = anomalies(&server, "repeat").await;
    assert_eq!(raised[0]["severity"], "error", "{:#?}", raised[0]);
    assert_eq!(
        raised[0]["repeat_count"], 4,
        "raised at the third click, updated at each next"
    );
    let stats = server.get("/v1/streams/repeat").await.json();
    assert_eq!(stats["kinds"]["anomaly"], 4, "{stats}");
    assert_eq!(stats["events"], 12 + 4, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_episode_is_a_new_record_and_state_survives_a_restart() {
    let server = TestServer::with_anomalies().await;
    let clicks = |from: i64, count: i64, what: &str| -> Vec<Value> {
        (from..from + count)
            .map(|i| event("action", "info", what, i))
            .collect()
    };
    // Two clicks, a restart, and a third: the run was kept in the stream's metadata.
    post(&server, "s", &clicks(0, 2, "click #submit")).await;
    let server = server.restart().await;
    post(&server, "s", &clicks(2, 1, "click #submit")).await;
    assert_eq!(anomalies(&server, "s").await.len(), 1);
    let server = server.restart().await;
    post(&server, "s", &clicks(3, 1, "click #submit")).await;
    let raised = anomalies(&server, "s").await;
    assert_eq!(raised.len(), 1, "the same episode, updated: {raised:#?}");
    assert_eq!(raised[0]["repeat_count"], 2);
    // Another action ends the episode; a new run is a new episode, a new record.
    post(&server, "s", &clicks(4, 1, "click #cancel")).await;
    post(&server, "s", &clicks(5, 3, "scroll down")).await;
    let raised = anomalies(&server, "s").await;
    assert_eq!(raised.len(), 2, "{raised:#?}");
    assert!(
        raised[1]["message"]
            .as_str()
            .unwrap()
            .contains("scroll down")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_turn_detection_off_or_tune_it_and_imports_are_not_observed() {
    let server = TestServer::with_anomalies().await;
    let put = |stream: &'static str, body: &'static str| {
        let server = &server;
        async move {
            server
                .request(
                    Method::PUT,
                    &format!("/v1/streams/{stream}/anomalies"),
                    Some("application/json"),
                    body,
                    &[],
                )
                .await
        }
    };
    put("nowhere", "{}")
        .await
        .assert_error(404, "unknown_stream", None);
    let clicks: Vec<Value> = (0..5)
        .map(|i| event("action", "info", "click #submit", i))
        .collect();

    post(&server, "off", &clicks[..1]).await;
    let reply = put("off", r#"{"enabled": false}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["enabled"], false);
    post(&server, "off", &clicks[1..]).await;
    assert!(anomalies(&server, "off").await.is_empty());

    post(&server, "tuned", &clicks[..1]).await;
    let reply = put("tuned", r#"{"repeat_actions": 5}"#).await;
    assert_eq!(reply.json()["repeat_actions"], 5);
    assert_eq!(
        reply.json()["stall_seconds"],
        300,
        "the rest follows the server"
    );
    post(&server, "tuned", &clicks[1..4]).await;
    assert!(anomalies(&server, "tuned").await.is_empty());
    post(&server, "tuned", &clicks[4..]).await;
    assert_eq!(anomalies(&server, "tuned").await.len(), 1);
    let stats = server.get("/v1/streams/tuned").await.json();
    assert_eq!(stats["anomalies"]["repeat_actions"], 5, "{stats}");

    put("tuned", r#"{"repeat_actions": 1}"#).await.assert_error(
        400,
        "invalid_field",
        Some("repeat_actions"),
    );
    put("tuned", r#"{"loops": 1}"#)
        .await
        .assert_error(400, "unknown_field", Some("loops"));

    // An import brings records as they were: nothing is detected on them.
    let records: String = (0..5)
        .map(|i| {
            json!({"seq": i + 1, "kind": "action", "severity": "info", "message": "click #submit",
                   "first_ts": at(i), "last_ts": at(i), "repeat_count": 1, "revision": i + 1})
            .to_string()
                + "\n"
        })
        .collect();
    let reply = server
        .request(
            Method::POST,
            "/v1/streams/imported/records",
            Some("application/x-ndjson"),
            records,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(anomalies(&server, "imported").await.is_empty());
}
