"""Malformed frames: each gets one bad_request error, echoing the id when it can
be read, and neither the connection nor its neighbours notice anything else."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer


@dataclass(frozen=True)
class Case:
    data: str | bytes
    request_id: frames.RequestId | None
    """The id the error must echo; None when the id cannot be read."""
    mentions: str
    """A word the error message must contain (case-insensitive)."""


CASES: dict[str, Case] = {
    "malformed-json": Case('{"type":"ping","id":"j1"', None, "json"),
    "not-json-at-all": Case("hello there", None, "json"),
    "empty-text": Case("", None, "json"),
    "trailing-garbage": Case('{"type":"ping","id":"j2"} x', None, "json"),
    "array": Case('[{"type":"ping","id":"a1"}]', None, "object"),
    "number": Case("42", None, "object"),
    "string": Case('"ping"', None, "object"),
    "null": Case("null", None, "object"),
    "boolean": Case("true", None, "object"),
    "unknown-type": Case('{"type":"channel.delete","id":"u1","channel_id":1}', "u1", "unknown request type"),
    "type-not-a-string": Case('{"type":7,"id":"u2"}', "u2", "type"),
    "missing-type": Case('{"id":"t1"}', "t1", "type"),
    "missing-field": Case('{"type":"channel.join","id":"m1"}', "m1", "channel_id"),
    "missing-id": Case('{"type":"ping"}', None, "id"),
    "extra-field": Case('{"type":"ping","id":"e1","extra":true}', "e1", "extra"),
    "wrong-field-type": Case('{"type":"channel.join","id":"w1","channel_id":"one"}', "w1", "channel_id"),
    "field-out-of-range": Case('{"type":"channel.join","id":"w2","channel_id":0}', "w2", "channel_id"),
    "integer-id": Case('{"type":"channel.join","id":77,"channel_id":"one"}', 77, "channel_id"),
    "null-id": Case('{"type":"ping","id":null}', None, "id"),
    "id-wrong-type": Case('{"type":"ping","id":[1]}', None, "id"),
    "id-float": Case('{"type":"ping","id":1.5}', None, "id"),
    "id-too-long": Case('{"type":"ping","id":"' + "i" * 65 + '"}', None, "64"),
    "id-too-long-and-invalid": Case('{"type":"ping","id":"' + "i" * 65 + '","x":1}', None, "x"),
    "id-64-chars-and-invalid": Case('{"type":"ping","id":"' + "i" * 64 + '","x":1}', "i" * 64, "x"),
    "binary-frame": Case(b'{"type":"ping","id":"b1"}', None, "binary"),
}


async def send_malformed(client: Client, case: Case) -> frames.ErrorFrame:
    """Send the case as is and return its error reply."""
    if case.request_id is None:
        await client.send_raw(case.data)
        # An error without an id cannot be matched to a request: the client queues it.
        return await asyncio.wait_for(client.orphan_errors.get(), 10)
    waiter = asyncio.ensure_future(client.reply_to(case.request_id))
    await asyncio.sleep(0)  # let reply_to register before the reply can arrive
    await client.send_raw(case.data)
    reply = await waiter
    assert isinstance(reply, frames.ErrorFrame), reply
    return reply


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_malformed_frame_is_bad_request(server: RunningServer, case: Case) -> None:
    client = await server.user()
    neighbour = await server.user()
    reply = await send_malformed(client, case)
    assert reply.error.code == ErrorCode.BAD_REQUEST
    assert reply.id == case.request_id
    assert case.mentions.lower() in reply.error.message.lower(), reply.error.message
    # Exactly one reply: the next request's reply is the next thing to arrive.
    assert isinstance(await client.call("ping"), frames.Pong)
    assert client.orphan_errors.empty()
    # Still authenticated, still open.
    assert (await client.call("me")).user == client.user
    assert (await neighbour.call("me")).user == neighbour.user
    assert neighbour.orphan_errors.empty()


async def test_malformed_before_auth_is_bad_request(server: RunningServer) -> None:
    client = await server.client()
    reply = await send_malformed(client, CASES["wrong-field-type"])
    assert reply.error.code == ErrorCode.BAD_REQUEST
    assert reply.id == "w1"
    assert isinstance(await client.call("ping"), frames.Pong)
    await client.register("afterwards", "correct horse")
    assert (await client.call("me")).user == client.user


async def test_many_malformed_frames_in_a_row(server: RunningServer) -> None:
    """A burst of every case, pipelined: one error each, in order, and service continues."""
    client = await server.user()
    neighbour = await server.user()
    cases = list(CASES.values())
    expected_null = sum(1 for c in cases if c.request_id is None)
    waiters = {
        c.request_id: asyncio.ensure_future(client.reply_to(c.request_id)) for c in cases if c.request_id is not None
    }
    await asyncio.sleep(0)
    for case in cases:
        await client.send_raw(case.data)
    for request_id, waiter in waiters.items():
        reply = await asyncio.wait_for(waiter, 10)
        assert isinstance(reply, frames.ErrorFrame)
        assert reply.id == request_id
        assert reply.error.code == ErrorCode.BAD_REQUEST
    assert isinstance(await client.call("ping"), frames.Pong)
    # The ping's reply came after every error (requests are answered in order).
    nulls = [client.orphan_errors.get_nowait() for _ in range(client.orphan_errors.qsize())]
    assert len(nulls) == expected_null
    assert all(e.id is None and e.error.code == ErrorCode.BAD_REQUEST for e in nulls)
    assert (await neighbour.call("me")).user == neighbour.user
