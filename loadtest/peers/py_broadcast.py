"""Reference fan-out server in plain Python: the ``websockets`` library's
asyncio API with ``broadcast``, as its docs show it (no uvloop, no tuning).

Protocol (loadtest/peers/README.md), JSON text frames:

* ``{"type":"join","id":N,"room":"R"}`` -> ``{"type":"result","id":N}``
* ``{"type":"send","id":N,"room":"R","conversation_id":C,"seq":S,"text":"T"}``
  -> ``broadcast`` to every member of R of
  ``{"type":"message.new","message":{"conversation_id":C,"seq":S,"text":"T"}}``,
  then ``{"type":"result","id":N}`` to the sender.

Prints ``{"event": "listening", "port": P}`` on stderr once listening.
Run: ``python loadtest/peers/py_broadcast.py --port 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    try:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "join":
                rooms.setdefault(msg["room"], set()).add(ws)
                joined.add(msg["room"])
                await ws.send(_compact({"type": "result", "id": msg["id"]}))
            elif msg["type"] == "send":
                event = {
                    "type": "message.new",
                    "message": {"conversation_id": msg["conversation_id"], "seq": msg["seq"], "text": msg["text"]},
                }
                broadcast(rooms.get(msg["room"], set()), _compact(event))
                await ws.send(_compact({"type": "result", "id": msg["id"]}))
    finally:
        for room in joined:
            members = rooms.get(room)
            if members is not None:
                members.discard(ws)
                if not members:
                    del rooms[room]


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    async with serve(handler, host, port, compression=None) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"event": "listening", "port": bound}), file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
