"""A loopback TCP forwarder that a test can freeze: a network black hole
between the server and one database, without stopping the machine's shared
database for other tests.

While frozen, no byte moves in either direction and new connections are
accepted but not connected onward, as when packets are silently dropped
(TCP retransmits, nobody answers). Thawing delivers what was held, as TCP
would once the network heals.

``stall_midway(min_bytes)`` stalls one connection instead: the next chunk of
at least ``min_bytes`` from the target reaches the client only in part, and
that connection then forwards nothing more (a peer gone silent in the middle
of a reply); every other connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any


class TcpFreezer:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._stall_at: int | None = None

    async def __aenter__(self) -> TcpFreezer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._closing = True
        self._server.close()
        self._flowing.set()  # let held connections see the closing and end
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def stall_midway(self, min_bytes: int) -> None:
        self._stall_at = min_bytes

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            if self._closing:
                raise ConnectionAbortedError
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        self._track(self._pump(reader, up_writer))
        self._track(self._pump(up_reader, writer, from_target=True))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_target: bool = False
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                if self._closing:
                    break
                if from_target and self._stall_at is not None and len(chunk) >= self._stall_at:
                    self._stall_at = None
                    writer.write(chunk[: len(chunk) // 2])
                    await asyncio.Future()  # silent from now on, until the freezer closes
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
            self._writers.discard(writer)
