"""A small async Hubbub client over ``websockets.asyncio.client``.

Used by the tests and the load-test tool's control paths; also a reference
for writing a client in another language. One reader task decodes every
server frame: replies resolve the request waiting on their id, events go to
a queue that ``next_event`` reads. An event of a type this client does not
know is skipped (PROTOCOL.md §2: a server may add event types within
``hubbub.v1``, and an older client must survive them). A frame that is not
JSON, nests deeper than the protocol allows, has no type, or is of a known
type but does not match its schema, closes the connection with 1002.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from hubbub.protocol import codec, frames
from hubbub.protocol.errors import CloseCode

READER_CLOSE_REASON_BYTES = 123
"""The longest close reason RFC 6455 allows (a control frame's 125 bytes, less the code)."""
_SERVER_FRAMES: tuple[type[frames.ServerFrame], ...] = (frames.ResultFrame, frames.ErrorFrame, *frames.EVENT_TYPES)
KNOWN_SERVER_FRAME_TYPES = frozenset(frames.tag_of(t) for t in _SERVER_FRAMES)
"""Every server frame ``type`` this client decodes: replies and the events of protocol.frames."""


class _TypeOnly(msgspec.Struct):
    type: str


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def unknown_event_type(raw: str | bytes) -> str | None:
    """The ``type`` of a frame that failed to decode when it is a type this client does not know.

    None for a frame without a string ``type`` and for a known type (whose
    frame then broke its schema). Called only after decode_server_frame
    refused the frame with a ValidationError, so it is JSON within the
    nesting limit.
    """
    try:
        frame_type = _type_decoder.decode(raw).type
    except msgspec.DecodeError:
        return None
    return None if frame_type in KNOWN_SERVER_FRAME_TYPES else frame_type


class ServerError(Exception):
    """An ``error`` reply."""

    def __init__(self, code: str, message: str, request_id: frames.RequestId | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: frames.Hello | None = None
        self.user: frames.User | None = None
        self.token: str | None = None
        self.events: asyncio.Queue[frames.ServerFrame] = asyncio.Queue()
        self.orphan_errors: asyncio.Queue[frames.ErrorFrame] = asyncio.Queue()
        self.skipped_events: Counter[str] = Counter()
        """Events of types this client does not know, by type, skipped unread."""
        self._ids = itertools.count(1)
        self._pending: dict[frames.RequestId, asyncio.Future[frames.ResultFrame | frames.ErrorFrame]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    frame = codec.decode_server_frame(raw)
                except msgspec.ValidationError as exc:
                    skipped = unknown_event_type(raw)
                    if skipped is None:
                        await self._close_undecodable(exc)
                        break
                    self.skipped_events[skipped] += 1  # a newer server's event: not ours to read
                    continue
                except msgspec.DecodeError as exc:
                    await self._close_undecodable(exc)
                    break
                if isinstance(frame, frames.ResultFrame | frames.ErrorFrame):
                    future = self._pending.pop(frame.id, None) if frame.id is not None else None
                    if future is not None and not future.done():
                        future.set_result(frame)
                    elif isinstance(frame, frames.ErrorFrame):
                        self.orphan_errors.put_nowait(frame)
                elif isinstance(frame, frames.Hello):
                    self.hello = frame
                    self.events.put_nowait(frame)
                else:
                    self.events.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))
            self._pending.clear()

    async def _close_undecodable(self, exc: msgspec.DecodeError) -> None:
        # Not JSON, nested deeper than PROTOCOL.md §1 allows, or a known frame broken: the
        # server broke the protocol and its replies can no longer be told apart. Close (the
        # calls waiting fail at once) rather than let the reader die with the socket open.
        reason = f"undecodable server frame: {exc}".encode()[:READER_CLOSE_REASON_BYTES]
        await self.ws.close(CloseCode.PROTOCOL_ERROR, reason.decode(errors="ignore"))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (tests of malformed input)."""
        await self.ws.send(data)

    async def reply_to(
        self, request_id: frames.RequestId, timeout: float = 10
    ) -> frames.ResultFrame | frames.ErrorFrame:
        """Wait for the reply to a request sent with ``send_raw``."""
        future = self._pending.setdefault(request_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(future, timeout)

    async def call(self, op: str, timeout: float = 10, **fields: Any) -> Any:
        """Send request ``op`` and return its typed result; ServerError on an error reply."""
        request_id = f"r{next(self._ids)}"
        future: asyncio.Future[frames.ResultFrame | frames.ErrorFrame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send(msgspec.json.encode({"type": op, "id": request_id, **fields}), text=True)
        reply = await asyncio.wait_for(future, timeout)
        if isinstance(reply, frames.ErrorFrame):
            raise ServerError(reply.error.code, reply.error.message, reply.id)
        return msgspec.convert(reply.result, frames.RESULT_TYPES[op])

    async def next_event(self, event_type: type[Any] | None = None, timeout: float = 10) -> Any:
        """The next event (of ``event_type`` when given, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event_type is None or isinstance(event, event_type):
                    return event

    def drain_events(self) -> list[frames.ServerFrame]:
        """Every event received so far, without waiting."""
        drained = []
        while not self.events.empty():
            drained.append(self.events.get_nowait())
        return drained

    # Conveniences for the common flows.

    async def register(self, username: str, password: str, display_name: str | None = None) -> frames.Session:
        session: frames.Session = await self.call(
            "register", username=username, password=password, display_name=display_name or username
        )
        self.user, self.token = session.user, session.token
        return session

    async def login(self, username: str, password: str) -> frames.Session:
        session: frames.Session = await self.call("login", username=username, password=password)
        self.user, self.token = session.user, session.token
        return session

    async def auth(self, token: str) -> frames.Session:
        session: frames.Session = await self.call("auth", token=token)
        self.user, self.token = session.user, session.token
        return session

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@asynccontextmanager
async def open_client(url: str, **connect_kwargs: Any) -> AsyncIterator[Client]:
    """Connect speaking hubbub.v1, yield a Client, close on exit."""
    connect_kwargs.setdefault("subprotocols", [Subprotocol(frames.PROTOCOL_VERSION)])
    connect_kwargs.setdefault("compression", None)
    async with connect(url, **connect_kwargs) as ws:
        client = Client(ws)
        try:
            yield client
        finally:
            await client.close()
