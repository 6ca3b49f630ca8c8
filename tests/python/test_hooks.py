"""`recap hook` fed recorded hook events of Claude Code and Codex (tests/python/hooks/, in the
documented schemas): the events it posts and what it prints for the agent's context.

What each agent reads from a hook's stdout decides what recap prints: the window as
`hookSpecificOutput.additionalContext` on SessionStart (including `source: "compact"`, right
after a compaction) and UserPromptSubmit; nothing on PreCompact, whose stdout neither agent
gives the model. Codex's Bash `tool_response` is the command's output as one string, without
an exit status (codex-rs/hooks' post-tool-use input schema leaves it any JSON; the shell
handlers send the output text)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import httpx

from conftest import API_KEY, recap_binary

HOOKS = Path(__file__).parent / "hooks"


def hook(recap, stream: str, payload: dict | str, *, key: str | None = API_KEY) -> str:
    """Runs `recap hook --stream` with `payload` on stdin; returns its stdout."""
    env = {"RECAP_URL": recap.url, "PATH": "/usr/bin:/bin"}
    if key:
        env["RECAP_KEY"] = key
    text = payload if isinstance(payload, str) else json.dumps(payload)
    done = subprocess.run(
        [str(recap_binary()), "hook", "--stream", stream, "--budget", "1000"],
        input=text,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fixture(name: str) -> dict:
    return json.loads((HOOKS / f"{name}.json").read_text())


def records(recap, stream: str) -> list[dict]:
    response = httpx.get(
        f"{recap.url}/v1/streams/{stream}/events", headers=recap.headers(), timeout=30
    )
    response.raise_for_status()
    return response.json()["records"]


def test_a_claude_code_session(recap):
    stream = f"claude-{uuid.uuid4().hex[:8]}"
    out = json.loads(hook(recap, stream, fixture("claude_session_start")))
    assert out["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    assert "session started (startup)" in out["hookSpecificOutput"]["additionalContext"]

    out = json.loads(hook(recap, stream, fixture("claude_user_prompt_submit")))
    context = out["hookSpecificOutput"]["additionalContext"]
    assert out["hookSpecificOutput"]["hookEventName"] == "UserPromptSubmit"
    assert "fix it without rewriting the tokenizer" in context

    # Tool use prints nothing (its output is not the agent's context).
    assert hook(recap, stream, fixture("claude_pre_tool_use")) == ""
    for _ in range(3):
        assert hook(recap, stream, fixture("claude_post_tool_use_failure")) == ""
    assert hook(recap, stream, fixture("claude_post_tool_use")) == ""
    assert hook(recap, stream, fixture("claude_post_tool_use_bash")) == ""

    # Before compaction nothing is printed (Claude Code shows PreCompact's stdout to the user
    # only); right after it, SessionStart with source "compact" brings the window back, with
    # the failure folded x3.
    assert hook(recap, stream, fixture("claude_pre_compact")) == ""
    out = json.loads(hook(recap, stream, fixture("claude_session_start_compact")))
    window = out["hookSpecificOutput"]["additionalContext"]
    assert out["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    assert "cargo test parser::empty → failed" in window and "x3" in window, window
    assert hook(recap, stream, fixture("claude_stop")) == ""

    got = [(r["kind"], r["severity"], r["repeat_count"], r["message"]) for r in records(recap, stream)]
    assert got[0] == ("session", "info", 1, "session started (startup)")
    assert got[1][:2] == ("user", "info")
    assert got[2] == ("tool_call", "debug", 1, "Bash cargo test parser::empty")
    kind, severity, count, message = got[3]
    assert (kind, severity, count) == ("tool", "error", 3)
    assert message.startswith("Bash cargo test parser::empty → failed: Exit code 101")
    assert "index out of bounds" in message
    # The third identical failure is an episode recap names: one anomaly record.
    kind, severity, count, message = got[4]
    assert (kind, severity, count) == ("anomaly", "warning", 1)
    assert message.startswith("the error `Bash cargo test parser::empty → failed")
    assert "came back 3 times" in message
    assert got[5][:2] == ("tool", "info")
    assert got[5][3] == "Read /home/dev/parser/src/lib.rs → ok: pub fn parse(input: &str) -> Ast {"
    assert got[6][3].startswith("Bash cargo build → ok:")
    assert got[7][3] == "context compaction (auto)"
    assert got[8][3] == "session started (compact)"
    assert got[9][:2] == ("llm", "info") and got[9][3].startswith("turn ended: Fixed")
    # The hook keeps what identifies the session and the call.
    payload = records(recap, stream)[3]["payload"]
    assert payload["session_id"] == "6f1c2a9e-3b7d-4c51-9a0e-2d8f4b6a1c33"
    assert payload["tool_input"]["command"] == "cargo test parser::empty"


def test_a_codex_session(recap):
    stream = f"codex-{uuid.uuid4().hex[:8]}"
    out = json.loads(hook(recap, stream, fixture("codex_session_start")))
    assert out["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    out = json.loads(hook(recap, stream, fixture("codex_user_prompt_submit")))
    assert "run the tests" in out["hookSpecificOutput"]["additionalContext"]
    assert hook(recap, stream, fixture("codex_post_tool_use")) == ""
    assert hook(recap, stream, fixture("codex_pre_compact")) == ""
    out = json.loads(hook(recap, stream, fixture("codex_session_start_compact")))
    assert "Bash npm test → FAIL" in out["hookSpecificOutput"]["additionalContext"]
    assert hook(recap, stream, fixture("codex_stop")) == ""
    got = records(recap, stream)
    # Codex sends the command's output without its exit status: the event says what it
    # printed, at info (recap cannot tell a failing command from a passing one).
    ran = got[2]
    assert (ran["kind"], ran["severity"]) == ("tool", "info")
    assert ran["message"].startswith("Bash npm test → FAIL src/parser.test.ts")
    assert ran["payload"]["turn_id"] == "019a3c5e-8a02-7c11-9f3d-0b6e2c4d8e19"
    assert ran["payload"]["tool_input"] == {"command": "npm test"}
    assert got[3]["message"] == "context compaction (auto)"
    assert got[4]["message"] == "session started (compact)"
    assert got[5]["message"].startswith("turn ended: The parser test still fails")


def test_long_tool_output_keeps_its_head_and_tail(recap):
    stream = f"long-{uuid.uuid4().hex[:8]}"
    payload = fixture("claude_post_tool_use_bash")
    lines = [f"   Compiling crate-{n} v1.0.{n}" for n in range(5000)]
    payload["tool_response"]["stdout"] = "\n".join(["BUILD START", *lines, "BUILD END"])
    hook(recap, stream, payload)
    message = records(recap, stream)[0]["message"]
    assert "BUILD START" in message and message.endswith("BUILD END")
    assert "bytes trimmed" in message
    assert len(message.encode()) < 2_500


def test_a_bad_hook_input_fails_with_a_message(recap):
    done = subprocess.run(
        [str(recap_binary()), "hook", "--stream", "x", "--server", recap.url],
        input='{"prompt": "no event name"}',
        capture_output=True,
        text=True,
        env={"RECAP_KEY": API_KEY},
        timeout=60,
    )
    assert done.returncode == 1
    assert "hook_event_name" in done.stderr
    assert done.stdout == ""
