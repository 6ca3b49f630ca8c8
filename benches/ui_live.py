"""How quickly and how smoothly the web view follows a stream, in headless Chromium.

    make pytest                      # once: builds target/debug/recap and the venv with Playwright
    target/pytest-venv/bin/python benches/ui_live.py [--records 100000] [--rate 50] [--seconds 20]

Starts its own `recap serve` (RECAP_BIN, default target/debug/recap; a release build answers
faster), then measures, and prints a table:

1. latency, quiet stream: the time from sending a POST of one event to its record being in the
   open page's DOM (a MutationObserver stamps it; the next paint follows within a frame), over
   `--samples` events posted one at a time;
2. a stream of `--records` records (posted in batches before the page opens) taking `--rate`
   events a second (one POST per event, a third of them repeats) for `--seconds`: the same
   latency under that load, the page's frame intervals (requestAnimationFrame), long tasks (over
   50 ms, Chromium's PerformanceObserver), the round trip of `page.evaluate` (how long a click
   would wait for the page's main thread), the rows in the DOM and the JS heap.

Numbers depend on the machine: docs/ui.md records a run and its machine. This is a benchmark,
not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import running_recap  # noqa: E402
from test_ui import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

KINDS = ["tool", "action", "llm", "plan", "tool", "observation"]
SEVERITIES = ["info", "info", "info", "debug", "warning", "error"]

# Stamps every record row when it enters the DOM, and counts frames and long tasks.
PROBE = """
(() => {
  window.__seen = new Map();
  new MutationObserver((mutations) => {
    const now = performance.timeOrigin + performance.now();
    for (const mutation of mutations)
      for (const node of mutation.addedNodes)
        if (node.dataset && node.dataset.seq && !window.__seen.has(node.dataset.seq))
          window.__seen.set(node.dataset.seq, now);
  }).observe(document.getElementById("records"), { childList: true });
  window.__frames = [];
  window.__longTasks = [];
  let last = performance.now();
  const tick = (now) => { window.__frames.push(now - last); last = now; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  try {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
    }).observe({ type: "longtask" });
  } catch {}
})();
"""


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def row(label, values, unit="ms"):
    if not values:
        print(f"| {label} | (none) | | | |")
        return
    print(
        f"| {label} | {percentile(values, 50):.1f} {unit} | {percentile(values, 95):.1f} {unit} "
        f"| {max(values):.1f} {unit} | {len(values)} |"
    )


def event(i: int) -> dict:
    return {
        "kind": KINDS[i % len(KINDS)],
        "severity": SEVERITIES[i % len(SEVERITIES)],
        "message": f"step {i}: ran the thing, output line {i * 7 % 1000}",
    }


def fill(client: httpx.Client, url: str, stream: str, records: int) -> float:
    started = time.monotonic()
    batch = 1000
    for start in range(0, records, batch):
        events = [event(i) for i in range(start, min(records, start + batch))]
        client.post(f"{url}/v1/streams/{stream}/events", json=events).raise_for_status()
    return time.monotonic() - started


def latency(page, posted: dict[int, float]) -> list[float]:
    seen = page.evaluate("Object.fromEntries(window.__seen)")
    return [seen[str(seq)] - at for seq, at in posted.items() if str(seq) in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50.0, help="events a second under load")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=30, help="events posted on the quiet stream")
    args = parser.parse_args()

    with running_recap(keys=False) as server, httpx.Client(timeout=30) as client, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))

        # 1. A quiet stream.
        quiet = "bench-quiet"
        client.post(f"{server.url}/v1/streams/{quiet}/events", json=event(0)).raise_for_status()
        page.goto(f"{server.url}/ui/streams/{quiet}")
        page.wait_for_selector("#feed-status[data-state=live]")
        page.evaluate(PROBE)
        posted = {}
        for i in range(1, args.samples + 1):
            at = time.time() * 1000
            reply = client.post(f"{server.url}/v1/streams/{quiet}/events", json=event(i))
            seq = reply.json()["records"][0]["seq"]
            posted[seq] = at
            page.wait_for_function("(seq) => window.__seen.has(seq)", arg=str(seq), timeout=10_000)
            time.sleep(0.1)  # one at a time, spaced: a quiet stream
        quiet_latency = latency(page, posted)

        # 2. A big stream under load.
        stream = "bench-big"
        fill_seconds = fill(client, server.url, stream, args.records)
        opened = time.monotonic()
        page.goto(f"{server.url}/ui/streams/{stream}")
        page.wait_for_selector("#feed-status[data-state=live]")
        page.wait_for_selector("#context-tokens")
        open_seconds = time.monotonic() - opened
        page.evaluate(PROBE)

        posted = {}
        stop = threading.Event()

        def post_at_rate():
            with httpx.Client(timeout=30) as poster:
                interval = 1 / args.rate
                next_at = time.monotonic()
                i = args.records
                while not stop.is_set():
                    # A third of the events repeat the previous one (they raise a count).
                    body = event(i - 1 if i % 3 == 0 else i)
                    at = time.time() * 1000
                    reply = poster.post(f"{server.url}/v1/streams/{stream}/events", json=body)
                    written = reply.json()["records"][0]
                    if not written["collapsed"]:
                        posted[written["seq"]] = at
                    i += 1
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

        poster = threading.Thread(target=post_at_rate)
        poster.start()
        round_trips = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            page.evaluate("1")
            round_trips.append((time.perf_counter() - started) * 1000)
            time.sleep(0.1)
        stop.set()
        poster.join()
        # Let the last events arrive before reading the stamps.
        page.wait_for_timeout(1500)
        load_latency = latency(page, posted)
        frames = page.evaluate("window.__frames")[1:]
        long_tasks = page.evaluate("window.__longTasks")
        rows = page.evaluate("document.querySelectorAll('#records > li').length")
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
        browser.close()

    print(f"recap {server.url}, Chromium headless, 1280x800")
    print(f"filled {args.records:,} records in {fill_seconds:.1f} s; the page opened (records, notes, "
          f"stats, window, feed live) in {open_seconds:.2f} s")
    print()
    print("| measure | p50 | p95 | max | n |")
    print("|---|---:|---:|---:|---:|")
    row("POST to record in the DOM, quiet stream", quiet_latency)
    row(f"POST to record in the DOM, {args.records:,} records at {args.rate:g}/s", load_latency)
    row("frame interval under load", frames)
    row("page.evaluate round trip under load", round_trips)
    print()
    print(f"long tasks (> 50 ms) under load: {len(long_tasks)}"
          + (f", longest {max(long_tasks):.0f} ms" if long_tasks else ""))
    print(f"record rows in the DOM at the end: {rows}; JS heap {heap / 1e6:.1f} MB")
    print(f"events posted under load: {len(posted)} new records; seen in the page: {len(load_latency)}")
    if errors:
        print("page errors:", *errors, sep="\n  ")


if __name__ == "__main__":
    main()
