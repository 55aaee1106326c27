"""Property test: whatever frames a client throws at the server, every one gets
exactly one reply, each reply is a valid ``result`` or ``error`` frame, and the
connection keeps serving.

Hypothesis drives a synchronous function, so the server and one authenticated
raw WebSocket connection live on an event loop in a background thread for the
whole test; each example sends its frames over that same connection.

The client connections send no keepalive pings of their own: websockets draws
a ping's payload from the global ``random`` module, and a draw in the
background thread while Hypothesis generates an example is reported as the
strategies' use of ``random`` (HypothesisDeprecationWarning, an error here).
The server's pings are still answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from hubbub.protocol import codec, frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.app import App
from hubbub.server.config import Settings
from tests.conftest import TEST_SETTINGS

T = TypeVar("T")

pytestmark = pytest.mark.filterwarnings("error::hypothesis.errors.HypothesisDeprecationWarning")

MAX_EXAMPLES = 300
MAX_FRAMES = 20
REPLY_TIMEOUT = 20.0

ENDS_THE_CONNECTION = {"session.end_all"}
"""Closes the fuzzed connection by design (4003); tests/test_profiles.py covers it."""
REQUEST_TAGS = [frames.tag_of(t) for t in frames.REQUEST_TYPES if frames.tag_of(t) not in ENDS_THE_CONNECTION]
FIELD_NAMES = sorted({f for t in frames.REQUEST_TYPES for f in t.__struct_fields__ if f != "id"})

# ---------------------------------------------------------------------------
# Strategies

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
# Values that pass the schema (small ids, so that they often name real objects)...
object_id = st.integers(min_value=1, max_value=6)
# Text fields refuse control characters (message text allows tab and line feed).
single_line = st.characters(exclude_categories=("Cc", "Cs"))
VALID: dict[str, st.SearchStrategy[Any]] = {
    "username": st.from_regex(r"[a-z0-9][a-z0-9_.-]{2,12}", fullmatch=True) | st.sampled_from(["fuzzer", "other"]),
    "password": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=8, max_size=12)
    | st.just("password"),
    "display_name": st.text(single_line, min_size=1, max_size=10),
    "token": st.text(single_line, min_size=1, max_size=20),
    "name": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True),
    "topic": st.text(single_line, max_size=20),
    "private": st.booleans(),
    "channel_id": object_id,
    "conversation_id": object_id,
    "user_id": object_id,
    "user_ids": st.lists(object_id, min_size=1, max_size=3),
    "text": st.text(st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from("\t\n"), min_size=1, max_size=30),
    "client_msg_id": st.text(single_line, min_size=1, max_size=10),
    "before": st.none() | st.integers(min_value=0, max_value=10),
    "after": st.none() | st.integers(min_value=0, max_value=10),
    "limit": st.integers(min_value=1, max_value=100),
    "order": st.sampled_from(["asc", "desc", "newest", "relevance"]),
    "thread_root_id": st.none() | st.text(single_line, min_size=1, max_size=10),
    "also_in_channel": st.booleans(),
    "include_replies": st.booleans(),
    "message_id": st.text(single_line, min_size=1, max_size=10),
    "emoji": st.sampled_from(["👍", ":+1:", ":tada:", "🏳️‍🌈", ":no_such_emoji:", "ab"]),
    "after_rev": st.integers(min_value=0, max_value=10),
    "status_text": st.none() | st.text(single_line, max_size=20),
    "status_emoji": st.none() | st.sampled_from(["", "🌴", ":tada:", ":no_such_emoji:"]),
    "status_expires_at": st.none() | st.integers(min_value=0, max_value=2**53),
    "time_zone": st.none() | st.sampled_from(["", "UTC", "Europe/Paris", "Mars/Base"]),
    "avatar_url": st.none() | st.sampled_from(["", "https://example.org/a.png", "http://x"]),
    "searchable": st.none() | st.booleans(),
    "query": st.text(single_line, min_size=1, max_size=10),
    "cursor": st.none() | st.text(single_line, min_size=1, max_size=10),
    "old_password": st.just("password")
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
    "new_password": st.just("password"),
    "seq": st.integers(min_value=0, max_value=10),
    "muted": st.booleans(),
    "include_archived": st.booleans(),
    "purpose": st.none() | st.text(single_line, max_size=20),
    "archived": st.none() | st.booleans(),
    "invite_policy": st.none() | st.sampled_from(["anyone", "admins"]),
    "role": st.sampled_from(["owner", "admin", "member"]),
    "sender_id": st.none() | object_id,
    "after_ts": st.none() | st.integers(min_value=0, max_value=2**53),
    "before_ts": st.none() | st.integers(min_value=0, max_value=2**53),
    "threads_only": st.booleans(),
    "retention_max_age_days": st.none() | st.integers(min_value=0, max_value=5000),
    "retention_max_messages": st.none() | st.integers(min_value=0, max_value=20_000_000),
}
# ...and values at or past the schema's edges.
edge_id = st.sampled_from([-1, 0, 2**53, 2**53 + 1, 2**63, 2**64])
EDGE: dict[str, st.SearchStrategy[Any]] = {
    "username": st.text(max_size=4) | st.text(min_size=32, max_size=34) | st.just("fuzzer\n"),
    "password": st.text(max_size=8) | st.text(min_size=256, max_size=257),
    "display_name": st.just("") | st.text(min_size=64, max_size=65),
    "token": st.just("") | st.text(min_size=4096, max_size=4097),
    "name": st.text(max_size=5) | st.text(min_size=80, max_size=81) | st.just("general\n"),
    "topic": st.text(min_size=250, max_size=251) | st.just("a\x00"),
    "private": st.sampled_from([0, 1, "true"]),
    "channel_id": edge_id,
    "conversation_id": edge_id,
    "user_id": edge_id,
    "user_ids": st.lists(object_id | edge_id, max_size=10) | st.lists(object_id, min_size=101, max_size=101),
    "text": st.sampled_from(["", "a\x00b", "\r", "\x1b[2J"]) | st.text(min_size=4000, max_size=4001),
    "client_msg_id": st.just("") | st.text(min_size=64, max_size=65),
    "before": edge_id,
    "after": edge_id,
    "limit": st.sampled_from([0, 101, -1]),
    "order": st.text(max_size=5),
    "thread_root_id": st.sampled_from(["", "a\nb", 7]) | st.text(min_size=65, max_size=66),
    "also_in_channel": st.sampled_from([0, 1, "true", None]),
    "include_replies": st.sampled_from([0, 1, "false", None]),
    "message_id": st.sampled_from(["", "a\nb", 7]) | st.text(min_size=65, max_size=66),
    "emoji": st.sampled_from(["", "a\x00", 1]) | st.text(min_size=64, max_size=66),
    "after_rev": edge_id,
    "status_text": st.text(min_size=256, max_size=257) | st.just("a\nb"),
    "status_emoji": st.sampled_from(["a\x00", 1]) | st.text(min_size=64, max_size=66),
    "status_expires_at": edge_id,
    "time_zone": st.sampled_from(["../etc", "a\nb", 5]) | st.text(min_size=64, max_size=66),
    "avatar_url": st.sampled_from(["ftp://x", "https://", "javascript:1", "https://a b"])
    | st.text(min_size=2048, max_size=2049),
    "searchable": st.sampled_from([0, 1, "true"]),
    "query": st.just("") | st.text(min_size=64, max_size=66),
    "cursor": st.just("") | st.text(min_size=32, max_size=34),
    "old_password": st.just("") | st.text(min_size=256, max_size=257),
    "new_password": st.text(max_size=7) | st.text(min_size=256, max_size=257),
    "seq": edge_id,
    "muted": st.sampled_from([0, 1, "true", None]),
    "include_archived": st.sampled_from([0, 1, "true", None]),
    "purpose": st.text(min_size=250, max_size=251) | st.just("a\x00"),
    "archived": st.sampled_from([0, 1, "true"]),
    "invite_policy": st.sampled_from(["", "nobody", "Admins", 1]),
    "role": st.sampled_from(["", "king", "Owner", None, 1]),
    "sender_id": edge_id,
    "after_ts": edge_id,
    "before_ts": edge_id,
    "threads_only": st.sampled_from([0, 1, "true", None]),
    "retention_max_age_days": st.sampled_from([-1, 2**31, 2**53, "7", 1.5]),
    "retention_max_messages": st.sampled_from([-1, 2**31, 2**63, "100", 0.5]),
}
assert set(VALID) == set(EDGE) == set(FIELD_NAMES), "add the new request fields to VALID and EDGE"


@dataclass(frozen=True)
class IdSpec:
    """How a structured frame carries its id; the actual value is made unique at send time."""

    kind: Literal["str", "int", "negative", "huge", "missing", "null", "long", "junk"]
    extra: Any = None


readable_ids = st.builds(IdSpec, st.just("str"), st.text(max_size=70)) | st.builds(
    IdSpec, st.sampled_from(["int", "negative", "huge"])
)
unreadable_ids = st.one_of(
    st.builds(IdSpec, st.sampled_from(["missing", "null"])),
    st.builds(IdSpec, st.just("long"), st.integers(min_value=65, max_value=100)),
    st.builds(IdSpec, st.just("junk"), st.booleans() | st.floats() | st.lists(json_leaf, max_size=2) | st.just({})),
)


@st.composite
def id_specs(draw: st.DrawFn) -> IdSpec:
    """Mostly readable ids, so that most frames reach the request handlers."""
    spec: IdSpec = draw(readable_ids if draw(st.integers(0, 9)) < 8 else unreadable_ids)
    return spec


@dataclass(frozen=True)
class Structured:
    """A JSON object frame with an ``id`` we control."""

    body: dict[str, Any]
    id_spec: IdSpec


@dataclass(frozen=True)
class RawText:
    text: str


@dataclass(frozen=True)
class RawBinary:
    data: bytes


@dataclass(frozen=True)
class Nested:
    """A structured frame with a deeply nested extra member, first or last in the object."""

    inner: Structured
    depth: int
    """Of the extra member's value; the frame is one level deeper."""
    first: bool


Fuzz = Structured | RawText | RawBinary | Nested


@st.composite
def well_formed_ish(draw: st.DrawFn) -> dict[str, Any]:
    """A real request type: mostly a valid one, else with fields missing, odd or extra."""
    tag = draw(st.sampled_from(REQUEST_TAGS))
    struct = next(t for t in frames.REQUEST_TYPES if frames.tag_of(t) == tag)
    body: dict[str, Any] = {"type": tag}
    clean = draw(st.integers(0, 9)) < 7
    for field in struct.__struct_fields__:
        if field == "id":
            continue
        if clean:
            # Every field present (defaults included): the request passes the schema.
            body[field] = draw(VALID[field])
        elif draw(st.integers(0, 4)) > 0:
            body[field] = draw(st.one_of(VALID[field], EDGE[field], json_value))
    if not clean and draw(st.booleans()):
        body[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(json_value)
    return body


random_body = st.fixed_dictionaries(
    {},
    optional={"type": st.sampled_from(REQUEST_TAGS) | st.text(max_size=12) | json_value},
).flatmap(
    lambda base: st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.text(max_size=8),
        st.one_of(*VALID.values(), *EDGE.values()) | json_value,
        max_size=4,
    ).map(lambda extra: {k: v for k, v in {**extra, **base}.items() if k != "id"})
)


@st.composite
def fuzz_frames(draw: st.DrawFn) -> Fuzz:
    """Half plausible requests, which exercise the handlers, half anything else."""
    if draw(st.booleans()):
        return Structured(draw(well_formed_ish()), draw(id_specs()))
    frame: Fuzz = draw(
        st.one_of(
            st.builds(Structured, random_body, id_specs()),
            st.builds(RawText, json_value.map(lambda v: json.dumps(v, allow_nan=False))),
            st.builds(RawText, st.text(max_size=60)),
            st.builds(RawBinary, st.binary(max_size=60)),
            st.builds(
                Nested,
                st.builds(Structured, well_formed_ish(), id_specs()),
                st.sampled_from([frames.MAX_NESTING_DEPTH - 1, frames.MAX_NESTING_DEPTH, 1000, 5000]),
                st.booleans(),
            ),
        )
    )
    return frame


# ---------------------------------------------------------------------------
# Expected replies


_counter = itertools.count(1)


def materialize(frame: Fuzz) -> tuple[str | bytes, frames.RequestId | None]:
    """The bytes to send and the id the reply must carry (None: unreadable id)."""
    if isinstance(frame, RawBinary):
        return frame.data, None
    if isinstance(frame, RawText):
        return frame.text, readable_id(frame.text)
    if isinstance(frame, Nested):
        payload, inner_id = materialize(frame.inner)
        assert isinstance(payload, str) and payload.startswith("{")
        member = '"deep":' + "[" * frame.depth + "]" * frame.depth
        comma = "," if payload != "{}" else ""
        text = "{" + member + comma + payload[1:] if frame.first else payload[:-1] + comma + member + "}"
        # Of a frame nested too deep, only an id before the too-deep value is read.
        too_deep = frame.depth + 1 > frames.MAX_NESTING_DEPTH
        return text, None if too_deep and frame.first else inner_id
    n = next(_counter)
    spec = frame.id_spec
    body = dict(frame.body)
    expected: frames.RequestId | None
    if spec.kind == "str":
        expected = f"f{n}:{spec.extra}"[:64]
    elif spec.kind == "int":
        expected = n
    elif spec.kind == "negative":
        expected = -n
    elif spec.kind == "huge":
        expected = 2**64 + n
    else:
        expected = None
    if expected is not None:
        body["id"] = expected
    elif spec.kind == "null":
        body["id"] = None
    elif spec.kind == "long":
        body["id"] = f"f{n}:".ljust(spec.extra, "x")
    elif spec.kind == "junk":
        body["id"] = spec.extra
    # Non-ASCII as is, so that even the longest generated frame stays far below 4x max_frame_bytes.
    return json.dumps(body, allow_nan=True, ensure_ascii=False), expected


def readable_id(text: str) -> frames.RequestId | None:
    """What the protocol says about the id of an arbitrary text frame."""
    try:
        value = json.loads(text, parse_constant=_reject)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    rid = value.get("id")
    if isinstance(rid, str) and len(rid) <= 64:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid
    return None


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# ---------------------------------------------------------------------------
# The server and the connection, on a loop in a background thread


class Live:
    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server", daemon=True)
        self.thread.start()
        values = {**TEST_SETTINGS, "data_dir": str(data_dir), "rate_per_second": 1e6, "rate_burst": 1_000_000}
        self.app = App(msgspec.convert(values, Settings))
        self.ws: ClientConnection | None = None
        self._sync_ids = itertools.count(1)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = REPLY_TIMEOUT + 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        await self.app.start()
        url = f"ws://127.0.0.1:{self.app.port}/"
        # A second user, so that dm.open and channel.invite can succeed.
        async with connect(url, subprotocols=[Subprotocol(frames.PROTOCOL_VERSION)], ping_interval=None) as other:
            await other.recv()  # hello
            await self._call(
                other, {"type": "register", "username": "other", "password": "password", "display_name": "o"}
            )
        # No client pings (see the module's docstring): their payloads come from `random`.
        self.ws = await connect(
            url, subprotocols=[Subprotocol(frames.PROTOCOL_VERSION)], compression=None, ping_interval=None
        )
        assert isinstance(codec.decode_server_frame(await self.ws.recv()), frames.Hello)
        await self._call(
            self.ws, {"type": "register", "username": "fuzzer", "password": "password", "display_name": "f"}
        )

    async def _call(self, ws: ClientConnection, body: dict[str, Any]) -> frames.ResultFrame:
        body["id"] = "setup"
        await ws.send(json.dumps(body))
        while True:
            frame = codec.decode_server_frame(await ws.recv())
            if isinstance(frame, frames.ErrorFrame):
                raise AssertionError(frame)
            if isinstance(frame, frames.ResultFrame):
                return frame

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.app.stop()

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def exchange(self, payloads: list[str | bytes]) -> tuple[list[str | bytes], frames.ResultFrame]:
        """Send the payloads, then a ping; every frame received before the ping's reply,
        and that reply. The server answers a connection's requests in order, so a
        second reply to any payload would arrive before the ping's."""
        ws = self.ws
        assert ws is not None
        async with asyncio.timeout(REPLY_TIMEOUT):
            # Start clean: skip whatever an earlier, failed example left behind.
            await self._ping_and_collect(ws, f"sync-{next(self._sync_ids)}")
            for payload in payloads:
                await ws.send(payload)
            return await self._ping_and_collect(ws, f"end-{next(self._sync_ids)}")

    async def _ping_and_collect(
        self, ws: ClientConnection, ping_id: str
    ) -> tuple[list[str | bytes], frames.ResultFrame]:
        await ws.send(json.dumps({"type": "ping", "id": ping_id}))
        received: list[str | bytes] = []
        while True:
            raw = await ws.recv()
            try:
                frame = codec.decode_server_frame(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                frame = None  # reported by check_replies
            if isinstance(frame, frames.ResultFrame) and frame.id == ping_id:
                return received, frame
            received.append(raw)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    server = Live(tmp_path / "data")
    try:
        server.run(server.start())
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------------------
# The property

# A reply saying the server itself failed is a bug, whatever the input.
SERVER_FAULTS = {ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE}
VALID_CODES = {code.value for code in ErrorCode}


def check_replies(sent: list[tuple[Fuzz, str | bytes, frames.RequestId | None]], received: list[str | bytes]) -> None:
    replies: list[frames.ResultFrame | frames.ErrorFrame] = []
    for raw in received:
        frame = codec.decode_server_frame(raw)  # raises on anything that is not a valid server frame
        if isinstance(frame, frames.ResultFrame | frames.ErrorFrame):
            replies.append(frame)
        else:
            assert isinstance(frame, frames.EVENT_TYPES) and not isinstance(frame, frames.Hello), frame

    # The request types sent under each readable id (ids of raw frames may repeat).
    ops_by_id: dict[frames.RequestId, set[str | None]] = {}
    for fuzz, payload, rid in sent:
        if rid is not None:
            body = (
                fuzz.body
                if isinstance(fuzz, Structured)
                else fuzz.inner.body
                if isinstance(fuzz, Nested)
                else json.loads(payload)
            )
            op = body.get("type")
            ops_by_id.setdefault(rid, set()).add(op if isinstance(op, str) else None)
    expected = Counter(rid for _, _, rid in sent)
    got = Counter(reply.id for reply in replies)
    assert got == expected, f"replies by id {dict(got)} != one per frame {dict(expected)}"

    for reply in replies:
        if isinstance(reply, frames.ErrorFrame):
            assert reply.error.code in VALID_CODES, reply
            assert reply.error.code not in SERVER_FAULTS, reply
            assert isinstance(reply.error.message, str) and reply.error.message, reply
            continue
        # A result only for a valid request, shaped as that request's result type.
        assert reply.id is not None
        ops = {op for op in ops_by_id[reply.id] if op is not None and op in frames.RESULT_TYPES}
        assert ops, f"a result for frames of types {ops_by_id[reply.id]}: {reply}"
        shapes_ok = []
        for op in ops:
            try:
                msgspec.convert(reply.result, frames.RESULT_TYPES[op])
                shapes_ok.append(op)
            except msgspec.ValidationError:
                pass
        assert shapes_ok, f"result does not match the result type of {ops}: {reply}"


def test_random_frames_get_exactly_one_valid_reply(live: Live) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(fuzz_frames(), max_size=MAX_FRAMES))
    def property_(batch: list[Fuzz]) -> None:
        sent = [(fuzz, *materialize(fuzz)) for fuzz in batch]
        received, pong = live.run(live.exchange([payload for _, payload, _ in sent]))
        check_replies(sent, received)
        assert isinstance(msgspec.convert(pong.result, frames.Pong), frames.Pong)

    property_()

    # Afterwards, the same connection is still authenticated and served.
    received, _ = live.run(live.exchange(['{"type":"me","id":"final-me"}']))
    replies = [f for f in map(codec.decode_server_frame, received) if isinstance(f, frames.ResultFrame)]
    assert [r.id for r in replies] == ["final-me"]
    assert msgspec.convert(replies[0].result, frames.UserResult).user.username == "fuzzer"
