"""The fan-out's own cost per delivery, for instruction counts (BENCHMARKS.md, "Per delivery").

From ``Broker.publish`` to ``transport.write``, with nothing else:
InProcessBroker.publish -> Catchup.on_event -> Registry.deliver ->
Connection.send_frame -> the loop turn's Flusher -> Connection.flush ->
transport.write. The connections are real (``server.connection.Connection``
on websockets' protocol, open); their transports are made of C callables (a
list's ``append`` for ``write``), so no Python frame of the harness runs per
delivery and an instruction count is Hubbub's code and the interpreter's.

Wall-clock figures on a shared machine say little; instruction counts do::

    for n in 200 1200; do
      valgrind --tool=callgrind --callgrind-out-file=cg-$n.out \\
        python -m hubbub.loadtest.fanoutbench --messages $n --recipients 50
    done
    # (totals of cg-1200 - totals of cg-200) / (1000 * 50) = instructions per delivery

Set ``PYTHONHASHSEED=0`` for repeatable counts. The events are encoded
before the loop: a message's encoding is the publisher's, not the fan-out's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, cast

import uvloop
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from hubbub.protocol import codec, frames
from hubbub.server.broker import MESSAGE_NEW, Event, InProcessBroker
from hubbub.server.catchup import Catchup
from hubbub.server.config import ConnectionConfig
from hubbub.server.connection import Client, Connection
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Recipient, Registry, Sender
from hubbub.storage.base import MessageLog

CONVERSATION = 7


class CTransport:
    """An open transport whose every method is a C callable: writes are kept, never sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.write = self.frames.append
        self.get_write_buffer_size = int  # 0: the kernel took everything
        self.set_write_buffer_limits = dict  # accepts high=...
        self.get_extra_info = cast(dict[str, Any], {}).get  # no socket, no peer
        self.is_closing = bool  # False


class Host:
    """What a connection asks of its server; the handshake parts are never reached."""

    serving = True

    def __init__(self) -> None:
        self.connection_config = ConnectionConfig(
            auth_timeout_seconds=60.0,
            handshake_timeout_seconds=3600.0,
            close_timeout_seconds=5.0,
            outbound_buffer_bytes=1 << 20,
            socket_send_buffer_bytes=0,
            refused_handshake_log_seconds=60.0,
            ping_interval_seconds=30.0,
            ping_timeout_seconds=30.0,
        )
        self.metrics = Metrics()

    def new_protocol(self) -> ServerProtocol:
        return ServerProtocol()

    def respond(self, request: Request) -> Response | None:
        raise NotImplementedError("no handshake here")

    def open_session(self, connection: Connection, request: Request) -> Client:
        raise NotImplementedError("no handshake here")


class Member:
    """A registry recipient: a user's one open connection."""

    def __init__(self, user_id: int, connection: Connection) -> None:
        self.user_id = user_id
        self.conversations: set[int] = set()
        self._connection = connection

    @property
    def outbound(self) -> Sender:
        return self._connection

    def end_session_before(self, generation: int, *, disabled: bool = False) -> bool:
        return False  # no session ends in the bench


def open_connection(host: Host) -> tuple[Connection, CTransport]:
    """A connection as the handshake leaves it: open, its timer gone."""
    connection = Connection(host)
    transport = CTransport()
    connection.connection_made(cast(Any, transport))
    timer = connection._timer  # the handshake's deadline: there is no handshake here
    if timer is not None:
        timer.cancel()
        connection._timer = None
    connection.protocol.state = State.OPEN
    connection.protocol.data_to_send()
    # As after the 101: the connection copies the protocol's state after each of its calls.
    connection._send_protocol_output()
    return connection, transport


def message_events(count: int, size: int) -> list[Event]:
    text = "x" * size
    return [
        Event(
            codec.encode(
                frames.MessageNew(
                    message=frames.Message(
                        id=f"m{seq}",
                        conversation_id=CONVERSATION,
                        seq=seq,
                        sender_id=1,
                        text=text,
                        client_msg_id=f"c{seq}",
                        ts=1_700_000_000_000,
                        rev=1,
                    )
                )
            ),
            MESSAGE_NEW,
            (CONVERSATION,),
            (),
            seq,
        )
        for seq in range(1, count + 1)
    ]


async def run(messages: int, recipients: int, size: int = 100) -> tuple[int, list[CTransport]]:
    """Fan ``messages`` messages out to ``recipients`` connections, one loop turn each;
    the deliveries counted (hubbub_deliveries_total) and the transports."""
    host = Host()
    broker = InProcessBroker(host.metrics)
    registry = Registry(broker, host.metrics)
    catchup = Catchup(cast(MessageLog, None), registry, host.metrics)  # no gap here: the store is never read
    await broker.start(catchup)
    transports: list[CTransport] = []
    for user_id in range(1, recipients + 1):
        connection, transport = open_connection(host)
        member: Recipient = Member(user_id, connection)
        registry.add(member, (CONVERSATION,))
        transports.append(transport)
    events = message_events(messages, size)
    for event in events:
        broker.publish(event)
        await asyncio.sleep(0)  # the turn ends: the flusher writes
    await asyncio.sleep(0)
    delivered = host.metrics.registry.get_sample_value("hubbub_deliveries_total") or 0.0
    return int(delivered), transports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubbub.loadtest.fanoutbench", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--recipients", type=int, default=50)
    parser.add_argument("--size", type=int, default=100, help="message text characters")
    args = parser.parse_args(argv)
    delivered, transports = uvloop.run(run(args.messages, args.recipients, args.size))
    written = sum(len(t.frames) for t in transports)
    print(f"deliveries {delivered}, frames written {written}", file=sys.stderr)
    return 0 if delivered == written == args.messages * args.recipients else 1


if __name__ == "__main__":
    raise SystemExit(main())
