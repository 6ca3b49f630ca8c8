"""recap's MCP server with the official MCP Python SDK (`mcp`, pinned in requirements.txt) as
the client, unmodified: over Streamable HTTP at /mcp and over stdio (`recap mcp --server URL`,
which forwards to a running recap), in the current protocol revision (no handshake) and the
older initialize handshake.
"""

from __future__ import annotations

import json
import uuid

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import API_KEY, recap_binary, running_recap

TOOLS = {"get_context", "log_event", "remember", "forget", "list_streams", "get_events"}
TEAM_A_KEY = "team-a-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
EXTRA_KEYS = f"""
[[keys]]
name = "team a"
key = "{TEAM_A_KEY}"
scopes = ["read", "write"]
prefix = "team-a."

[[keys]]
name = "reader"
key = "{READER_KEY}"
scopes = ["read"]
"""


@pytest.fixture(scope="module")
def keyed_recap():
    """A server with the admin key, a read/write key confined to `team-a.`, and a read-only key."""
    with running_recap(keys=True, extra_keys=EXTRA_KEYS) as server:
        yield server


def http_client(url: str, key: str | None, mode: str = "auto", **options) -> Client:
    """The SDK's client over Streamable HTTP at /mcp (`options` go to `Client`)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = streamable_http_client(
        f"{url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30)
    )
    return Client(transport, mode=mode, **options)


def stdio_client(url: str, key: str | None, **options) -> Client:
    """The SDK's client over stdio, starting `recap mcp --server URL` (`options` go to
    `Client`)."""
    env = {"RECAP_KEY": key} if key else {}
    params = StdioServerParameters(
        command=str(recap_binary()), args=["mcp", "--server", url], env=env
    )
    return Client(params, **options)


def text(result) -> str:
    return "\n".join(block.text for block in result.content)


async def collapse_note_forget(client: Client) -> None:
    """The issue's walk-through: three identical events show as x3; a note shows first; a
    forgotten note is gone."""
    stream = f"mcp-{uuid.uuid4().hex[:8]}"
    tools = await client.list_tools()
    assert TOOLS <= {tool.name for tool in tools.tools}
    for tool in tools.tools:
        assert tool.description and len(tool.description) > 40, tool.name

    for attempt in range(3):
        result = await client.call_tool(
            "log_event",
            {
                "stream": stream,
                "kind": "tool",
                "severity": "error",
                "message": "search timed out after 30s",
            },
        )
        assert not result.is_error, text(result)
        written = json.loads(text(result))
        assert written == {"seq": 1, "repeat_count": attempt + 1, "collapsed": attempt > 0}

    result = await client.call_tool("get_context", {"stream": stream, "budget": 500})
    assert not result.is_error, text(result)
    window = result.content[0].text
    assert "search timed out after 30s x3" in window or "x3" in window, window
    assert "tokens of a 500-token budget" in result.content[1].text

    result = await client.call_tool(
        "remember", {"stream": stream, "text": "the user wants a patch, not a rewrite"}
    )
    assert not result.is_error, text(result)
    note_id = json.loads(text(result))["note_id"]
    window = (await client.call_tool("get_context", {"stream": stream})).content[0].text
    assert window.index("the user wants a patch") < window.index("search timed out"), window

    result = await client.call_tool("forget", {"stream": stream, "note_id": note_id})
    assert not result.is_error, text(result)
    window = (await client.call_tool("get_context", {"stream": stream})).content[0].text
    assert "the user wants a patch" not in window, window
    assert "x3" in window

    page = json.loads(text(await client.call_tool("get_events", {"stream": stream})))
    assert page["records"][0]["repeat_count"] == 3
    streams = json.loads(text(await client.call_tool("list_streams", {"prefix": "mcp-"})))
    assert stream in {s["name"] for s in streams["streams"]}

    # Each stream's context is a resource too.
    templates = await client.list_resource_templates()
    assert [t.uri_template for t in templates.resource_templates] == [
        "recap://streams/{name}/context"
    ]
    uri = f"recap://streams/{stream}/context"
    assert uri in {str(r.uri) for r in (await client.list_resources()).resources}
    contents = (await client.read_resource(uri)).contents
    assert "x3" in contents[0].text, contents

    # A mistake is a tool error that says what to fix, not a protocol error.
    result = await client.call_tool(
        "log_event", {"stream": stream, "kind": "tool", "message": "x", "severity": "loud"}
    )
    assert result.is_error
    assert "debug, info, warning, error, critical" in text(result), text(result)
    result = await client.call_tool("forget", {"stream": stream, "note_id": note_id})
    assert result.is_error and f"no note {note_id}" in text(result), text(result)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_over_http_in_both_protocol_modes(recap, mode):
    async def main():
        async with http_client(recap.url, API_KEY, mode) as client:
            # "auto" negotiates the current revision (server/discover, no handshake); "legacy"
            # runs the initialize handshake of the older revisions.
            if mode == "legacy":
                assert client.protocol_version < "2026"
            else:
                assert client.protocol_version >= "2026"
            await collapse_note_forget(client)

    anyio.run(main)


def test_over_stdio(recap):
    async def main():
        async with stdio_client(recap.url, API_KEY) as client:
            await collapse_note_forget(client)

    anyio.run(main)


def test_over_http_and_stdio_without_keys(open_recap):
    async def main():
        async with http_client(open_recap.url, None) as client:
            await collapse_note_forget(client)
        async with stdio_client(open_recap.url, None) as client:
            await collapse_note_forget(client)

    anyio.run(main)


def test_a_keyed_server_without_a_key_is_401(recap):
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "pytest", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for bad in [{}, {"Authorization": "Bearer not-the-key-0123456789"}]:
        response = httpx.post(f"{recap.url}/mcp", json=initialize, headers={**headers, **bad})
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26"])
def test_older_revisions_initialize_by_raw_json_rpc(recap, version):
    """A client of an older revision: `initialize`, then calls, each a plain POST (no session)."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "X-API-Key": API_KEY,
    }
    response = httpx.post(
        f"{recap.url}/mcp",
        headers=headers,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "pytest", "version": "0"},
            },
        },
    )
    assert response.status_code == 200, response.text
    assert "mcp-session-id" not in response.headers
    result = response.json()["result"]
    assert result["protocolVersion"] == version
    assert result["serverInfo"]["name"] == "recap"
    assert "tools" in result["capabilities"]

    headers["MCP-Protocol-Version"] = version
    response = httpx.post(
        f"{recap.url}/mcp",
        headers=headers,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
    )
    assert response.status_code == 200, response.text
    assert TOOLS <= {tool["name"] for tool in response.json()["result"]["tools"]}


def test_keys_confine_tools_to_their_prefix_and_scopes(keyed_recap):
    async def main():
        async with http_client(keyed_recap.url, TEAM_A_KEY) as client:
            mine = await client.call_tool(
                "log_event", {"stream": "team-a.x", "kind": "tool", "message": "ran"}
            )
            assert not mine.is_error, text(mine)
            for name, arguments in [
                ("get_context", {"stream": "team-b.x"}),
                ("get_events", {"stream": "team-b.x"}),
                ("log_event", {"stream": "team-b.x", "kind": "tool", "message": "x"}),
                ("remember", {"stream": "team-b.x", "text": "x"}),
            ]:
                theirs = await client.call_tool(name, arguments)
                assert theirs.is_error, name
                assert 'confined to streams starting with "team-a."' in text(theirs), text(theirs)
            listed = json.loads(text(await client.call_tool("list_streams", {})))
            assert {s["name"] for s in listed["streams"]} == {"team-a.x"}
        async with http_client(keyed_recap.url, READER_KEY) as client:
            window = await client.call_tool("get_context", {"stream": "team-a.x"})
            assert not window.is_error and "ran" in text(window)
            write = await client.call_tool(
                "log_event", {"stream": "team-a.x", "kind": "tool", "message": "x"}
            )
            assert write.is_error and "lacks the write scope" in text(write), text(write)

    anyio.run(main)
