//! SSE edge cases against a real server on 127.0.0.1:0, read on a raw socket so that comments
//! show: keepalives reach a quiet subscriber while other streams are busy, and a resume point
//! that is not a revision of the stream as it is now (beyond its revision, or of a stream
//! deleted and created again) gets a reset and the stream from its start, never a silent skip.
//! Subscribers hear only of their own stream; one that stops reading is dropped to the changelog
//! and cut off, and resumes exactly where it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use recap::server::ServerOptions;
use recap::store::MAX_LAG_BYTES;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::live_server::{DEADLINE, TestServer};

/// One SSE frame with data, as the client got it.
#[derive(Debug)]
struct Frame {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// An SSE response on a raw socket: everything that arrived so far, comments included.
struct RawFeed {
    tcp: TcpStream,
    text: String,
}

impl RawFeed {
    /// Subscribes at `path` (with `Last-Event-ID: resume` when given) and waits until the feed
    /// is set up.
    async fn open(server: &TestServer, path: &str, resume: Option<u64>) -> RawFeed {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        RawFeed::open_on(tcp, path, resume).await
    }

    /// Subscribes like [`RawFeed::open`], on a socket with a small receive buffer: a client
    /// that stops reading backs up into the server's buffers sooner.
    async fn open_small(server: &TestServer, path: &str, resume: Option<u64>) -> RawFeed {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8 * 1024).unwrap();
        let tcp = socket.connect(server.addr).await.unwrap();
        RawFeed::open_on(tcp, path, resume).await
    }

    async fn open_on(mut tcp: TcpStream, path: &str, resume: Option<u64>) -> RawFeed {
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

    /// Reads until `needle` arrives at or after byte `from`, looking only at what is new each
    /// time (feeds of many megabytes); returns where it starts.
    async fn read_until_seen(&mut self, needle: &str, mut from: usize) -> usize {
        let needle = needle.as_bytes();
        tokio::time::timeout(DEADLINE, async {
            loop {
                let text = &self.text.as_bytes()[from.min(self.text.len())..];
                if let Some(at) = text.windows(needle.len()).position(|w| w == needle) {
                    return from + at;
                }
                from = self.text.len().saturating_sub(needle.len() - 1).max(from);
                self.read_some().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not seen before the deadline: {}", self.tail()))
    }

    /// Reads until the whole frame with `id: revision` has arrived.
    async fn read_through_frame(&mut self, revision: u64) {
        let at = self.read_until_seen(&format!("id: {revision}\n"), 0).await;
        self.read_until_seen("\n\n", at).await;
    }

    /// The last few hundred bytes read, for failure messages.
    fn tail(&self) -> &str {
        let start = self.text.len().saturating_sub(600);
        self.text.get(start..).unwrap_or(&self.text)
    }

    async fn read_some(&mut self) {
        let mut buffer = [0u8; 64 * 1024];
        let read = self.tcp.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the feed closed: {}", self.text);
        self.text
            .push_str(&String::from_utf8_lossy(&buffer[..read]));
    }

    /// `: keepalive` comments so far.
    fn keepalives(&self) -> usize {
        self.text.matches(": keepalive\n\n").count()
    }

    /// The frames with data so far, in order. The body is chunked, but each frame is one chunk:
    /// the chunk sizes are lines of their own, which no field name matches.
    fn frames(&self) -> Vec<Frame> {
        let body = &self.text[self.text.find("\r\n\r\n").unwrap() + 4..];
        body.split("\n\n")
            .filter_map(|frame| {
                let field = |name: &str| frame.lines().find_map(|line| line.strip_prefix(name));
                let data = field("data: ")?;
                Some(Frame {
                    id: field("id: ").map(|id| id.parse().unwrap()),
                    event: field("event: ").unwrap_or("message").to_owned(),
                    data: serde_json::from_str(data).unwrap(),
                })
            })
            .collect()
    }

    /// Waits for `count` frames with data and returns them.
    async fn frames_after(&mut self, count: usize) -> Vec<Frame> {
        self.read_until(|feed| feed.frames().len() >= count).await;
        self.frames()
    }
}

/// Posts `count` events to `stream` in one request (one commit), messages `{label} 1..`.
async fn post(server: &TestServer, stream: &str, label: &str, count: usize) {
    post_padded(server, stream, label, count, 0).await;
}

/// Posts like [`post`], each message followed by `padding` bytes of `x`.
async fn post_padded(server: &TestServer, stream: &str, label: &str, count: usize, padding: usize) {
    let pad = "x".repeat(padding);
    let events: Vec<Value> = (1..=count)
        .map(|n| {
            let mut message = format!("{label} {n}");
            if padding > 0 {
                message = format!("{message} {pad}");
            }
            serde_json::json!({"kind": "tool", "message": message})
        })
        .collect();
    let reply = server
        .post_json(
            &format!("/v1/streams/{stream}/events"),
            &Value::from(events).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

async fn delete(server: &TestServer, stream: &str) {
    let reply = server
        .request(
            http::Method::DELETE,
            &format!("/v1/streams/{stream}"),
            None,
            bytes::Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
}

/// Asserts a reset frame: the client's position `after` is not valid, resume from the start.
fn assert_reset(frame: &Frame, after: u64) {
    assert_eq!(frame.event, "gap", "{frame:?}");
    assert_eq!(
        frame.id,
        Some(0),
        "a reconnect after it starts over: {frame:?}"
    );
    assert_eq!(frame.data["reset"], true, "{frame:?}");
    assert_eq!(frame.data["after"], after, "{frame:?}");
    assert_eq!(frame.data["next"], 1, "{frame:?}");
}

/// Asserts record frames with these revisions and messages, each id its record's revision.
fn assert_records(frames: &[Frame], expected: &[(u64, &str)]) {
    let seen: Vec<(u64, String)> = frames
        .iter()
        .map(|frame| {
            assert_eq!(frame.event, "record", "{frame:?}");
            assert_eq!(frame.id, frame.data["revision"].as_u64(), "{frame:?}");
            (
                frame.id.unwrap(),
                frame.data["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = expected
        .iter()
        .map(|&(id, message)| (id, message.to_owned()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_reach_a_quiet_subscriber_while_another_stream_is_busy() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Arc::new(TestServer::with_options(options).await);
    let mut feed = RawFeed::open(&server, "/v1/streams/quiet/subscribe", None).await;

    // Commits to other streams once woke every feed, and each put the quiet feed's keepalive off.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_beyond_the_revision_gets_a_reset_and_the_stream_from_its_start() {
    let server = TestServer::start().await;
    post(&server, "s", "event", 3).await;

    // By header and by query: the same reset, then revisions 1 to 3, then the live feed.
    let mut by_header = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(100)).await;
    let mut by_query = RawFeed::open(&server, "/v1/streams/s/subscribe?after=100", None).await;
    post(&server, "s", "live", 1).await;
    for feed in [&mut by_header, &mut by_query] {
        let frames = feed.frames_after(5).await;
        assert_eq!(frames.len(), 5, "{}", feed.text);
        assert_reset(&frames[0], 100);
        // Regression (issue 14): nothing was deleted, and the reset does not say so.
        let message = frames[0].data["message"].as_str().unwrap();
        assert!(
            message.contains("past this stream's latest revision (3)")
                && !message.contains("was deleted"),
            "{message}"
        );
        assert_records(
            &frames[1..],
            &[
                (1, "event 1"),
                (2, "event 2"),
                (3, "event 3"),
                (4, "live 1"),
            ],
        );
    }

    // A resume point at the revision is not stale: nothing is replayed, nothing reset.
    let mut current = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(4)).await;
    post(&server, "s", "next", 1).await;
    let frames = current.frames_after(1).await;
    assert_records(&frames, &[(5, "next 1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_a_revision_of_a_deleted_stream_gets_a_reset_and_the_new_stream() {
    let server = TestServer::start().await;
    post(&server, "s", "old", 6).await;
    delete(&server, "s").await;

    // The stream is gone: the old position is reset, and the new stream comes from revision 1.
    let mut gone = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(6)).await;
    post(&server, "s", "new", 2).await;
    let frames = gone.frames_after(3).await;
    assert_reset(&frames[0], 6);
    assert_records(&frames[1..], &[(1, "new 1"), (2, "new 2")]);

    // Created again and at revision 2: Last-Event-ID 6 is not skipped to.
    let mut again = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(6)).await;
    let frames = again.frames_after(3).await;
    assert_reset(&frames[0], 6);
    assert_records(&frames[1..], &[(1, "new 1"), (2, "new 2")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_across_delete_and_create_gets_a_reset_and_every_new_revision() {
    let server = TestServer::start().await;
    post(&server, "s", "old", 2).await;
    let mut feed = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(0)).await;
    assert_eq!(feed.frames_after(2).await.len(), 2);

    // The new stream's first commit has revisions 1 to 5, past the 2 the client holds.
    delete(&server, "s").await;
    post(&server, "s", "new", 5).await;
    let frames = feed.frames_after(8).await;
    assert_eq!(frames.len(), 8, "{}", feed.text);
    assert_records(&frames[..2], &[(1, "old 1"), (2, "old 2")]);
    assert_reset(&frames[2], 2);
    let message = frames[2].data["message"].as_str().unwrap();
    assert!(message.contains("was deleted"), "{message}");
    assert_records(
        &frames[3..],
        &[
            (1, "new 1"),
            (2, "new 2"),
            (3, "new 3"),
            (4, "new 4"),
            (5, "new 5"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_deleted_stream_is_told_at_the_next_keepalive() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    post(&server, "s", "old", 3).await;
    let mut feed = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(1)).await;
    assert_eq!(feed.frames_after(2).await.len(), 2);

    // No change says a stream was deleted; the idle feed notices and resets the client.
    delete(&server, "s").await;
    let frames = feed.frames_after(3).await;
    assert_reset(&frames[2], 3);

    // Then it follows the stream created next from revision 1, with no second reset.
    post(&server, "s", "new", 2).await;
    let frames = feed.frames_after(5).await;
    assert_eq!(frames.len(), 5, "{}", feed.text);
    assert_records(&frames[..2], &[(2, "old 2"), (3, "old 3")]);
    assert_records(&frames[3..], &[(1, "new 1"), (2, "new 2")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openintent_subscribers_get_a_reset_comment_for_a_stale_resume_point() {
    let server = TestServer::start().await;
    post(&server, "intent-1", "event", 2).await;
    let mut feed = RawFeed::open(&server, "/api/v1/intents/intent-1/subscribe", Some(50)).await;
    let frames = feed.frames_after(3).await;
    assert_eq!(frames[0].event, "comment", "{frames:?}");
    assert_eq!(frames[0].id, Some(0), "{frames:?}");
    assert_eq!(frames[0].data["payload"]["reset"], true, "{frames:?}");
    assert_eq!(frames[0].data["payload"]["after"], 50, "{frames:?}");
    let ids: Vec<Option<u64>> = frames[1..].iter().map(|frame| frame.id).collect();
    assert_eq!(ids, [Some(1), Some(2)], "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_nothing_of_other_streams() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let mut quiet = RawFeed::open(&server, "/v1/streams/a/subscribe", None).await;
    let mut busy = RawFeed::open(&server, "/v1/streams/b/subscribe", None).await;
    for round in 1..=20 {
        post(&server, "b", &format!("round {round}"), 3).await;
    }
    assert_eq!(busy.frames_after(60).await.len(), 60, "{}", busy.text);

    // `a`'s feed sent nothing for the 20 commits to `b` (keepalives at most), then its own.
    post(&server, "a", "mine", 1).await;
    let frames = quiet.frames_after(1).await;
    assert_records(&frames, &[(1, "mine 1")]);
}

/// Events of about 60 KB, 15 to a request (under the 1 MiB body cap).
const LARGE_PADDING: usize = 60 * 1024;
const LARGE_PER_POST: usize = 15;

/// Posts far more than [`MAX_LAG_BYTES`] of large events to `stream` (three times it, and at
/// least 12 MiB, well past what the connection's socket buffers absorb), one commit per
/// request; returns the stream's revision after.
async fn post_far_past_the_lag(server: &TestServer, stream: &str) -> u64 {
    let bytes = (3 * MAX_LAG_BYTES).max(12 * 1024 * 1024);
    let posts = bytes.div_ceil(LARGE_PADDING * LARGE_PER_POST);
    for post in 1..=posts {
        let label = format!("post {post} event");
        post_padded(server, stream, &label, LARGE_PER_POST, LARGE_PADDING).await;
    }
    (posts * LARGE_PER_POST) as u64
}

/// Asserts record frames with revisions `from..=to`, in order, each once.
fn assert_revisions(frames: &[Frame], from: u64, to: u64) {
    let ids: Vec<u64> = frames
        .iter()
        .map(|frame| {
            assert_eq!(frame.event, "record", "{:?}", frame.id);
            assert_eq!(frame.id, frame.data["revision"].as_u64());
            frame.id.unwrap()
        })
        .collect();
    assert_eq!(ids, (from..=to).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_resumes_exactly_where_it_was() {
    let options = ServerOptions {
        sse_keepalive: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let mut stalled = RawFeed::open_small(&server, "/v1/streams/s/subscribe", None).await;

    // The client reads nothing while far more than the store keeps for it is written.
    let last = post_far_past_the_lag(&server, "s").await;
    tokio::time::timeout(DEADLINE, async {
        loop {
            let metrics = server.get("/metrics").await.text();
            if metrics.contains("recap_sse_cut_off_total 1\n")
                && metrics.contains("recap_sse_subscribers 0\n")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled subscriber is cut off, and no longer counted");

    // What was buffered still arrives, then the comment, then the end of the response.
    stalled.read_until_seen("\r\n0\r\n\r\n", 0).await;
    let comment = stalled
        .text
        .rfind(": cut off: ")
        .expect("the cut-off comment");
    assert!(
        stalled.text[comment..].ends_with("\n\n\r\n0\r\n\r\n"),
        "{}",
        stalled.tail()
    );
    let frames = stalled.frames();
    let received = frames.last().and_then(|frame| frame.id).unwrap_or(0);
    assert!(received < last, "everything arrived: nothing was cut off");
    assert_revisions(&frames, 1, received);

    // Reconnecting with the last id gets the rest, each change once, in order.
    let mut resumed = RawFeed::open(&server, "/v1/streams/s/subscribe", Some(received)).await;
    resumed.read_through_frame(last).await;
    assert_revisions(&resumed.frames(), received + 1, last);
    assert!(!resumed.text.contains("event: gap"), "{}", resumed.tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_catches_up_from_the_changelog() {
    // Keepalives (and so cut-offs) far apart: the client pauses, it does not stop.
    let options = ServerOptions {
        sse_keepalive: DEADLINE,
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let mut paused = RawFeed::open_small(&server, "/v1/streams/s/subscribe", None).await;

    // While the client reads nothing, its feed is dropped from the live changes (more than
    // MAX_LAG_BYTES wait for it); once it reads again, the feed catches up.
    let last = post_far_past_the_lag(&server, "s").await;
    paused.read_through_frame(last).await;
    assert_revisions(&paused.frames(), 1, last);
    assert!(!paused.text.contains("event: gap"), "{}", paused.tail());
    assert!(!paused.text.contains(": cut off"), "{}", paused.tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_several_streams_reach_each_subscriber_once_in_order() {
    const WRITERS: usize = 4;
    const POSTS: usize = 25;
    let server = Arc::new(TestServer::start().await);
    let mut feeds = Vec::new();
    for stream in ["a", "b"] {
        let path = format!("/v1/streams/{stream}/subscribe");
        feeds.push(RawFeed::open(&server, &path, None).await);
    }
    // Group commits mix both streams, in runs and interleaved.
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let server = server.clone();
            tokio::spawn(async move {
                for post_number in 0..POSTS {
                    let stream = if (writer + post_number) % 2 == 0 {
                        "a"
                    } else {
                        "b"
                    };
                    let label = format!("writer {writer} post {post_number}");
                    post(&server, stream, &label, 1 + post_number % 3).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // Each subscriber gets every event of its stream, once, in revision order, and nothing else.
    for (stream, feed) in ["a", "b"].into_iter().zip(&mut feeds) {
        let mut expected: Vec<String> = Vec::new();
        for writer in 0..WRITERS {
            for post_number in (0..POSTS).filter(|p| ((writer + p) % 2 == 0) == (stream == "a")) {
                for n in 1..=1 + post_number % 3 {
                    expected.push(format!("writer {writer} post {post_number} {n}"));
                }
            }
        }
        let revision = expected.len() as u64;
        let frames = feed.frames_after(expected.len()).await;
        assert_revisions(&frames, 1, revision);
        let mut received: Vec<String> = frames
            .iter()
            .map(|frame| frame.data["message"].as_str().unwrap().to_owned())
            .collect();
        received.sort();
        expected.sort();
        assert_eq!(received, expected, "{stream}");
    }
}
