"""``hubbub-loadtest --parser-bench``: the generator's CPU per delivery, without a network.

Feeds real ``message.new`` frames (encoded by protocol.codec, as the server
does) through a subscriber connection's parser: once with many frames per
read (a busy socket) and once with one frame per read (fan-out to many
connections, where each read usually holds one frame). The figure is the
floor of ``generator.us_per_delivery`` in a real run, which adds the event
loop's read callbacks and the publishers' work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from array import array

from hubbub.loadtest.conn import Conn, stamp_text
from hubbub.loadtest.targets import HubbubTarget
from hubbub.protocol import codec, frames


def message_frame(conversation: int, seq: int, size: int = 100) -> bytes:
    message = frames.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation,
        seq=seq,
        sender_id=7,
        text=stamp_text(time.monotonic_ns(), size).decode(),
        client_msg_id=f"m{seq}",
        ts=int(time.time() * 1000),
        rev=seq,
    )
    return codec.websocket_text_frame(codec.encode(frames.MessageNew(message=message)))


async def _bench(count: int) -> str:
    target = HubbubTarget(["ws://127.0.0.1:1/"])
    frames_list = [message_frame(42, seq) for seq in range(1, count + 1)]
    lines = []
    for label, chunks in (
        ("64 KiB reads", _chunked(b"".join(frames_list), 65536)),
        ("one frame per read", frames_list),
    ):
        latencies: array[int] = array("q")
        conn = Conn("127.0.0.1", 1, "/", target, latencies, counting=True)
        conn._handshake = None
        started = time.process_time()
        for chunk in chunks:
            conn.data_received(chunk)
        used = time.process_time() - started
        if conn.deliveries != count or conn.missing:
            lost = f"{conn.deliveries} of {count} delivered, gaps in conversations {sorted(conn.missing)}"
            raise RuntimeError(f"{label}: the parser lost frames ({lost})")
        lines.append(f"{label:>20}: {used * 1e6 / count:.2f} us CPU per delivery ({count} frames)")
    return "\n".join(lines)


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run_bench(count: int = 200_000) -> str:
    return asyncio.run(_bench(count))
