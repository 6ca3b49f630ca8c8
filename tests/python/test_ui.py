"""The web view (`/ui`) in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `recap serve` (conftest.py). Nothing is mocked: events and notes are posted over
HTTP while the page is open, and the page must show them without a reload.

Every test fails if the page logged a JavaScript error, threw, or had a request fail or refused
(`page` fixture). Waits are Playwright's own (a bounded poll until the page shows the thing), never
fixed sleeps, and nothing here asserts a duration: benches/ui_live.py measures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import tempfile

import httpx
import pytest

from conftest import API_KEY, Recap, free_port, running_recap

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = os.environ.get("RECAP_CHROMIUM", "/usr/bin/chromium")
# Flags for a headless run in a container: no sandbox (root), no GPU, and none of Chromium's own
# background requests (updates, sync, field trials), which would reach for other hosts.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Longest wait for anything the page should show (an event shows within 1 s on a quiet machine;
# CI's is shared).
WAIT_MS = 10_000


def launch(p):
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def open_recap():
    """A server without keys whose pages these tests count item by item: anomaly detection off,
    since their repeated events would raise anomaly records of their own."""
    with running_recap(keys=False, anomalies=False) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


class Problems:
    """What went wrong in a page: console errors, uncaught exceptions, failed or refused
    requests. `expected` holds substrings of problems a test causes on purpose."""

    def __init__(self, page: Page):
        self.items: list[str] = []
        self.expected: list[str] = []
        page.on("console", self.console)
        page.on("pageerror", lambda error: self.items.append(f"uncaught: {error}"))
        page.on("requestfailed", self.request_failed)
        page.on("response", self.response)

    def console(self, message):
        if message.type == "error":
            self.items.append(f"console error: {message.text}")

    def request_failed(self, request):
        # Closing the page aborts its open SSE feed; that is not a failure.
        if request.failure != "net::ERR_ABORTED":
            self.items.append(f"request failed: {request.url} {request.failure}")

    def response(self, response):
        if response.status >= 400:
            self.items.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems = Problems(page)
    page.problems = problems
    yield page
    found = [
        item for item in problems.items if not any(text in item for text in problems.expected)
    ]
    context.close()
    assert found == [], "the page had problems:\n" + "\n".join(found)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def post_events(server: Recap, stream: str, events) -> dict:
    response = httpx.post(
        f"{server.url}/v1/streams/{stream}/events", json=events, headers=server.headers(), timeout=10
    )
    response.raise_for_status()
    return response.json()


def records(page: Page):
    return page.locator("#records > li")


def record(page: Page, seq: int):
    return page.locator(f'#records > li[data-seq="{seq}"]')


def test_streams_list_shows_streams_and_filters_by_name(open_recap, page):
    alpha, beta = unique("ui-alpha"), unique("ui-beta")
    post_events(open_recap, alpha, [{"kind": "tool", "severity": "error", "message": "boom"}] * 3)
    post_events(open_recap, beta, {"kind": "plan", "message": "think"})
    page.goto(f"{open_recap.url}/ui")
    alpha_row = page.locator(f'#streams tbody tr[data-stream="{alpha}"]')
    beta_row = page.locator(f'#streams tbody tr[data-stream="{beta}"]')
    expect(alpha_row).to_be_visible()
    expect(beta_row).to_be_visible()
    # Records, events, collapsed repeats, notes; then the events by severity.
    expect(alpha_row.locator("td.num")).to_have_text(["1", "3", "2", "0"])
    expect(alpha_row.locator(".severities")).to_contain_text("error 3")

    page.get_by_label("Filter by name").fill(alpha)
    expect(beta_row).to_have_count(0)
    expect(alpha_row).to_be_visible()
    # The link opens the stream's page.
    alpha_row.get_by_role("link", name=alpha).click()
    expect(page).to_have_url(re.compile(f"/ui/streams/{alpha}$"))
    expect(records(page)).to_have_count(1)


def test_stream_page_shows_records_and_follows_new_ones_live(open_recap, page):
    stream = unique("ui-live")
    post_events(
        open_recap,
        stream,
        [
            {"kind": "task", "message": "fix the flaky test"},
            {"kind": "tool", "severity": "warning", "message": "pytest: 1 flaky"},
        ],
    )
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(records(page)).to_have_count(2)
    expect(record(page, 2)).to_contain_text("pytest: 1 flaky")
    expect(record(page, 2).locator(".kind")).to_have_text("tool")
    expect(record(page, 2).locator(".sev")).to_have_text("warning")
    expect(page.locator("#feed-status")).to_have_text("live")

    # Posted after the page loaded: it appears without a reload, newest first.
    written = post_events(open_recap, stream, {"kind": "action", "message": "rerun with -p no:randomly"})
    seq = written["records"][0]["seq"]
    expect(record(page, seq)).to_contain_text("rerun with -p no:randomly")
    expect(records(page).first).to_have_attribute("data-seq", str(seq))
    expect(records(page)).to_have_count(3)


def test_a_repeat_raises_the_count_of_its_record(open_recap, page):
    stream = unique("ui-repeat")
    event = {"kind": "tool", "severity": "error", "message": "search timed out after 30s"}
    seq = post_events(open_recap, stream, event)["records"][0]["seq"]
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(record(page, seq)).to_contain_text("search timed out")
    expect(record(page, seq).locator(".count")).to_have_text("")

    written = post_events(open_recap, stream, event)["records"][0]
    assert written["collapsed"] and written["seq"] == seq
    expect(record(page, seq).locator(".count")).to_have_text("×2")
    post_events(open_recap, stream, [event, event])
    expect(record(page, seq).locator(".count")).to_have_text("×4")
    expect(records(page)).to_have_count(1)


def test_notes_appear_and_disappear_live(open_recap, page):
    stream = unique("ui-notes")
    post_events(open_recap, stream, {"kind": "task", "message": "ship it"})
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(records(page)).to_have_count(1)
    expect(page.locator("#notes-empty")).to_be_visible()

    response = httpx.post(
        f"{open_recap.url}/v1/streams/{stream}/notes", json={"text": "user wants a patch"}, timeout=10
    )
    response.raise_for_status()
    note_id = response.json()["id"]
    note = page.locator(f'#notes > li[data-note-id="{note_id}"]')
    expect(note).to_contain_text("user wants a patch")

    httpx.delete(f"{open_recap.url}/v1/streams/{stream}/notes/{note_id}", timeout=10).raise_for_status()
    expect(note).to_have_count(0)
    expect(page.locator("#notes-empty")).to_be_visible()


def test_context_panel_shows_the_token_count_and_receipt(open_recap, page):
    stream = unique("ui-context")
    post_events(
        open_recap,
        stream,
        [{"kind": "task", "message": "find the flag"}]
        + [{"kind": "tool", "message": f"step {i}: " + "output line\n" * 20} for i in range(30)],
    )
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(records(page)).to_have_count(31)

    def window(budget: int) -> dict:
        return httpx.get(
            f"{open_recap.url}/v1/streams/{stream}/context",
            params={"budget": budget, "format": "json"},
            timeout=10,
        ).json()

    expected = window(2000)
    tokens = page.locator("#context-tokens strong")
    expect(tokens).to_have_attribute("data-tokens", str(expected["tokens"]))
    expect(page.locator("#context-tokens")).to_contain_text("of 2,000 tokens")
    shown = [item for item in expected["items"] if item["included"]]
    expect(page.locator("#receipt-shown tbody tr")).to_have_count(len(shown))
    expect(page.locator("#context-totals")).to_contain_text(
        f"{expected['totals']['shown_records']} of 31 records shown"
    )
    expect(page.locator(".window-text pre")).to_contain_text("find the flag")

    # A smaller budget, chosen in the page: fewer tokens, more records folded.
    budget = page.get_by_label("Budget (tokens)")
    budget.fill("300")
    budget.press("Enter")
    small = window(300)
    assert small["tokens"] <= 300
    expect(tokens).to_have_attribute("data-tokens", str(small["tokens"]))
    folded = [item for item in small["items"] if not item["included"]]
    summary = page.locator(".folded summary")
    expect(summary).to_contain_text(f"Left out: {len(folded)} records")
    # The list of what was left out is drawn when opened (and stays open as the window follows).
    summary.click()
    expect(page.locator("#receipt-folded tbody tr")).to_have_count(len(folded))
    expect(page.locator("#receipt-folded .level-folded").first).to_be_visible()
    # The level of detail of each shown record is drawn.
    levels = {item["level"] for item in small["items"] if item["included"]}
    for level in levels:
        expect(page.locator(f"#receipt-shown .level-{level}").first).to_be_visible()

    # The window follows the stream: a new event changes it without a reload.
    post_events(open_recap, stream, {"kind": "user", "severity": "critical", "message": "stop now"})
    expect(page.locator(".window-text pre")).to_contain_text("stop now")
    expect(page.locator("#receipt-folded")).to_be_visible()


def test_keyed_server_asks_for_a_key_and_sends_it_everywhere(recap, page):
    stream = unique("ui-keys")
    post_events(recap, stream, {"kind": "task", "message": "behind a key"})
    page.goto(f"{recap.url}/ui/streams/{stream}")
    key_input = page.get_by_label("API key (kept in this tab only)")
    expect(key_input).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    # A wrong key is refused (401, on purpose here) and asked for again.
    page.problems.expected += ["401"]
    key_input.fill("not-the-key-0123456789")
    key_input.press("Enter")
    expect(page.locator("#auth-error")).to_contain_text("did not accept")
    expect(key_input).to_be_visible()
    key_input.fill(API_KEY)
    key_input.press("Enter")
    expect(records(page)).to_have_count(1)
    expect(page.locator("#context-tokens strong")).not_to_have_attribute("data-tokens", "0")
    # The feed (fetch with the Authorization header, not EventSource) delivers live events.
    seq = post_events(recap, stream, {"kind": "tool", "message": "seen through the key"})["records"][0]["seq"]
    expect(record(page, seq)).to_contain_text("seen through the key")

    # The key is kept for the tab: the list page uses it without asking again.
    page.goto(f"{recap.url}/ui")
    expect(page.locator(f'#streams tbody tr[data-stream="{stream}"]')).to_be_visible()
    expect(page.get_by_label("API key (kept in this tab only)")).to_be_hidden()


def test_pages_are_keyboard_navigable_and_fit_a_narrow_window(open_recap, page):
    stream = unique("ui-narrow")
    post_events(open_recap, stream, {"kind": "tool", "message": "line\n" * 40})
    page.set_viewport_size({"width": 400, "height": 800})
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(records(page)).to_have_count(1)
    # Nothing wider than the window (no sideways scrolling to read a record).
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, width
    # Tab reaches the controls in order; the message's "show all" is a real button.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the records")).to_be_focused()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to the context window")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#context-title")).to_be_focused()
    more = record(page, 1).locator("button.more")
    expect(more).to_have_accessible_name(re.compile("Show all"))
    more.focus()
    page.keyboard.press("Enter")
    expect(more).to_have_attribute("aria-expanded", "true")
    expect(more).to_have_text("Show less")
    shown = record(page, 1).locator(".message-text").text_content()
    assert shown.count("line") == 40, shown


def test_the_feed_resumes_after_the_server_restarts(page):
    # A server of its own: this one is stopped and started again on the same port and data.
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="recap-pytest-ui-") as data:
        data_dir = Path(data) / "data"
        with running_recap(keys=False, port=port, data_dir=data_dir) as server:
            post_events(server, "resume", {"kind": "task", "message": "before the restart"})
            page.goto(f"{server.url}/ui/streams/resume")
            expect(records(page)).to_have_count(1)
            expect(page.locator("#feed-status")).to_have_text("live")
        # While the server is down the page's requests fail; that is the point here.
        page.problems.expected += ["ERR_CONNECTION_REFUSED", "Failed to load resource"]
        expect(page.locator("#feed-status")).to_have_text("reconnecting…")
        with running_recap(keys=False, port=port, data_dir=data_dir) as server:
            written = post_events(server, "resume", {"kind": "tool", "message": "after the restart"})
            # The feed resumed from its last id: the new record arrives, nothing is repeated.
            expect(record(page, written["records"][0]["seq"])).to_contain_text("after the restart")
            expect(page.locator("#feed-status")).to_have_text("live")
            expect(records(page)).to_have_count(2)


def test_the_feed_parser_reads_frames_split_anywhere(open_recap, page):
    """feed.js's parser, in the browser: frames split across chunks at every position, CRLF and
    CR line ends, comments, multi-line data, an id without data (a reset)."""
    page.goto(f"{open_recap.url}/ui")
    frames = page.evaluate(
        r"""async () => {
            const { FrameParser } = await import("/ui/assets/feed.js");
            const text = ": subscribed\r\n\r\nid: 7\r\nevent: record\r\ndata: {\"seq\":1}\r\n\r\n"
                + ": keepalive\n\nid: 8\nevent: note\ndata: {\"text\":\n"
                + "data: \"a\"}\n\nid: 0\revent: gap\rdata: {\"reset\":true}\r\r"
                // A CR that ends a chunk may be half of a CRLF: the next chunk settles it.
                + ": keepalive\n\n";
            const results = [];
            for (let cut = 0; cut <= text.length; cut++) {
                const seen = [];
                const parser = new FrameParser((frame) => seen.push(frame));
                parser.push(text.slice(0, cut));
                parser.push(text.slice(cut));
                results.push(JSON.stringify(seen));
            }
            return [...new Set(results)];
        }"""
    )
    assert len(frames) == 1, frames
    assert json.loads(frames[0]) == [
        {"id": 7, "event": "record", "data": {"seq": 1}},
        {"id": 8, "event": "note", "data": {"text": "a"}},
        {"id": 0, "event": "gap", "data": {"reset": True}},
    ]


def test_older_records_load_on_request_and_filters_narrow_the_records(open_recap, page):
    stream = unique("ui-older")
    events = [
        {"kind": "tool" if i % 2 else "plan", "severity": "error" if i % 10 == 0 else "info",
         "message": f"event {i}"}
        for i in range(350)
    ]
    post_events(open_recap, stream, events)
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    # The newest 300 are drawn; the rest come a page at a time.
    expect(records(page)).to_have_count(300)
    expect(records(page).first).to_have_attribute("data-seq", "350")
    expect(page.locator("#records-count")).to_have_text("showing 300 of 350")
    page.get_by_role("button", name="Load older records").click()
    expect(records(page)).to_have_count(350)
    expect(records(page).last).to_have_attribute("data-seq", "1")
    expect(page.locator("#records-end")).to_be_visible()
    expect(page.get_by_role("button", name="Load older records")).to_be_hidden()

    # Filters go to the server, and live records are held to them too.
    page.get_by_label("Kind").select_option("plan")
    page.get_by_label("Severity at least").select_option("error")
    expect(records(page)).to_have_count(35)
    expect(page.locator("#records > li .kind").first).to_have_text("plan")
    post_events(open_recap, stream, [
        {"kind": "tool", "severity": "error", "message": "not a plan"},
        {"kind": "plan", "severity": "info", "message": "not severe"},
        {"kind": "plan", "severity": "critical", "message": "a severe plan"},
    ])
    expect(records(page).first).to_contain_text("a severe plan")
    expect(records(page)).to_have_count(36)
    expect(page.locator("#records")).not_to_contain_text("not a plan")
    expect(page.locator("#records")).not_to_contain_text("not severe")


def test_a_stream_deleted_and_created_again_is_read_afresh(open_recap, page):
    stream = unique("ui-reset")
    post_events(open_recap, stream, [{"kind": "tool", "message": f"old {i}"} for i in range(3)])
    page.goto(f"{open_recap.url}/ui/streams/{stream}")
    expect(records(page)).to_have_count(3)
    httpx.delete(f"{open_recap.url}/v1/streams/{stream}", timeout=10).raise_for_status()
    post_events(open_recap, stream, {"kind": "plan", "message": "a new beginning"})
    # The feed sends a reset (revisions start over); the page drops what it held.
    expect(records(page)).to_have_count(1)
    expect(record(page, 1)).to_contain_text("a new beginning")
    expect(page.locator("#feed-status")).to_have_text("live")
