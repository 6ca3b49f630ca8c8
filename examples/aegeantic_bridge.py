"""Forward an aegeantic agent's events to recap, then print recap's context window.

Runs one agent step of aegeantic 1.0.0 (imported as `agentic`) fully offline: a fake LLM
provider streams a reasoning segment and a tool call, its connection drops once and is retried
(aegeantic's `resilient_stream`), and the one tool, `read_file`, fails. Every event of the step
is mapped to a recap event and posted to `POST /v1/streams/{stream}/events` as it happens; then
the script fetches `GET /v1/streams/{stream}/context` and prints it: what the agent's next
prompt would get.

Usage (recap running, e.g. `recap serve`):

    python examples/aegeantic_bridge.py [--recap http://127.0.0.1:7070] [--stream NAME]
                                        [--api-key KEY] [--budget 400]

`RECAP_URL` and `RECAP_API_KEY` are read when the flags are absent. Needs `aegeantic==1.0.0`
and the standard library only. Exits 1 if recap refuses a write or cannot be reached.

Mapping (aegeantic event `type` -> recap kind / severity; also in docs/openintent.md):

| aegeantic event                        | recap kind | severity | message                                   |
|----------------------------------------|------------|----------|-------------------------------------------|
| llm_chunk (many) + llm_complete        | llm        | info     | the full LLM output, once (chunks coalesced; payload.chunks counts them) |
| llm_chunk without llm_complete         | llm        | warning  | the partial output, flushed at step end   |
| tool_start                             | tool       | info     | `name(args) started`                      |
| tool_end, result.success               | tool       | info     | `name(args) -> output (N ms)`             |
| tool_end, not result.success           | tool       | error    | `name(args) failed: error (N ms)`         |
| error, recoverable=False               | error      | error    | `error_type: error_message`               |
| error, recoverable=True                | error      | warning  | `error_type: error_message`               |
| retry (resilient_stream / graph retry) | retry      | warning  | `operation retry a/n after: error; next in Ds` |
| tool_decision, rejected                | security   | warning  | `name rejected: reason`                   |
| tool_validation                        | tool       | warning  | `name arguments invalid: field: message`  |
| rate_limit, context_health             | metric     | warning  | what was limited / which check            |
| step_complete                          | agent      | info when the step ended ok, warning otherwise | `step complete: status` |
| status                                 | status     | debug    | `status: message`                         |
| context_write                          | state      | debug    | `wrote key (version v)`                   |
| graph_* events                         | agent      | info (error for a failed node or graph) | node / graph and status |
| tool_output, tool_decision (accepted), pattern_* | not forwarded: tool_end and the coalesced llm event carry the same content |
| anything else                          | its type   | info     | the type and its fields                   |

Every forwarded event keeps aegeantic's `step_id` and time (`timestamp` -> `ts`), has the agent id
as `actor`, and carries the aegeantic type and fields in `payload`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Optional

from agentic import (
    Agent,
    AgentConfig,
    AgentRunner,
    ContextManager,
    InMemoryStorage,
    IterationManager,
    PatternRegistry,
    ProcessingMode,
    RetryConfig,
    StorageConfig,
    ToolRegistry,
    create_default_pattern_set,
    create_tool,
    resilient_stream,
)

AGENT_ID = "bridge-agent"
#: Longest preview of a tool's output in a message; the payload keeps all of it.
OUTPUT_PREVIEW_CHARS = 200


# ---------------------------------------------------------------------------------------------
# The agent: a fake provider (no network) and a tool that fails.


class FlakyFakeProvider:
    """An `agentic.LLMProvider`: streams fixed chunks; the first connection drops before any
    chunk, and aegeantic's `resilient_stream` retries it, reporting a `RetryEvent` to
    `on_retry` (the runner itself never retries, so this is where retries come from)."""

    def __init__(self, chunks: list[str], on_retry: Callable[[Any], None]):
        self.chunks = chunks
        self.on_retry = on_retry
        self.attempts = 0

    def generate(self, prompt: Any, **kwargs: Any) -> str:
        return "".join(self.chunks)

    async def _attempt(self):
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("connection reset by peer")
        for chunk in self.chunks:
            await asyncio.sleep(0)
            yield chunk

    async def stream(self, prompt: Any, **kwargs: Any):
        retry = RetryConfig(max_attempts=3, base_delay=0.01, jitter=False)
        async for item in resilient_stream(
            self._attempt, retry_config=retry, operation_name="fake-llm", operation_type="llm"
        ):
            if isinstance(item, str):
                yield item
            else:
                self.on_retry(item)


def read_file(arguments: dict) -> str:
    raise PermissionError(f"permission denied: {arguments.get('path')}")


def build_runner(on_retry: Callable[[Any], None]) -> AgentRunner:
    storage = InMemoryStorage(StorageConfig())
    storage.initialize()
    context = ContextManager(storage, IterationManager(storage))
    patterns = PatternRegistry(storage)
    patterns.register_pattern_set(create_default_pattern_set())
    tools = ToolRegistry()
    tools.register(
        create_tool("read_file", read_file, processing_mode=ProcessingMode.THREAD, timeout_seconds=5)
    )
    provider = FlakyFakeProvider(
        [
            "<reasoning>The deploy config should say which region failed; ",
            "read it.</reasoning>",
            '<tool>{"name": "read_file", "arguments": {"path": "/etc/deploy.yaml"}, '
            '"call_id": "call-1"}</tool>',
        ],
        on_retry,
    )
    config = AgentConfig(agent_id=AGENT_ID, tools_allowed=["read_file"])
    return AgentRunner(Agent(config, context, patterns, tools, provider))


# ---------------------------------------------------------------------------------------------
# The mapping.


def jsonable(value: Any) -> Any:
    """aegeantic events hold enums and nested dataclasses; recap takes JSON."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def call_text(tool_name: str, arguments: Any) -> str:
    return f"{tool_name}({json.dumps(arguments, separators=(',', ':'), sort_keys=True)})"


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="microseconds")


class Mapper:
    """Turns aegeantic events into recap events; llm_chunk events are held and coalesced."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.first_chunk_at: Optional[float] = None
        self.step_id = ""
        self.tool_arguments: dict[str, Any] = {}

    def event(self, ev: Any, kind: str, severity: str, message: str, **payload: Any) -> dict:
        fields = {k: jsonable(v) for k, v in vars(ev).items() if k not in ("timestamp", "step_id")}
        fields.update(payload)
        return {
            "kind": kind,
            "severity": severity,
            "message": message,
            "ts": timestamp(ev.timestamp),
            "actor": AGENT_ID,
            "step_id": ev.step_id or self.step_id or None,
            "payload": {"aegeantic": fields},
        }

    def map(self, ev: Any) -> list[dict]:
        """The recap events for one aegeantic event (none, one, or a flushed llm event first)."""
        self.step_id = ev.step_id or self.step_id
        kind = ev.type
        if kind == "llm_chunk":
            if self.first_chunk_at is None:
                self.first_chunk_at = ev.timestamp
            self.chunks.append(ev.chunk)
            return []
        if kind == "llm_complete":
            chunks, self.chunks, self.first_chunk_at = len(self.chunks), [], None
            return [self.event(ev, "llm", "info", ev.full_text, chunks=chunks)]
        out = self.flush_partial(ev) if kind in ("error", "step_complete") else []
        if kind == "tool_start":
            self.tool_arguments[ev.call_id] = ev.arguments
            out.append(
                self.event(ev, "tool", "info", f"{call_text(ev.tool_name, ev.arguments)} started")
            )
        elif kind == "tool_end":
            result = ev.result
            call = call_text(ev.tool_name, self.tool_arguments.pop(ev.call_id, {}))
            took = f" ({result.execution_time * 1000:.0f} ms)"
            if result.success:
                output = result.output if isinstance(result.output, str) else json.dumps(jsonable(result.output))
                if len(output) > OUTPUT_PREVIEW_CHARS:
                    output = output[:OUTPUT_PREVIEW_CHARS] + "..."
                out.append(self.event(ev, "tool", "info", f"{call} -> {output}{took}"))
            else:
                out.append(
                    self.event(ev, "tool", "error", f"{call} failed: {result.error_message}{took}")
                )
        elif kind == "error":
            severity = "warning" if ev.recoverable else "error"
            out.append(self.event(ev, "error", severity, f"{ev.error_type}: {ev.error_message}"))
        elif kind == "retry":
            out.append(
                self.event(
                    ev,
                    "retry",
                    "warning",
                    f"{ev.operation_name} retry {ev.attempt}/{ev.max_attempts} after: {ev.error}; "
                    f"next in {ev.next_delay_seconds:g}s",
                )
            )
        elif kind == "tool_decision":
            if not ev.accepted:
                out.append(
                    self.event(ev, "security", "warning", f"{ev.tool_name} rejected: {ev.rejection_reason}")
                )
        elif kind == "tool_validation":
            problems = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in ev.validation_errors)
            out.append(self.event(ev, "tool", "warning", f"{ev.tool_name} arguments invalid: {problems}"))
        elif kind == "rate_limit":
            out.append(
                self.event(ev, "metric", "warning", f"rate limited: {ev.operation_name} ({ev.tokens_remaining:g} tokens left)")
            )
        elif kind == "context_health":
            out.append(
                self.event(ev, "metric", "warning",
                           f"context {ev.check_type} of {ev.key}: {ev.current_value} over {ev.threshold}; {ev.recommended_action}")
            )
        elif kind == "step_complete":
            status = jsonable(ev.result.status)
            ok = status in ("ok", "done", "tool_executed")
            detail = f" ({ev.result.error_type})" if ev.result.error_type else ""
            out.append(
                self.event(ev, "agent", "info" if ok else "warning", f"step complete: {status}{detail}",
                           result={"status": status, "error_type": ev.result.error_type,
                                   "error_message": ev.result.error_message})
            )
        elif kind == "status":
            out.append(self.event(ev, "status", "debug", f"{jsonable(ev.status)}: {ev.message or ''}".rstrip(": ")))
        elif kind == "context_write":
            out.append(self.event(ev, "state", "debug", f"wrote {ev.key} (version {ev.version})"))
        elif kind.startswith("graph_"):
            status = jsonable(getattr(ev, "status", None))
            failed = status in ("failed", "partial_failure")
            subject = getattr(ev, "node_id", None) or ev.graph_id
            out.append(
                self.event(ev, "agent", "error" if failed else "info",
                           f"{kind.replace('_', ' ')}: {subject}" + (f" {status}" if status else ""))
            )
        elif kind in ("tool_output", "pattern_start", "pattern_content", "pattern_end"):
            pass
        else:
            out.append(self.event(ev, kind, "info", f"{kind} {json.dumps(jsonable(vars(ev)), default=str)}"))
        return out

    def flush_partial(self, ev: Any) -> list[dict]:
        """LLM output that never completed (the provider failed mid-stream)."""
        if not self.chunks:
            return []
        text, chunks = "".join(self.chunks), len(self.chunks)
        self.chunks, self.first_chunk_at = [], None
        return [self.event(ev, "llm", "warning", f"(incomplete) {text}", chunks=chunks)]


# ---------------------------------------------------------------------------------------------
# recap over HTTP (standard library only).


class Recap:
    def __init__(self, url: str, stream: str, api_key: Optional[str]):
        self.url = url.rstrip("/")
        self.stream = urllib.parse.quote(stream, safe="")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key

    def _call(self, method: str, path: str, body: Any = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise SystemExit(f"recap refused {method} {path}: {error.code} {detail}") from None
        except urllib.error.URLError as error:
            raise SystemExit(f"cannot reach recap at {self.url}: {error.reason}") from None

    def post(self, events: list[dict]) -> None:
        if events:
            self._call("POST", f"/v1/streams/{self.stream}/events", events)

    def context(self, budget: int) -> str:
        return self._call("GET", f"/v1/streams/{self.stream}/context?budget={budget}").decode()


async def run(recap: Recap) -> tuple[int, int]:
    """Runs the step, forwarding as it goes; returns (aegeantic events, recap events)."""
    mapper = Mapper()
    counts = [0, 0]

    def forward(ev: Any) -> None:
        counts[0] += 1
        mapped = mapper.map(ev)
        counts[1] += len(mapped)
        recap.post(mapped)

    runner = build_runner(on_retry=forward)
    async for ev in runner.step_stream("Why did last night's deploy fail?"):
        forward(ev)
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recap", default=os.environ.get("RECAP_URL", "http://127.0.0.1:7070"))
    parser.add_argument("--api-key", default=os.environ.get("RECAP_API_KEY"))
    parser.add_argument("--stream", default="aegeantic-demo")
    parser.add_argument("--budget", type=int, default=400)
    args = parser.parse_args()
    # The tool fails on purpose; aegeantic would log its traceback on stderr at ERROR, burying
    # the output. The failure reaches recap (and the context below) all the same.
    logging.getLogger("agentic.tools").setLevel(logging.CRITICAL)
    recap = Recap(args.recap, args.stream, args.api_key)
    seen, forwarded = asyncio.run(run(recap))
    print(f"forwarded {seen} aegeantic events as {forwarded} recap events to stream {args.stream!r}")
    print(f"--- context window (budget {args.budget} tokens) ---")
    print(recap.context(args.budget), end="")


if __name__ == "__main__":
    main()
