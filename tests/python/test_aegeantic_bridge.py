"""examples/aegeantic_bridge.py end to end: a real aegeantic agent step (offline, fake LLM
provider, a failing tool) forwarded to a running recap over HTTP, then the context window."""

from __future__ import annotations

import subprocess
import sys

import httpx

from conftest import ROOT

BRIDGE = ROOT / "examples" / "aegeantic_bridge.py"


def run_bridge(recap, stream: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BRIDGE), "--recap", recap.url, "--api-key", recap.api_key,
         "--stream", stream, "--budget", "600"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_context_window_shows_the_failing_tool(recap):
    done = run_bridge(recap, "aeg-bridge-1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    context = out.split("--- context window (budget 600 tokens) ---\n", 1)[1]
    assert (
        '[tool] ERROR: read_file({"path":"/etc/deploy.yaml"}) failed: '
        in context
    ), out
    assert "permission denied: /etc/deploy.yaml" in context, out
    # The step-level error is unrecoverable (error); the per-tool one recoverable (warning).
    assert "[error] ERROR: tool_execution_error: " in context, out
    assert "[error] WARNING: tool_execution_error: " in context, out
    assert "[retry] WARNING: fake-llm retry 1/3 after: connection reset by peer" in context, out

    # The documented mapping, as stored: chunks coalesced into one llm record, kinds and
    # severities as in the docstring.
    records = httpx.get(
        f"{recap.url}/v1/streams/aeg-bridge-1/events", headers=recap.headers()
    ).json()["records"]
    llm = [r for r in records if r["kind"] == "llm"]
    assert len(llm) == 1, records
    assert llm[0]["payload"]["aegeantic"]["chunks"] == 3
    assert llm[0]["message"].startswith("<reasoning>The deploy config"), llm
    tool = [(r["severity"], r["message"].split(" ")[-1]) for r in records if r["kind"] == "tool"]
    assert [severity for severity, _ in tool] == ["info", "error"], records
    assert {r["step_id"] for r in records} and all(r["step_id"] for r in records), records
    assert all(r["actor"] == "bridge-agent" for r in records), records
