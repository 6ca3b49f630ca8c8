//! SSE edge cases against a real server on 127.0.0.1:0, read on a raw socket so that comments
//! show: keepalives reach a quiet subscriber while other streams are busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use recap::server::ServerOptions;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::live_server::{DEADLINE, TestServer};

/// An SSE response on a raw socket: everything that arrived so far, comments included.
struct RawFeed {
    tcp: TcpStream,
    text: String,
}

impl RawFeed {
    /// Subscribes at `path` (with `Last-Event-ID: resume` when given) and waits until the feed
    /// is set up.
    async fn open(server: &TestServer, path: &str, resume: Option<u64>) -> RawFeed {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let resume = resume
            .map(|id| format!("last-event-id: {id}\r\n"))
            .unwrap_or_default();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{resume}\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut feed = RawFeed {
            tcp,
            text: String::new(),
        };
        feed.read_until(|feed| feed.text.contains(": subscribed\n\n"))
            .await;
        assert!(feed.text.starts_with("HTTP/1.1 200"), "{}", feed.text);
        feed
    }

    /// Reads until `done` holds; failing at the deadline.
    async fn read_until(&mut self, done: impl Fn(&RawFeed) -> bool) {
        tokio::time::timeout(DEADLINE, async {
            while !done(self) {
                self.read_some().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not seen before the deadline: {}", self.text));
    }

    /// Reads whatever arrives within `window`.
    async fn read_for(&mut self, window: Duration) {
        let _ = tokio::time::timeout(window, async {
            loop {
                self.read_some().await;
            }
        })
        .await;
    }

    async fn read_some(&mut self) {
        let mut buffer = [0u8; 4096];
        let read = self.tcp.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the feed closed: {}", self.text);
        self.text
            .push_str(&String::from_utf8_lossy(&buffer[..read]));
    }

    /// `: keepalive` comments so far.
    fn keepalives(&self) -> usize {
        self.text.matches(": keepalive\n\n").count()
    }
}

/// Posts `count` events to `stream` in one request (one commit), messages `{label} 1..`.
async fn post(server: &TestServer, stream: &str, label: &str, count: usize) {
    let events: Vec<Value> = (1..=count)
        .map(|n| serde_json::json!({"kind": "tool", "message": format!("{label} {n}")}))
        .collect();
    let reply = server
        .post_json(
            &format!("/v1/streams/{stream}/events"),
            &Value::from(events).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_reach_a_quiet_subscriber_while_another_stream_is_busy() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Arc::new(TestServer::with_options(options).await);
    let mut feed = RawFeed::open(&server, "/v1/streams/quiet/subscribe", None).await;

    // Every commit wakes every feed; before the fix each one put the quiet feed's keepalive off.
    let stop = Arc::new(AtomicBool::new(false));
    let posts = Arc::new(AtomicUsize::new(0));
    let busy = tokio::spawn({
        let (server, stop, posts) = (server.clone(), stop.clone(), posts.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                post(&server, "busy", "busy", 1).await;
                posts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let before = posts.load(Ordering::Relaxed);
    feed.read_for(Duration::from_secs(2)).await;
    let during = posts.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    busy.await.unwrap();

    assert!(during > 0, "the busy stream took no events meanwhile");
    assert!(
        feed.keepalives() >= 2,
        "{} keepalives in 2 s at a 300 ms interval while `busy` took {during} posts: {}",
        feed.keepalives(),
        feed.text
    );
    assert!(
        !feed.text.contains("data: "),
        "no frames on `quiet`: {}",
        feed.text
    );
}
