"""Deeply nested JSON: every frame gets exactly one reply and nothing behind it is lost.

A request nested far deeper than any request can be (``frames.MAX_NESTING_DEPTH``)
is refused with ``bad_request``, carrying its id whenever the id is a member of
the top-level object, wherever it stands. The codec tests are sans-I/O; the
rest drive a real server over real sockets, with the nested frame and the
requests behind it written in one TCP segment, so that they are queued
together on the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from hubbub.protocol import codec, frames
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer, ServerFactory
from tests.helpers import assert_serving

LIMIT = frames.MAX_NESTING_DEPTH


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def ping_with(value: str, *, where: str = "after-id", request_id: str = "nest") -> str:
    """A ping carrying ``value`` in an extra field, before the type, between type and id, or after the id."""
    field = f'"x":{value}'
    rid = f'"id":"{request_id}"'
    if where == "before-type":
        return "{" + field + ',"type":"ping",' + rid + "}"
    if where == "before-id":
        return '{"type":"ping",' + field + "," + rid + "}"
    assert where == "after-id"
    return '{"type":"ping",' + rid + "," + field + "}"


# ---------------------------------------------------------------------------
# The codec, sans-I/O


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("42", 0),
        ('"[[[["', 0),
        ("{}", 1),
        ('{"a":[1,[2,{"b":[]}]]}', 5),
        ('{"a":"[[[{{{","b":["]]]"]}', 2),
        ('{"a":"\\"[[[\\\\","b":[[]]}', 3),  # escaped quote and backslash inside a string
        (arrays(5000), 5000),
        ("[[[", 3),  # never closed: still counted, a decoder would go that deep
        ('{"a":"[[[', 1),  # inside a string left unterminated
        ("{}[[[[", 1),  # after the top-level value
        ('{"a":1}}[[[[', 1),
        ("][[[[", 0),  # a stray closer first: a decoder stops there
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert codec.nesting_depth(text) == depth


DEEP_CASES = {
    f"{kind}-{depth}-{where}": (value, where)
    for kind, make in (("arrays", arrays), ("objects", objects))
    for depth in (LIMIT + 1, 1000, 30_000)
    for value in (make(depth),)
    for where in ("after-id", "before-type", "before-id")
}


@pytest.mark.parametrize(("value", "where"), list(DEEP_CASES.values()), ids=list(DEEP_CASES))
def test_too_deep_request_is_bad_request_with_its_id_when_the_id_comes_first(value: str, where: str) -> None:
    """The id is read when it precedes the too-deep value, whatever the depth (not only beyond
    what the decoder's stack allows), so the rule is the same for every frame."""
    raw = ping_with(value, where=where)
    expected = "nest" if where == "after-id" else None
    with pytest.raises(codec.FrameError) as info:
        codec.decode_request(raw)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert info.value.request_id == expected
    assert f"deeper than {LIMIT}" in info.value.message
    # The other paths that read the id of a refused frame (too_large, rate_limited) follow the same rule.
    assert codec.recover_request_id(raw) == expected


def test_depth_at_the_limit_is_judged_by_the_schema() -> None:
    """One level less and the frame is refused for what it is (an unknown field), not for its depth."""
    raw = ping_with(arrays(LIMIT - 1))
    assert codec.nesting_depth(raw) == LIMIT
    with pytest.raises(codec.FrameError) as info:
        codec.decode_request(raw)
    assert info.value.request_id == "nest"
    assert "unknown field `x`" in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        arrays(10_000),  # not an object: no id to read
        '{"type":"ping","id":' + arrays(10_000) + "}",  # the id itself is the nested value
        '{"type":"ping","id":"x","t":"' + "[" * 10_000,  # unterminated string: not JSON
        '{"type":"ping","id":"x"' + "}" * 5 + "[" * 10_000,  # closes more than it opened
    ],
    ids=["top-level-array", "nested-id", "unterminated-string", "unbalanced"],
)
def test_too_deep_without_a_readable_id(raw: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.decode_request(raw)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert info.value.request_id is None
    assert codec.recover_request_id(raw) is None


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[" * 2000 + '"{' * 500
    request = codec.decode_request(
        msgspec.json.encode({"type": "message.send", "id": 1, "conversation_id": 1, "text": text, "client_msg_id": "c"})
    )
    assert isinstance(request, frames.MessageSend) and request.text == text


def _schema_depth(node: dict[str, Any], defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> float:
    """How deep a JSON value valid against ``node`` can nest; infinite for any-value or recursive schemas."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        return float("inf") if name in seen else _schema_depth(defs[name], defs, seen | {name})
    options: list[dict[str, Any]] = node.get("anyOf") or node.get("oneOf") or []
    if options:
        return max(_schema_depth(option, defs, seen) for option in options)
    kind = node.get("type")
    if kind == "object":
        values = list(node.get("properties", {}).values())
        if node.get("additionalProperties", True) is not False:
            return float("inf")
        return 1 + max((_schema_depth(v, defs, seen) for v in values), default=0)
    if kind == "array":
        return 1 + _schema_depth(node.get("items", {}), defs, seen)
    if kind in ("string", "integer", "number", "boolean", "null") or "enum" in node or "const" in node:
        return 0
    return float("inf")  # {}: any value at all


def test_no_valid_request_nests_deeper_than_the_limit() -> None:
    """Why the depth is checked only once a frame has failed to decode: one that decodes
    is a valid request, and the schema bounds how deep those nest."""
    (root,), defs = msgspec.json.schema_components([frames.AnyRequest])
    assert _schema_depth(root, defs) <= LIMIT
    # The check can fail: a field of any value would be unbounded.
    assert _schema_depth({"type": "object", "properties": {"x": {}}, "additionalProperties": False}, {}) == float("inf")


# ---------------------------------------------------------------------------
# A real server, over real sockets


class RawClient:
    """A WebSocket client on websockets' sans-I/O protocol: writes frames as one TCP segment."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.received: list[frames.ServerFrame] = []

    @classmethod
    async def connect(cls, server: RunningServer) -> RawClient:
        protocol = ClientProtocol(parse_uri(server.url))
        protocol.send_request(protocol.connect())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.app.port)
        writer.writelines(protocol.data_to_send())
        client = cls(reader, writer, protocol)
        hello = await client.next_frame()
        assert isinstance(hello, frames.Hello)
        return client

    async def next_frame(self) -> frames.ServerFrame:
        while not self.received:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "the server closed the connection"
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if not isinstance(event, Frame):
                    continue  # the handshake's 101 response
                assert event.opcode is Opcode.TEXT, event
                self.received.append(codec.decode_server_frame(bytes(event.data)))
            assert self.protocol.state is State.OPEN
        return self.received.pop(0)

    async def send_together(self, texts: list[str]) -> None:
        self.writer.write(b"".join(Frame(Opcode.TEXT, t.encode()).serialize(mask=True, extensions=[]) for t in texts))
        await self.writer.drain()

    async def replies_until(self, last_id: str) -> list[frames.ResultFrame | frames.ErrorFrame]:
        """Every reply up to and including the one to ``last_id`` (events are not expected here)."""
        replies: list[frames.ResultFrame | frames.ErrorFrame] = []
        while not replies or replies[-1].id != last_id:
            frame = await self.next_frame()
            assert isinstance(frame, frames.ResultFrame | frames.ErrorFrame), frame
            replies.append(frame)
        return replies

    def close(self) -> None:
        self.writer.close()


SOCKET_CASES = {
    "issue-arrays-1000": ping_with(arrays(1000)),
    "objects-1000": ping_with(objects(1000)),
    "before-type-5000": ping_with(arrays(5000), where="before-type"),
    "before-id-objects-10000": ping_with(objects(10_000), where="before-id"),
    "just-over-the-limit": ping_with(arrays(LIMIT)),
}


@pytest.mark.parametrize("nested", list(SOCKET_CASES.values()), ids=list(SOCKET_CASES))
async def test_nested_frame_and_the_pings_behind_it_each_get_one_reply(server: RunningServer, nested: str) -> None:
    client = await RawClient.connect(server)
    bystander = await server.user()
    try:
        pings = [f'{{"type":"ping","id":"p{i}"}}' for i in range(1, 6)]
        await client.send_together([nested, *pings, '{"type":"ping","id":"last"}'])
        replies = await client.replies_until("last")
        # The id is echoed when it comes before the too-deep value.
        nest_id = "nest" if nested.index('"id"') < nested.index('"x"') else None
        assert [r.id for r in replies] == [nest_id, "p1", "p2", "p3", "p4", "p5", "last"]
        error = replies[0]
        assert isinstance(error, frames.ErrorFrame)
        assert error.error.code == ErrorCode.BAD_REQUEST
        assert f"deeper than {LIMIT}" in error.error.message
        assert all(isinstance(r, frames.ResultFrame) for r in replies[1:])
        # Nothing else arrives: the next reply is that of the next request.
        await client.send_together(['{"type":"ping","id":"after"}'])
        assert [r.id for r in await client.replies_until("after")] == ["after"]
    finally:
        client.close()
    await assert_serving(bystander)


async def test_nested_frame_without_a_readable_id_gets_one_null_id_error(server: RunningServer) -> None:
    client = await RawClient.connect(server)
    try:
        await client.send_together([arrays(20_000), '{"type":"ping","id":"last"}'])
        replies = await client.replies_until("last")
        assert [r.id for r in replies] == [None, "last"]
        assert isinstance(replies[0], frames.ErrorFrame) and replies[0].error.code == ErrorCode.BAD_REQUEST
    finally:
        client.close()


async def test_nested_frames_refused_as_too_large_or_rate_limited_keep_their_id(make_server: ServerFactory) -> None:
    """Those refusals read the id of a frame that is never decoded; a deep one must not stop them."""
    server = await make_server(max_frame_bytes=1024, rate_per_second=0.001, rate_burst=2)
    client = await RawClient.connect(server)
    try:
        too_large = ping_with(arrays(1500), request_id="big")
        assert 1024 < len(too_large) < 4 * 1024
        await client.send_together(
            [too_large, ping_with(arrays(400), request_id="deep"), ping_with("1", request_id="x1")]
        )
        replies = await client.replies_until("x1")
        assert [(r.id, r.error.code) for r in replies if isinstance(r, frames.ErrorFrame)] == [
            ("big", ErrorCode.TOO_LARGE),  # not counted against the rate limit
            ("deep", ErrorCode.BAD_REQUEST),
            ("x1", ErrorCode.BAD_REQUEST),  # an unknown field
        ]
        await client.send_together([ping_with(arrays(400), request_id="limited")])
        (limited,) = await client.replies_until("limited")
        assert isinstance(limited, frames.ErrorFrame) and limited.error.code == ErrorCode.RATE_LIMITED
    finally:
        client.close()


bracket_soup = st.text(alphabet='[]{}"\\,:1 a', max_size=120).map(lambda s: "{" + s)


@settings(max_examples=2000)
@given(text=bracket_soup)
def test_the_fast_check_agrees_with_the_reference_measure(text: str) -> None:
    assert codec.too_deep(text) == (codec.nesting_depth(text) > LIMIT)


@settings(max_examples=300)
@given(depth=st.integers(min_value=LIMIT - 2, max_value=LIMIT + 2), filler=st.sampled_from(["", "1,", '"]",', " "]))
def test_the_fast_check_at_the_limit(depth: int, filler: str) -> None:
    text = '{"x":' + (filler.join("[" for _ in range(depth - 1))) + "]" * (depth - 1) + "}"
    assert codec.nesting_depth(text) == depth
    assert codec.too_deep(text) == (depth > LIMIT)
