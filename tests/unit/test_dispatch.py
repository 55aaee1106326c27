"""server.dispatch.Dispatcher without sockets: raw frames in, reply frames out
on a fake transport, fake handlers that finish when the test says so.

Admission (binary, oversized, rate-limited, undecodable, before
authentication), pipelined ``message.send`` with replies in request order,
other requests waiting for the sends before them, the in-flight bound, and
the backpressure that pauses and resumes reading.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.config import Settings
from hubbub.server.dispatch import READ_FRAME_COST, Dispatcher
from hubbub.server.errors import ApiError
from hubbub.server.handlers import Handler
from hubbub.server.metrics import Metrics
from hubbub.storage.errors import StoreUnavailable


class FakeTransport:
    """The Transport a dispatcher writes to: frames kept, reading paused or not."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.paused = False
        self.pauses = 0

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        raise AssertionError("a dispatcher never closes its connection")

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    @property
    def close_code(self) -> int | None:
        return None

    def remote_address(self) -> str | None:
        return "192.0.2.1"

    def reading(self) -> bool:
        return not self.paused

    def replies(self) -> list[dict[str, Any]]:
        """Every frame sent so far, decoded (server frames: unmasked text)."""
        decoded = []
        for frame in self.frames:
            assert frame[0] == 0x81  # FIN, text
            length, offset = frame[1], 2
            if length == 126:
                (length,), offset = struct.unpack("!H", frame[2:4]), 4
            elif length == 127:
                (length,), offset = struct.unpack("!Q", frame[2:10]), 10
            assert len(frame) == offset + length
            decoded.append(json.loads(frame[offset:]))
        return decoded

    def reply_ids(self) -> list[Any]:
        return [reply["id"] for reply in self.replies()]


class Gate:
    """Handlers that wait until the test opens their request's gate, logging when they start."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self._gates: dict[Any, asyncio.Event] = {}

    def gate(self, request_id: Any) -> asyncio.Event:
        return self._gates.setdefault(request_id, asyncio.Event())

    def open(self, *request_ids: Any) -> None:
        for request_id in request_ids:
            self.gate(request_id).set()

    def handler(self, result: Callable[[Any], Any] = lambda request: frames.Empty()) -> Handler:
        async def handle(services: Any, session: Any, request: Any) -> Any:
            self.started.append(request.id)
            await self.gate(request.id).wait()
            return result(request)

        return handle


def immediate(result: Callable[[Any], Awaitable[Any]]) -> Handler:
    async def handle(services: Any, session: Any, request: Any) -> Any:
        return await result(request)

    return handle


async def empty(request: Any) -> frames.Empty:
    return frames.Empty()


def make_dispatcher(
    handlers: dict[str, Handler],
    *,
    authenticated: bool = True,
    ordered_appends: bool = True,
    **settings: Any,
) -> tuple[Dispatcher, FakeTransport, SimpleNamespace]:
    services = SimpleNamespace(
        limits=Settings(**settings).limits, metrics=Metrics(), messages=SimpleNamespace(ordered_appends=ordered_appends)
    )
    session = SimpleNamespace(user=object() if authenticated else None, user_id=7 if authenticated else 0, conn_id=1)
    transport = FakeTransport()
    dispatcher = Dispatcher(cast(Any, services), cast(Any, session), transport, handlers)
    return dispatcher, transport, services


def send(request_id: int, text: str = "hi") -> str:
    return json.dumps(
        {
            "type": "message.send",
            "id": request_id,
            "conversation_id": 1,
            "text": text,
            "client_msg_id": f"c{request_id}",
        }
    )


def ping(request_id: Any) -> str:
    return json.dumps({"type": "ping", "id": request_id})


async def settle() -> None:
    """Let every task that can run, run (a few loop turns; nothing here waits on time)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_pipelined_sends_reply_in_request_order_whatever_order_they_finish_in() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler()})
    for request_id in (1, 2, 3, 4):
        dispatcher.received(send(request_id))
    await settle()
    assert gate.started == [1, 2, 3, 4]  # all four in flight together
    gate.open(4, 3)
    await settle()
    assert transport.frames == []  # done, but behind 1 and 2
    gate.open(2)
    await settle()
    assert transport.frames == []
    gate.open(1)
    await settle()
    assert transport.reply_ids() == [1, 2, 3, 4]
    assert all(reply["type"] == "result" for reply in transport.replies())


async def test_another_request_waits_for_the_sends_before_it() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler(), "ping": gate.handler()})
    dispatcher.received(send(1))
    dispatcher.received(send(2))
    dispatcher.received(ping("p"))
    dispatcher.received(send(3))
    await settle()
    assert gate.started == [1, 2]  # the ping waits: it must see their effects
    gate.open("p", 3)
    await settle()
    assert gate.started == [1, 2]
    gate.open(2)
    await settle()
    assert transport.reply_ids() == []
    gate.open(1)
    await settle()
    assert gate.started == [1, 2, "p", 3]
    assert transport.reply_ids() == [1, 2, "p", 3]


async def test_at_most_max_inflight_sends_run_at_once() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler()}, max_inflight_sends=2)
    for request_id in (1, 2, 3, 4):
        dispatcher.received(send(request_id))
    await settle()
    assert gate.started == [1, 2]
    gate.open(2)
    await settle()
    assert gate.started == [1, 2, 3]  # a place freed up
    assert transport.reply_ids() == []
    gate.open(1, 3, 4)
    await settle()
    assert transport.reply_ids() == [1, 2, 3, 4]


async def test_without_ordered_appends_sends_run_one_at_a_time() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler()}, ordered_appends=False)
    for request_id in (1, 2, 3):
        dispatcher.received(send(request_id))
    await settle()
    assert gate.started == [1]
    gate.open(1)
    await settle()
    assert gate.started == [1, 2]
    assert transport.reply_ids() == [1]
    gate.open(2, 3)
    await settle()
    assert transport.reply_ids() == [1, 2, 3]


@pytest.mark.parametrize(
    ("raw", "request_id", "code", "metric"),
    [
        (b'{"type":"ping","id":1}', None, ErrorCode.BAD_REQUEST, "binary"),
        ('{"type":"ping","id":"big","pad":"' + "x" * 5000 + '"}', "big", ErrorCode.TOO_LARGE, "oversized"),
        ('{"type":"ping","id":"bad",', None, ErrorCode.BAD_REQUEST, "invalid"),
        ('{"type":"no.such.op","id":"op"}', "op", ErrorCode.BAD_REQUEST, "invalid"),
    ],
    ids=["binary", "oversized", "not-json", "unknown-op"],
)
async def test_frames_refused_before_dispatch_get_one_error_and_reach_no_handler(
    raw: str | bytes, request_id: Any, code: ErrorCode, metric: str
) -> None:
    gate = Gate()
    dispatcher, transport, services = make_dispatcher({"ping": gate.handler()}, max_frame_bytes=4096)
    dispatcher.received(raw)
    await settle()
    assert gate.started == []
    (reply,) = transport.replies()
    assert reply["type"] == "error" and reply["id"] == request_id and reply["error"]["code"] == code.value
    assert services.metrics.registry.get_sample_value("hubbub_frames_in_total", {"type": metric}) == 1
    assert services.metrics.registry.get_sample_value("hubbub_errors_total", {"code": code.value}) == 1


async def test_before_authentication_only_the_pre_auth_requests_are_served() -> None:
    dispatcher, transport, _ = make_dispatcher({"ping": immediate(empty), "me": immediate(empty)}, authenticated=False)
    dispatcher.received('{"type":"me","id":"who"}')
    dispatcher.received(ping("alive"))
    await settle()
    me, pong = transport.replies()
    assert me["id"] == "who" and me["error"]["code"] == ErrorCode.UNAUTHORIZED.value
    assert pong == {"type": "result", "id": "alive", "result": {}}


async def test_past_the_burst_requests_are_rate_limited() -> None:
    dispatcher, transport, _ = make_dispatcher({"ping": immediate(empty)}, rate_burst=3, rate_per_second=0.001)
    for index in range(5):
        dispatcher.received(ping(index))
    await settle()
    assert [r["type"] for r in transport.replies()] == ["result"] * 3 + ["error"] * 2
    assert {r["error"]["code"] for r in transport.replies()[3:]} == {ErrorCode.RATE_LIMITED.value}
    assert transport.reply_ids() == [0, 1, 2, 3, 4]
    dispatcher.bucket.grant(1, 60.0)  # what the session grants on authentication
    dispatcher.received(ping("granted"))
    await settle()
    assert transport.replies()[-1]["type"] == "result"


async def test_a_refusal_waits_behind_the_replies_of_sends_in_flight() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler()})
    dispatcher.received(send(1))
    dispatcher.received(b"binary")
    dispatcher.received(send(2))
    await settle()
    assert transport.frames == []
    gate.open(2)
    await settle()
    assert transport.frames == []
    gate.open(1)
    await settle()
    assert [(r["type"], r["id"]) for r in transport.replies()] == [("result", 1), ("error", None), ("result", 2)]


async def test_handler_failures_are_error_replies() -> None:
    async def forbidden(request: Any) -> Any:
        raise ApiError(ErrorCode.FORBIDDEN, "no")

    async def store_down(request: Any) -> Any:
        raise StoreUnavailable("sqlite", "disk on fire")

    async def bug(request: Any) -> Any:
        raise ZeroDivisionError

    dispatcher, transport, _ = make_dispatcher(
        {"ping": immediate(forbidden), "me": immediate(store_down), "channel.list": immediate(bug)}
    )
    dispatcher.received(ping("a"))
    dispatcher.received('{"type":"me","id":"b"}')
    dispatcher.received('{"type":"channel.list","id":"c"}')
    dispatcher.received(ping("d"))  # and the connection goes on
    await settle()
    codes = [(r["id"], r["error"]["code"]) for r in transport.replies()]
    assert codes == [
        ("a", ErrorCode.FORBIDDEN.value),
        ("b", ErrorCode.UNAVAILABLE.value),
        ("c", ErrorCode.INTERNAL.value),
        ("d", ErrorCode.FORBIDDEN.value),
    ]


async def test_a_backlog_past_read_ahead_pauses_reading_until_half_is_served() -> None:
    gate = Gate()
    read_ahead = 4 * READ_FRAME_COST
    dispatcher, transport, _ = make_dispatcher({"ping": gate.handler()}, read_ahead_bytes=read_ahead)
    for index in range(6):  # small frames: each counts READ_FRAME_COST
        dispatcher.received(ping(index))
        assert transport.reading() == (index < 4)  # paused past 4 frames' worth of backlog
    assert transport.pauses == 1
    await settle()
    gate.open(0)
    await settle()
    assert not transport.reading()  # 4 left: more than half of read-ahead
    gate.open(1, 2)
    await settle()
    assert transport.reading()  # half of read-ahead left
    gate.open(3, 4, 5)
    await settle()
    assert transport.reply_ids() == [0, 1, 2, 3, 4, 5]
    assert transport.pauses == 1


async def test_finish_serves_what_was_received_and_stores_the_sends_in_flight() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler(), "ping": gate.handler()})
    dispatcher.received(send(1))
    dispatcher.received(send(2))
    dispatcher.received(ping("last"))
    finished = asyncio.ensure_future(dispatcher.finish())
    await settle()
    assert not finished.done()
    gate.open(1, 2, "last")
    await asyncio.wait_for(finished, 5)
    assert gate.started == [1, 2, "last"]
    assert transport.reply_ids() == [1, 2, "last"]


async def test_an_idle_dispatcher_holds_no_task_and_no_pipeline() -> None:
    gate = Gate()
    dispatcher, transport, _ = make_dispatcher({"message.send": gate.handler(), "ping": gate.handler()})
    dispatcher.received(send(1))
    dispatcher.received(ping("p"))
    gate.open(1, "p")
    await settle()
    assert transport.reply_ids() == [1, "p"]
    assert dispatcher._worker is None and dispatcher._queue is None and dispatcher._pipeline is None
