"""What MCP adds to a context read: `get_context` over `POST /mcp` against the plain
`GET /v1/streams/{s}/context`, on loopback, same stream, same budget.

Starts `recap serve` ($RECAP_BIN, default target/release/recap) on a free port without keys,
fills a stream with 200 events (a slice of tool errors, retries and plans), then times N
requests of each kind on one keep-alive connection (httpx), alternating so both see the same
machine. MCP calls are raw JSON-RPC (`tools/call`, protocol 2025-11-25, no session), so the
figure is the server's extra work plus the bigger request, not a client SDK's.

    python3 benches/mcp_overhead.py            # N=2000
    RECAP_MCP_N=500 RECAP_BIN=target/debug/recap python3 benches/mcp_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
os.environ.setdefault(
    "RECAP_BIN", str(Path(__file__).resolve().parents[1] / "target" / "release" / "recap")
)
from conftest import running_recap  # noqa: E402

N = int(os.environ.get("RECAP_MCP_N", "2000"))
STREAM = "bench"
BUDGET = 2000


def fill(client: httpx.Client, url: str) -> None:
    events = []
    for n in range(200):
        if n % 5 == 0:
            events.append({"kind": "tool", "severity": "error", "message": f"search timed out after {n % 3 + 1}0s"})
        elif n % 5 == 1:
            events.append({"kind": "retry", "message": f"retrying search with a smaller query #{n}"})
        else:
            events.append({"kind": "plan", "message": f"step {n}: read the file, patch the function, run the tests"})
    client.post(f"{url}/v1/streams/{STREAM}/events", json=events).raise_for_status()


def main() -> None:
    with running_recap(keys=False) as recap, httpx.Client(timeout=30) as client:
        fill(client, recap.url)
        plain_url = f"{recap.url}/v1/streams/{STREAM}/context?budget={BUDGET}"
        mcp_url = f"{recap.url}/mcp"
        headers = {
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
        }
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_context", "arguments": {"stream": STREAM, "budget": BUDGET}},
        }
        plain_text = client.get(plain_url).text
        answer = client.post(mcp_url, json=call, headers=headers).json()
        assert answer["result"]["content"][0]["text"] == plain_text, answer
        for _ in range(200):  # warm up both paths
            client.get(plain_url)
            client.post(mcp_url, json=call, headers=headers)
        plain, mcp = [], []
        for _ in range(N):
            started = time.perf_counter()
            client.get(plain_url).raise_for_status()
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.post(mcp_url, json=call, headers=headers).raise_for_status()
            mcp.append(time.perf_counter() - started)

    def row(name: str, samples: list[float]) -> str:
        samples = sorted(samples)
        p50 = statistics.median(samples) * 1e6
        p99 = samples[int(len(samples) * 0.99) - 1] * 1e6
        return f"| {name} | {N} | {p50:,.0f} µs | {p99:,.0f} µs |"

    print(f"binary: {os.environ['RECAP_BIN']}, {len(plain_text)} bytes of context")
    print("| request | n | p50 | p99 |")
    print("|---|---:|---:|---:|")
    print(row("GET /v1/streams/bench/context", plain))
    print(row("POST /mcp tools/call get_context", mcp))
    delta = (statistics.median(mcp) - statistics.median(plain)) * 1e6
    print(f"\nMCP adds {delta:,.0f} µs at the median")


if __name__ == "__main__":
    main()
