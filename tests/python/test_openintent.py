"""The unmodified `openintent` 0.17.0 client against a running recap (DESIGN section 6).

Every call goes through the real client (sync and async) over loopback HTTP to a real
`recap serve` with an API key; nothing is mocked. Then recap's own context endpoint is read on
the same stream, to check that what the client logged is what an agent's next prompt sees.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from openintent import AsyncOpenIntentClient, EventType, OpenIntentClient
from openintent.exceptions import NotFoundError, OpenIntentError, ValidationError

from conftest import API_KEY, Recap, free_port, recap_binary

AGENT = "pytest-agent"
WAIT_SECONDS = 30


def client_for(recap: Recap, api_key: str = API_KEY) -> OpenIntentClient:
    return OpenIntentClient(base_url=recap.url, api_key=api_key, agent_id=AGENT)


@pytest.fixture
def client(recap):
    client = client_for(recap)
    yield client
    client.close()


@pytest.fixture
def intent(client):
    return client.create_intent(title="fix the flaky deploy", description="CI is red")


def context(recap: Recap, intent_id: str, budget: int = 800) -> str:
    response = httpx.get(
        f"{recap.url}/v1/streams/{intent_id}/context",
        params={"budget": budget},
        headers=recap.headers(),
    )
    assert response.status_code == 200, response.text
    return response.text


def sse_subscribers(url: str) -> int:
    metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": API_KEY}).text
    match = re.search(r"^recap_sse_subscribers (\d+)$", metrics, re.MULTILINE)
    assert match, metrics
    return int(match.group(1))


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_create_and_get_intent(client, intent):
    assert intent.title == "fix the flaky deploy"
    assert intent.status.value == "active"
    assert intent.created_at.tzinfo is not None
    fetched = client.get_intent(intent.id)
    assert (fetched.id, fetched.title, fetched.description) == (
        intent.id,
        "fix the flaky deploy",
        "CI is red",
    )
    # The intent's first event is its creation, as on the reference server.
    [created] = client.get_events(intent.id)
    assert created.event_type == EventType.INTENT_CREATED
    assert created.payload["title"] == "fix the flaky deploy"


def test_log_event_with_several_event_types(client, intent, recap):
    logged = [
        client.log_event(intent.id, EventType.COMMENT, {"note": "starting"}),
        client.log_event(intent.id, EventType.TASK_STARTED, {"task": "deploy"}),
        client.log_event(
            intent.id,
            EventType.TASK_FAILED,
            {"task": "deploy", "error": "exit 1"},
            trace_id="trace-1",
        ),
        client.log_event(
            intent.id,
            EventType.GOVERNANCE_VIOLATION,
            {"message": "wrote outside the sandbox"},
            parent_event_id="p-1",
        ),
    ]
    for event, expected in zip(
        logged,
        ["comment", "task.started", "task.failed", "governance.violation"],
    ):
        assert event.event_type.value == expected
        assert event.actor == AGENT
        assert event.intent_id == intent.id
        assert event.id and event.sequence
        assert event.created_at.utcoffset() == timedelta(0)
    assert logged[2].trace_id == "trace-1"
    assert logged[3].parent_event_id == "p-1"
    assert logged[0].payload == {"note": "starting"}

    events = client.get_events(intent.id)
    # Newest first, as the reference server answers.
    assert [e.event_type.value for e in events] == [
        "governance.violation",
        "task.failed",
        "task.started",
        "comment",
        "intent_created",
    ]
    assert [e.id for e in events[:4]] == [e.id for e in reversed(logged)]

    text = context(recap, intent.id)
    assert "[security] ERROR: wrote outside the sandbox" in text, text
    assert "[task] ERROR: task.failed error=exit 1 task=deploy" in text, text


def test_llm_and_tool_call_helpers(client, intent, recap):
    client.log_llm_request_started(intent.id, "req-1", "fake", "m-1", 2, stream=True)
    client.log_llm_request_completed(
        intent.id, "req-1", "fake", "m-1", 2,
        response_content="call read_file", finish_reason="tool_calls",
        prompt_tokens=10, completion_tokens=4, total_tokens=14, duration_ms=120,
    )
    started = client.log_tool_call_started(
        intent.id, "read_file", "call-1", {"path": "/etc/deploy.yaml"}, provider="fake", model="m-1"
    )
    failed = client.log_tool_call_failed(
        intent.id, "read_file", "call-1", {"path": "/etc/deploy.yaml"},
        error="permission denied", duration_ms=3,
    )
    client.log_tool_call_completed(
        intent.id, "list_dir", "call-2", {"path": "/etc"}, result="3 entries", duration_ms=1
    )
    client.log_llm_request_failed(intent.id, "req-2", "fake", "m-1", 4, error="rate limited")

    assert started.event_type == EventType.TOOL_CALL_STARTED
    assert failed.event_type == EventType.TOOL_CALL_FAILED
    assert failed.payload == {
        "tool_name": "read_file",
        "tool_id": "call-1",
        "arguments": {"path": "/etc/deploy.yaml"},
        "error": "permission denied",
        "duration_ms": 3,
    }
    events = client.get_events(intent.id)
    assert [e.event_type.value for e in events[:6]] == [
        "llm_request_failed",
        "tool_call_completed",
        "tool_call_failed",
        "tool_call_started",
        "llm_request_completed",
        "llm_request_started",
    ]
    assert events[4].payload["total_tokens"] == 14

    # recap's own context endpoint on the same stream: the failed tool call is there, as an
    # error, in the form an agent's next prompt gets it.
    text = context(recap, intent.id)
    assert (
        '[tool] ERROR: read_file({"path":"/etc/deploy.yaml"}) failed: permission denied (3 ms)'
        in text
    ), text
    assert "[llm] ERROR: LLM request to fake/m-1 failed: rate limited" in text, text
    assert '[tool]: list_dir({"path":"/etc"}) -> 3 entries (1 ms)' in text, text


def test_get_events_filters(client, intent):
    client.log_tool_call_failed(intent.id, "search", "c-1", {"q": "a"}, error="timeout")
    client.log_event(intent.id, EventType.COMMENT, {"note": "between"})
    middle = client.log_tool_call_failed(intent.id, "search", "c-2", {"q": "b"}, error="timeout")
    client.log_event(intent.id, EventType.TASK_PROGRESS, {"done": 1})
    newest = client.log_tool_call_failed(intent.id, "search", "c-3", {"q": "c"}, error="timeout")

    failed = client.get_events(intent.id, event_type=EventType.TOOL_CALL_FAILED)
    assert [e.payload["tool_id"] for e in failed] == ["c-3", "c-2", "c-1"]
    comments = client.get_events(intent.id, event_type=EventType.COMMENT)
    assert [e.payload for e in comments] == [{"note": "between"}]
    assert client.get_events(intent.id, event_type=EventType.TASK_FAILED) == []

    # since: aware and naive datetimes (naive is UTC), inclusive.
    since_aware = client.get_events(intent.id, since=middle.created_at)
    assert [e.id for e in since_aware][-1] == middle.id
    assert len(since_aware) == 3
    naive = middle.created_at.astimezone(timezone.utc).replace(tzinfo=None)
    assert [e.id for e in client.get_events(intent.id, since=naive)] == [e.id for e in since_aware]
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert client.get_events(intent.id, since=future) == []

    # limit: the newest N.
    assert [e.id for e in client.get_events(intent.id, limit=2)] == [
        newest.id,
        since_aware[1].id,
    ]
    # All three together.
    both = client.get_events(
        intent.id, event_type=EventType.TOOL_CALL_FAILED, since=middle.created_at, limit=1
    )
    assert [e.id for e in both] == [newest.id]


def test_native_events_reach_the_client_as_comments(client, intent, recap):
    response = httpx.post(
        f"{recap.url}/v1/streams/{intent.id}/events",
        headers=recap.headers(),
        json=[
            {"kind": "retry", "severity": "warning", "message": "retry 1/3 after 2s"},
            {"kind": "retry", "severity": "warning", "message": "retry 1/3 after 2s"},
        ],
    )
    assert response.status_code == 200, response.text
    [event] = client.get_events(intent.id, limit=1)
    assert event.event_type == EventType.COMMENT
    assert event.payload == {
        "kind": "retry",
        "severity": "warning",
        "message": "retry 1/3 after 2s",
        "repeat_count": 2,
    }
    assert client.get_events(intent.id, event_type=EventType.COMMENT, limit=1)[0].id == event.id


def test_errors_carry_a_message_the_client_shows(client, recap):
    with pytest.raises(ValidationError) as bad_id:
        client.log_event("not a stream name!", EventType.COMMENT, {})
    assert "intent id" in bad_id.value.message
    assert bad_id.value.status_code == 400

    with pytest.raises(NotFoundError):
        client.get_intent("never-created")

    stranger = client_for(recap, api_key="wrong-key-0000000000")
    with pytest.raises(OpenIntentError) as unauthorized:
        stranger.get_events("anything")
    assert unauthorized.value.status_code == 401
    assert "API key" in unauthorized.value.response["message"]
    stranger.close()


def test_async_client(recap, intent):
    async def run():
        async with AsyncOpenIntentClient(
            base_url=recap.url, api_key=API_KEY, agent_id="async-agent"
        ) as client:
            logged = await client.log_event(intent.id, EventType.TASK_COMPLETED, {"task": "lint"})
            failed = await client.log_tool_call_failed(
                intent.id, "compile", "call-9", {"target": "release"}, error="linker OOM"
            )
            latest = await client.get_events(intent.id, limit=2)
            only_failed = await client.get_events(
                intent.id, event_type=EventType.TOOL_CALL_FAILED
            )
            return logged, failed, latest, only_failed

    logged, failed, latest, only_failed = asyncio.run(run())
    assert logged.event_type == EventType.TASK_COMPLETED
    assert logged.actor == "async-agent"
    assert [e.id for e in latest] == [failed.id, logged.id]
    assert [e.id for e in only_failed] == [failed.id]
    assert '[tool] ERROR: compile({"target":"release"}) failed: linker OOM' in context(
        recap, intent.id
    )


class Listener:
    """Iterates a client's SSEStream on a thread, queueing what it yields."""

    def __init__(self, stream):
        self.stream = stream
        self.stopping = False
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.stream:
                self.events.put(event)
        except Exception as error:
            # Closing the stream from the test thread interrupts a blocking read; anything
            # else is handed to the test.
            if not self.stopping:
                self.events.put(error)

    def take(self, count: int) -> list:
        taken = []
        for _ in range(count):
            item = self.events.get(timeout=WAIT_SECONDS)
            if isinstance(item, Exception):
                raise item
            taken.append(item)
        return taken

    def stop(self):
        # The thread (a daemon) ends at its next read: a blocking read is not interrupted.
        self.stopping = True
        self.stream.stop()


def test_subscribe_sse_receives_events_posted_after_connecting(client, intent, recap):
    before = sse_subscribers(recap.url)
    listener = Listener(client.subscribe_sse(intent.id))
    try:
        wait_for(lambda: sse_subscribers(recap.url) == before + 1, "the SSE connection")
        posted = [
            client.log_tool_call_started(intent.id, "fetch", "f-1", {"url": "u"}),
            client.log_tool_call_failed(intent.id, "fetch", "f-1", {"url": "u"}, error="503"),
            client.log_event(intent.id, EventType.TASK_RETRYING, {"attempt": 2}),
        ]
        received = listener.take(3)
        assert [e.type for e in received] == [
            "tool_call_started",
            "tool_call_failed",
            "task.retrying",
        ]
        assert [e.data["id"] for e in received] == [e.id for e in posted]
        assert received[1].data["payload"]["error"] == "503"
        # id: is the stream revision, increasing.
        ids = [int(e.id) for e in received]
        assert ids == sorted(ids) and len(set(ids)) == 3
        # The data is the same event object GET .../events returns.
        assert received[2].data == httpx.get(
            f"{recap.url}/api/v1/intents/{intent.id}/events",
            params={"limit": 1},
            headers=recap.headers(),
        ).json()[0]
    finally:
        listener.stop()


def start_recap(port: int, data_dir: Path, keys: Path, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(recap_binary()), "serve", "--addr", f"127.0.0.1:{port}", "--data", str(data_dir),
         "--keys", str(keys)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: _healthy(f"http://127.0.0.1:{port}", process), "recap to start")
    return process


def _healthy(url: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "recap exited early"
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_recap(process: subprocess.Popen):
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_sse_reconnect_resumes_without_gaps(recap, tmp_path):
    """The client's own reconnect, with the Last-Event-ID it keeps, gets the events written while
    it was away, once each and in order.

    recap is stopped under the subscription, the missed events are written by a recap on another
    port over the same data (so the client cannot reach it and cannot see them live), and recap
    comes back on the client's port.
    """
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nname = "pytest"\nkey = "{API_KEY}"\nscopes = ["admin"]\n')
    port, data_dir, log = free_port(), tmp_path / "data", tmp_path / "recap.log"
    url = f"http://127.0.0.1:{port}"
    process = start_recap(port, data_dir, keys, log)
    client = OpenIntentClient(base_url=url, api_key=API_KEY, agent_id=AGENT)
    listener = None
    try:
        intent = client.create_intent(title="resume")
        stream = client.subscribe_sse(intent.id)
        # The client's own knob (a constructor parameter of SSEStream): the pause between
        # reconnect attempts after a connection error (it makes 10 before giving up).
        stream.reconnect_delay = 1.0
        listener = Listener(stream)
        wait_for(lambda: sse_subscribers(url) == 1, "the SSE connection")
        first = [client.log_event(intent.id, EventType.TASK_PROGRESS, {"step": n}) for n in (1, 2)]
        assert [e.data["id"] for e in listener.take(2)] == [e.id for e in first]

        # Shutdown ends the feed; the client tries to reconnect and is refused meanwhile.
        stop_recap(process)
        other_port = free_port()
        process = start_recap(other_port, data_dir, keys, log)
        elsewhere = OpenIntentClient(
            base_url=f"http://127.0.0.1:{other_port}", api_key=API_KEY, agent_id=AGENT
        )
        missed = [elsewhere.log_event(intent.id, EventType.TASK_PROGRESS, {"step": n}) for n in (3, 4)]
        elsewhere.close()
        stop_recap(process)
        process = start_recap(port, data_dir, keys, log)

        wait_for(lambda: sse_subscribers(url) == 1, "the client to reconnect")
        live = client.log_event(intent.id, EventType.TASK_COMPLETED, {"step": 5})
        resumed = listener.take(3)
        assert [e.data["id"] for e in resumed] == [e.id for e in missed + [live]]
        assert [e.data["payload"]["step"] for e in resumed] == [3, 4, 5]
        # Nothing is sent twice: the next frame is the next event.
        marker = client.log_event(intent.id, EventType.COMMENT, {"note": "end"})
        assert [e.data["id"] for e in listener.take(1)] == [marker.id]
        ids = [int(e.id) for e in resumed]
        assert ids == sorted(ids)
    finally:
        if listener:
            listener.stop()
        client.close()
        stop_recap(process)
