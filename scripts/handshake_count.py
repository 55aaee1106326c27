"""Instructions per WebSocket handshake, for callgrind: N connections through
the real server's accept path (server/connection.py, server/http.py's
``process_request``, websockets' ``ServerProtocol``, the session's start and
hello, its teardown), in-process on a transport that records writes instead
of a socket, so nothing else (no client, no batching, no timing) is counted.
BENCHMARKS.md ("Reconnect storms, fourth pass") records its runs:

    valgrind --tool=callgrind .venv/bin/python scripts/handshake_count.py 500 2>/dev/null
    valgrind --tool=callgrind .venv/bin/python scripts/handshake_count.py 1000 2>/dev/null

(total for 1000 - total for 500) / 500 is one connection's handshake, hello
and teardown. It runs against an older commit's export put first on
PYTHONPATH (``hubbub/`` with its ``protocol``, ``server``, ``storage``), whose
``process_request`` was a coroutine.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from typing import Any

import msgspec
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from hubbub.server import logs
from hubbub.server.app import App
from hubbub.server.config import Settings
from hubbub.server.connection import Connection


class RecordingTransport:
    """The transport calls a connection makes, with the writes kept (asyncio's interface)."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def main(count: int) -> None:
    logs.configure("info")  # the documented lines (connect, disconnect), as a server writes them: to stderr
    settings = msgspec.convert(
        {"data_dir": tempfile.mkdtemp(), "host": "127.0.0.1", "port": 0, "jwt_secret": "x" * 32}, Settings
    )
    app = App(settings)
    await app.start()
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    client.send_request(client.connect())
    request = b"".join(client.data_to_send())  # one request, sent by every connection
    try:
        for _ in range(count):
            connection = Connection(app)
            transport = RecordingTransport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            connection.data_received(request)
            for _ in range(3):  # the answer (an older commit's from a task) and the hello's flush
                await asyncio.sleep(0)
            if transport.written == 0:
                raise RuntimeError("no response written")
            connection.connection_lost(None)
            for _ in range(3):  # the session's teardown
                await asyncio.sleep(0)
    finally:
        await app.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
