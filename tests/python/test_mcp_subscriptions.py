"""Subscriptions to a stream's context resource (`recap://streams/{name}/context`) with the
official MCP Python SDK (`mcp`, pinned in requirements.txt), unmodified:

- the current revision's `subscriptions/listen` (`Client.listen`), over HTTP (the updates ride
  the listen request's own response: the route stays stateless) and over stdio;
- the older revisions' `resources/subscribe` / `resources/unsubscribe` over stdio (`recap mcp`
  holds the session), and refused, with a message saying what works, over stateless HTTP.

Each test subscribes, posts an event over plain HTTP, waits for
`notifications/resources/updated`, reads the resource and finds the event; after
unsubscribing, a change to that stream brings no update. Every wait is bounded.
"""

from __future__ import annotations

import uuid

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from conftest import API_KEY
from test_mcp import TEAM_A_KEY, http_client, keyed_recap, stdio_client  # noqa: F401

UPDATED = "notifications/resources/updated"
WAIT_SECONDS = 20


def uri_of(stream: str) -> str:
    return f"recap://streams/{stream}/context"


def post(recap, stream: str, message: str) -> None:
    response = httpx.post(
        f"{recap.url}/v1/streams/{stream}/events",
        json={"kind": "tool", "message": message},
        headers=recap.headers(),
        timeout=30,
    )
    response.raise_for_status()


async def window(client, stream: str) -> str:
    return (await client.read_resource(uri_of(stream))).contents[0].text


def resource_feeds(recap) -> int:
    """`recap_mcp_resource_feeds`: the stream feeds /mcp holds open for subscriptions."""
    metrics = httpx.get(f"{recap.url}/metrics", headers=recap.headers(), timeout=30).text
    line = next(line for line in metrics.splitlines() if line.startswith("recap_mcp_resource_feeds "))
    return int(line.split()[1])


async def let_go(client, recap, transport: str) -> None:
    """Returns once the server has ended the subscriptions `client` closed. Over HTTP the
    client closes the listen request's response and the server notices: its feeds gauge drops
    to zero. Over stdio the cancellation and the next request share one ordered channel, so a
    round trip is enough."""
    if transport == "stdio":
        await client.call_tool("list_streams", {})
        return
    while resource_feeds(recap) > 0:
        await anyio.sleep(0.05)


def client_for(transport: str, recap, key: str | None = API_KEY, **options):
    if transport == "http":
        return http_client(recap.url, key, **options)
    return stdio_client(recap.url, key, **options)


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_listen_reports_each_change_until_closed(recap, transport):
    mine = f"sub-{uuid.uuid4().hex[:8]}"
    other = f"sub-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async def record(message) -> None:
        if getattr(message, "method", None) == UPDATED:
            seen.append(message.params.uri)

    async def main():
        async with client_for(transport, recap, message_handler=record) as client:
            assert client.protocol_version >= "2026"
            assert client.server_capabilities.resources.subscribe is True
            with anyio.fail_after(WAIT_SECONDS):
                async with client.listen(
                    resource_subscriptions=[uri_of(mine), "file:///etc/passwd"]
                ) as subscription:
                    # Only context resources are honoured.
                    assert subscription.honored.resource_subscriptions == [uri_of(mine)]
                    # The first update says the feed is open: every later change is reported.
                    first = await subscription.__anext__()
                    assert first.uri == uri_of(mine)
                    post(recap, mine, "search timed out after 30s")
                    update = await subscription.__anext__()
                    assert update.uri == uri_of(mine)
                    assert "search timed out after 30s" in await window(client, mine)

                # Closed: once the server has let go of it, a change to `mine` brings nothing.
                # `other`'s update, on a subscription opened after that change, is the point
                # by which it would have come.
                await let_go(client, recap, transport)
                post(recap, mine, "after the subscription ended")
                async with client.listen(resource_subscriptions=[uri_of(other)]) as subscription:
                    assert (await subscription.__anext__()).uri == uri_of(other)
                    post(recap, other, "a change to the other stream")
                    assert (await subscription.__anext__()).uri == uri_of(other)
                assert "after the subscription ended" in await window(client, mine)
        # Updates on a listen stream are its own: none came as loose notifications.
        # The message handler sees a listen stream's updates too: two for each stream (the
        # first, then the change), none for `mine` after its subscription ended.
        assert seen.count(uri_of(mine)) == 2, seen
        assert seen.count(uri_of(other)) == 2, seen

    anyio.run(main)


def test_resources_subscribe_over_stdio(recap):
    """The older revisions' subscription: the stdio connection is the session."""
    mine = f"legacy-{uuid.uuid4().hex[:8]}"
    other = f"legacy-{uuid.uuid4().hex[:8]}"
    updates: list[str] = []
    arrived = {"event": anyio.Event()}

    async def record(message) -> None:
        if getattr(message, "method", None) == UPDATED:
            updates.append(message.params.uri)
            arrived["event"].set()

    async def next_update() -> str:
        await arrived["event"].wait()
        arrived["event"] = anyio.Event()
        return updates[-1]

    async def main():
        client = stdio_client(recap.url, API_KEY, mode="legacy", message_handler=record)
        async with client:
            assert client.protocol_version < "2026"
            assert client.server_capabilities.resources.subscribe is True
            with anyio.fail_after(WAIT_SECONDS):
                with pytest.warns(MCPDeprecationWarning):
                    await client.subscribe_resource(uri_of(mine))
                # Subscribed once the answer came: no first update is needed or sent.
                post(recap, mine, "cargo test failed")
                assert await next_update() == uri_of(mine)
                assert "cargo test failed" in await window(client, mine)

                with pytest.warns(MCPDeprecationWarning):
                    await client.unsubscribe_resource(uri_of(mine))
                post(recap, mine, "after unsubscribing")
                with pytest.warns(MCPDeprecationWarning):
                    await client.subscribe_resource(uri_of(other))
                post(recap, other, "a change to the other stream")
                assert await next_update() == uri_of(other)
            assert updates == [uri_of(mine), uri_of(other)]

    anyio.run(main)


def test_stateless_http_refuses_the_older_subscription(recap):
    """Over HTTP an older-revision client is told subscriptions are not offered, and why."""

    async def main():
        async with http_client(recap.url, API_KEY, mode="legacy") as client:
            assert not client.server_capabilities.resources.subscribe
            with pytest.raises(MCPError) as refused, pytest.warns(MCPDeprecationWarning):
                await client.subscribe_resource(uri_of("demo"))
            assert "stateless" in str(refused.value), refused.value
            assert "subscriptions/listen" in str(refused.value), refused.value

    anyio.run(main)


def test_listen_is_confined_to_the_key_s_streams(keyed_recap):  # noqa: F811
    async def main():
        async with http_client(keyed_recap.url, TEAM_A_KEY) as client:
            with anyio.fail_after(WAIT_SECONDS):
                with pytest.raises(Exception) as refused:
                    async with client.listen(
                        resource_subscriptions=[uri_of("team-b.x")]
                    ) as subscription:
                        await subscription.__anext__()
            said = f"{refused.value} {refused.value.__cause__}"
            assert 'confined to streams starting with "team-a."' in said, said

    anyio.run(main)
