//! Several `recap serve` processes on one PostgreSQL database, as a team runs them behind a
//! load balancer: each test starts real server processes (`recap serve --database-url`) on
//! free loopback ports against a database of the run's throwaway cluster (see `pg_cluster`),
//! talks HTTP to them, and kills them by their pid when it ends.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::live_server::{DEADLINE, RawClient, Reply, raw_client, send};
use crate::pg_cluster;

/// One `recap serve` process; killed (SIGKILL, by its pid) and waited for when dropped.
struct Node {
    child: Child,
    url: String,
    http: RawClient,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts `recap serve` on `database_url` and returns once `/healthz` answers 200.
    async fn start(database_url: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_recap"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url, "--anomalies", "off"])
            // Not used with a database; given so that nothing lands in the working directory.
            .arg("--data")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("start recap serve");
        let mut node = Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: raw_client(),
            _dir: dir,
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("recap serve exited with {status}: {}", node.log());
            }
            let request = Request::get(format!("{}/healthz", node.url))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(1), node.http.request(request)).await
                && response.status() == StatusCode::OK
            {
                return node;
            }
            assert!(started.elapsed() < DEADLINE, "no /healthz: {}", node.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// Sends a request; the body is read whole.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let content_type = (!body.is_empty()).then_some("application/json");
        let url = format!("{}{path}", self.url);
        send(
            &self.http,
            method,
            &url,
            content_type,
            body.to_owned(),
            headers,
        )
        .await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path, "", headers).await
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        self.request(Method::POST, path, body, &[]).await
    }

    /// Opens an SSE feed; frames are read with [`Feed::until`].
    async fn subscribe(&self, path: &str, headers: &[(&str, &str)]) -> Feed {
        let mut request = Request::get(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(
            DEADLINE,
            self.http
                .request(request.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Feed {
            body: response.into_body(),
            text: String::new(),
        }
    }

    /// Kills the process at once (SIGKILL), as a crash or the OOM killer would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An open SSE response.
struct Feed {
    body: hyper::body::Incoming,
    text: String,
}

impl Feed {
    /// Reads until `done` holds for the frames received so far (bounded by the deadline);
    /// returns them.
    async fn until(&mut self, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frames = frames(&self.text);
            if done(&frames) {
                return frames;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("the feed did not get there; it sent:\n{}", self.text))
                .expect("the feed is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

/// One `id:`/`event:`/`data:` frame of an SSE text (comments left out).
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    id: u64,
    event: String,
    data: Value,
}

fn frames(text: &str) -> Vec<Frame> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|line| line.starts_with("event:")))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            };
            Frame {
                id: field("id:").parse().unwrap_or(0),
                event: field("event:"),
                data: serde_json::from_str(&field("data:")).unwrap_or(Value::Null),
            }
        })
        .collect()
}

/// Events of a batch: `count` info events of kind `step`, each message unique by `tag` and
/// index.
fn batch(tag: &str, count: usize) -> String {
    let events: Vec<Value> = (0..count)
        .map(|index| serde_json::json!({"kind": "step", "message": format!("{tag} {index}")}))
        .collect();
    Value::Array(events).to_string()
}

fn revision_of(reply: &Reply) -> u64 {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["revision"].as_u64().unwrap()
}

/// Every stored record of a stream, through `node`'s history pages.
async fn all_messages(node: &Node, stream: &str) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let reply = node
            .get(
                &format!("/v1/streams/{stream}/events?after={after}&limit=1000"),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let page = reply.json();
        for record in page["records"].as_array().unwrap() {
            out.push((
                record["seq"].as_u64().unwrap(),
                record["message"].as_str().unwrap().to_owned(),
                record["repeat_count"].as_u64().unwrap(),
            ));
        }
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// What a team relies on from two nodes behind a load balancer: a write through one is read
/// through the other (with `X-Recap-Min-Revision`), contexts are the same bytes on both,
/// changes written through either reach a subscriber on the other in revision order, a feed
/// resumes on the other node, and writers on both nodes to one stream keep seqs dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_database() {
    let Some(url) = pg_cluster::database("serve_two_nodes") else {
        return;
    };
    let (a, b) = tokio::join!(Node::start(&url), Node::start(&url));

    // A subscriber on B before anything is written.
    let mut feed_b = b.subscribe("/v1/streams/shared/subscribe", &[]).await;

    // Read-your-writes through the other node.
    let wrote = a
        .post(
            "/v1/streams/shared/events",
            r#"[{"kind": "task", "message": "ship the release"}, {"kind": "error", "severity": "error", "message": "build failed: linker not found"}]"#,
        )
        .await;
    let revision = revision_of(&wrote);
    let min = revision.to_string();
    let context = "/v1/streams/shared/context?budget=400";
    let on_b = b.get(context, &[("x-recap-min-revision", &min)]).await;
    assert_eq!(on_b.status, StatusCode::OK, "{}", on_b.text());
    assert!(on_b.text().contains("build failed"), "{}", on_b.text());
    let on_a = a.get(context, &[]).await;
    assert_eq!(on_a.text(), on_b.text(), "contexts differ across nodes");
    assert!(
        on_b.header("x-recap-revision")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= revision
    );
    let history = b
        .get(
            &format!("/v1/streams/shared/events?min_revision={revision}"),
            &[],
        )
        .await;
    assert_eq!(history.json()["records"].as_array().unwrap().len(), 2);

    // Writes through both nodes reach B's subscriber, each once, in revision order.
    let mut written = revision;
    for round in 0..3 {
        let through = if round % 2 == 0 { &a } else { &b };
        written = revision_of(
            &through
                .post("/v1/streams/shared/events", &batch("round", 2))
                .await,
        );
        // A repeat: collapses into the previous record on whichever node.
        written = revision_of(
            &through
                .post("/v1/streams/shared/events", &batch("round", 2))
                .await,
        )
        .max(written);
    }
    let seen = feed_b
        .until(|frames| frames.last().is_some_and(|frame| frame.id >= written))
        .await;
    let ids: Vec<u64> = seen.iter().map(|frame| frame.id).collect();
    assert_eq!(ids, (1..=written).collect::<Vec<_>>(), "{seen:?}");
    assert!(seen.iter().any(|frame| frame.event == "repeat"), "{seen:?}");

    // Resuming on the other node: exactly what came after.
    let mut feed_a = a
        .subscribe(
            "/v1/streams/shared/subscribe",
            &[("last-event-id", &(written - 2).to_string())],
        )
        .await;
    let resumed = feed_a
        .until(|frames| frames.last().is_some_and(|frame| frame.id >= written))
        .await;
    assert_eq!(
        resumed,
        seen[seen.len() - 2..].to_vec(),
        "a resume on another node sends what the first node sent"
    );

    // A revision that never comes: a bounded wait, then 503 with Retry-After.
    let ahead = (written + 100).to_string();
    let behind = b.get(context, &[("x-recap-min-revision", &ahead)]).await;
    behind.assert_error(503, "behind", None);
    assert_eq!(behind.header("retry-after"), Some("1"));

    // Writers on both nodes at once, to one stream: dense seqs, every event counted once.
    let (from_a, from_b) = tokio::join!(
        async {
            for index in 0..10 {
                revision_of(
                    &a.post("/v1/streams/busy/events", &batch(&format!("a{index}"), 5))
                        .await,
                );
            }
        },
        async {
            for index in 0..10 {
                revision_of(
                    &b.post("/v1/streams/busy/events", &batch(&format!("b{index}"), 5))
                        .await,
                );
            }
        }
    );
    let ((), ()) = (from_a, from_b);
    let records = all_messages(&a, "busy").await;
    let seqs: Vec<u64> = records.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let stats = b.get("/v1/streams/busy", &[]).await.json();
    assert_eq!(stats["events"], 100);

    // Both nodes list both streams and report the database.
    let listed = b.get("/v1/streams", &[]).await.json();
    let names: Vec<&str> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stream| stream["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["busy", "shared"]);
    // A NUL (which PostgreSQL text cannot hold) in the cursor pages as it does on redb.
    let after_nul = b.get("/v1/streams?after=busy%00", &[]).await;
    assert_eq!(after_nul.status, StatusCode::OK, "{}", after_nul.text());
    assert_eq!(after_nul.json()["streams"][0]["name"], "shared");
    let metrics = a.get("/metrics", &[]).await.text();
    assert!(metrics.contains("recap_database_up 1"), "{metrics}");
    // A stream's anomaly settings, set through one node, are in force on the other.
    let set = a
        .request(
            Method::PUT,
            "/v1/streams/busy/anomalies",
            r#"{"stall_seconds": 900}"#,
            &[],
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let stats = b.get("/v1/streams/busy", &[]).await.json();
    assert_eq!(stats["anomalies"]["stall_seconds"], 900, "{stats}");

    // A node pointed at a database that does not exist says so, and does not start.
    let missing = url.rsplit_once('/').unwrap().0.to_owned() + "/no_such_database";
    let output = Command::new(env!("CARGO_BIN_EXE_recap"))
        .args(["serve", "--addr", "127.0.0.1:0", "--database-url", &missing])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(r#"database "no_such_database" does not exist"#),
        "{stderr}"
    );
}

/// DESIGN section 4 on several nodes: a node killed with SIGKILL while clients write through
/// it loses no acknowledged event; the other node serves every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_acknowledged_event() {
    let Some(url) = pg_cluster::database("serve_sigkill") else {
        return;
    };
    let (mut a, b) = tokio::join!(Node::start(&url), Node::start(&url));
    let acknowledged = Mutex::new(BTreeSet::new());
    let writers = async {
        let mut sent = 0;
        // Writes through A until it dies; each acknowledged message is remembered.
        loop {
            let tag = format!("w{sent}");
            let request = Request::post(format!("{}/v1/streams/crash/events", a.url))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(batch(&tag, 3))))
                .unwrap();
            let Ok(response) = a.http.request(request).await else {
                return sent;
            };
            if response.status() == StatusCode::OK {
                let mut acked = acknowledged.lock().unwrap();
                for index in 0..3 {
                    acked.insert(format!("{tag} {index}"));
                }
            }
            sent += 1;
        }
    };
    let pid = a.child.id().to_string();
    let killer = async {
        // Lets some writes through, then kills mid-stream.
        while acknowledged.lock().unwrap().len() < 150 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
        assert!(killed.success());
    };
    let (sent, ()) = tokio::join!(writers, killer);
    a.kill();
    assert!(sent > 0);
    let stored: BTreeSet<String> = all_messages(&b, "crash")
        .await
        .into_iter()
        .map(|(_, message, _)| message)
        .collect();
    let acknowledged = acknowledged.into_inner().unwrap();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    assert!(acknowledged.len() >= 150);
}

/// A database restart under load: writes during the outage are refused (503, never
/// acknowledged), every acknowledged write survives, and the node serves again by itself once
/// the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_acknowledged() {
    let Some(cluster) = pg_cluster::private("serve_db_restart") else {
        return;
    };
    let url = cluster.0.create_database("serve_db_restart");
    let node = Arc::new(Node::start(&url).await);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // The writer runs on a task of its own, so that it goes on while this one restarts the
    // database.
    let writer = tokio::spawn({
        let (node, acknowledged, stop) = (node.clone(), acknowledged.clone(), stop.clone());
        async move {
            let (mut sent, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let tag = format!("w{sent}");
                let reply = node
                    .post("/v1/streams/outage/events", &batch(&tag, 2))
                    .await;
                match reply.status {
                    StatusCode::OK => {
                        let mut acked = acknowledged.lock().unwrap();
                        acked.insert(format!("{tag} 0"));
                        acked.insert(format!("{tag} 1"));
                    }
                    StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            refused
        }
    });
    let acked = || acknowledged.lock().unwrap().len();
    let started = tokio::time::Instant::now();
    while acked() < 50 {
        assert!(started.elapsed() < DEADLINE, "no writes acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| cluster.0.restart());
    // Writes succeed again by themselves.
    let resumed_from = acked();
    let restarted = tokio::time::Instant::now();
    while acked() < resumed_from + 50 {
        assert!(restarted.elapsed() < DEADLINE, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let refused = writer.await.unwrap();
    let stored: BTreeSet<String> = all_messages(&node, "outage")
        .await
        .into_iter()
        .map(|(_, message, _)| message)
        .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    let health = node.get("/healthz", &[]).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    eprintln!("writes refused during the restart: {refused}");
}

/// The streams list on PostgreSQL pages exactly as on redb: every combination of `after`,
/// `prefix` and `limit` over names that sort differently by byte and by locale, with each
/// stream's statistics (live notes counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_list_pages_as_on_redb() {
    let Some(url) = pg_cluster::database("serve_list") else {
        return;
    };
    let node = Node::start(&url).await;
    let redb = crate::live_server::TestServer::start().await;
    let names = ["a", "ab", "abc", "B", "b-3", "b.2", "b:1", "b_4", "ba", "z"];
    for name in names {
        let event = r#"{"kind": "step", "message": "one"}"#;
        let path = format!("/v1/streams/{name}/events");
        revision_of(&node.post(&path, event).await);
        revision_of(&redb.post_json(&path, event).await);
    }
    for note in [
        r#"{"text": "forever"}"#,
        r#"{"text": "for a while", "expires_at": "2999-01-01T00:00:00Z"}"#,
    ] {
        assert_eq!(node.post("/v1/streams/ab/notes", note).await.status, 201);
        assert_eq!(
            redb.post_json("/v1/streams/ab/notes", note).await.status,
            201
        );
    }
    let summary = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let page = reply.json();
        let streams: Vec<(String, u64, u64)> = page["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap().to_owned();
                (
                    name,
                    s["records"].as_u64().unwrap(),
                    s["notes"].as_u64().unwrap(),
                )
            })
            .collect();
        (streams, page["next"].clone())
    };
    for prefix in ["", "a", "ab", "b", "b.", "zz"] {
        for after in ["", "a", "ab", "b", "b-3", "b:1", "y"] {
            for limit in [1, 2, 1000] {
                let mut path = format!("/v1/streams?limit={limit}");
                if !prefix.is_empty() {
                    path.push_str(&format!("&prefix={prefix}"));
                }
                if !after.is_empty() {
                    path.push_str(&format!("&after={after}"));
                }
                let on_pg = summary(node.get(&path, &[]).await);
                let on_redb = summary(redb.get(&path).await);
                assert_eq!(on_pg, on_redb, "{path}");
            }
        }
    }
    let all = summary(node.get("/v1/streams", &[]).await).0;
    assert_eq!(all.len(), names.len());
    // Each note is also logged as a record.
    assert!(all.contains(&("ab".to_owned(), 3, 2)), "{all:?}");
}
