"""The server's cost per acknowledged ``message.send``, for instruction counts
(BENCHMARKS.md, "The send path's CPU").

``python -m hubbub.loadtest.sendbench --url ws://127.0.0.1:PORT/ --rounds N``
drives a running Hubbub: ``--senders`` connections each create a channel that
one more connection (a subscriber) joins, then every round each sender sends
``--per-round`` messages at once (pipelined) and the round ends when every
one is acknowledged and delivered to its subscriber. Rounds, not a closed
loop, so the server's work per round is the same whatever its speed: run the
server under callgrind with two numbers of rounds and divide the difference
of the totals by the difference in messages::

    for n in 2 12; do
      HUBBUB_...=... valgrind --tool=callgrind --callgrind-out-file=cg-$n.out \\
        python -m hubbub.server serve --port 0 &     # SIGTERM it after the run
      python -m hubbub.loadtest.sendbench --url ... --rounds $n
    done
    # (totals of cg-12 - totals of cg-2) / (10 * senders * per-round) = instructions per send

``--serve`` does that itself: it starts the server (the command after ``--``,
e.g. ``valgrind ... python -m hubbub.server serve --port 0``) with a load
test's environment (loadtest/servers.py), runs the rounds, stops it by PID
and waits for it. Set ``PYTHONHASHSEED=0`` for repeatable counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hubbub.loadtest.safety import check_loopback
from hubbub.loadtest.servers import ServerOptions, ServerProcess, hubbub_env
from hubbub.protocol import frames
from hubbub.protocol.client import Client, open_client

SLOW = 600.0
"""Seconds any one request may take: under callgrind the server is ~50x slower."""
SERVER_STORAGE_TIMEOUT = 300.0
"""The server's storage timeout (its Mongo change lease is set one second longer, as it must be)."""


async def run(
    url: str, senders: int, per_round: int, rounds: int, mark: Callable[[str], None] | None = None
) -> dict[str, float]:
    """``mark("start")`` just before the first round, ``mark("end")`` after the last."""
    check_loopback(url)
    tag = secrets.token_hex(3)
    async with _clients(url, senders * 2) as clients:
        pubs, subs = clients[:senders], clients[senders:]
        for i, c in enumerate(clients):  # one at a time: set-up, not measured, and never a timeout under callgrind
            await c.call("register", timeout=SLOW, username=f"s{tag}{i}", password="sendbench pw", display_name=f"s{i}")
        rooms: list[int] = []
        for i, (pub, sub) in enumerate(zip(pubs, subs, strict=True)):
            created = await pub.call("channel.create", timeout=SLOW, name=f"bench-{tag}-{i}")
            rooms.append(created.conversation.id)
            await sub.call("channel.join", timeout=SLOW, channel_id=created.conversation.id)
        for c in clients:
            c.drain_events()
        if mark is not None:
            mark("start")
        start = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(
                *(_round(pub, sub, room, r, per_round) for pub, sub, room in zip(pubs, subs, rooms, strict=True))
            )
        elapsed = time.perf_counter() - start
        if mark is not None:
            mark("end")
    sends = senders * per_round * rounds
    return {"sends": sends, "seconds": elapsed, "sends_per_second": sends / elapsed if elapsed else 0.0}


async def _round(pub: Client, sub: Client, room: int, r: int, per_round: int) -> None:
    acks = await asyncio.gather(
        *(
            pub.call(
                "message.send",
                timeout=SLOW,
                conversation_id=room,
                client_msg_id=f"{r}.{k}",
                text=f"round {r} message {k} " + "x" * 80,
            )
            for k in range(per_round)
        )
    )
    if any(ack.duplicate for ack in acks):
        raise RuntimeError("a send was acknowledged as a duplicate")
    seen = 0
    while seen < per_round:
        event = await sub.next_event(frames.MessageNew, timeout=SLOW)
        if event.message.conversation_id == room:
            seen += 1
    pub.drain_events()


class _clients:
    """``count`` open clients, closed on exit."""

    def __init__(self, url: str, count: int) -> None:
        self._url = url
        self._count = count
        self._contexts: list[object] = []

    async def __aenter__(self) -> list[Client]:
        clients = []
        for _ in range(self._count):
            context = open_client(self._url, open_timeout=SLOW, ping_interval=None, max_queue=None)
            clients.append(await context.__aenter__())
            self._contexts.append(context)
        return clients

    async def __aexit__(self, *exc: object) -> None:
        for context in reversed(self._contexts):
            await context.__aexit__(None, None, None)  # type: ignore[attr-defined]


def callgrind_marks(pid: int) -> Callable[[str], None]:
    """Marks that zero a server's callgrind counters before the rounds and dump them
    after: the dump counts the rounds alone, none of the set-up, whose batched
    lookups coalesce differently with every run's timing (``callgrind_control``)."""

    def mark(at: str) -> None:
        option = "--zero" if at == "start" else "--dump=rounds"
        subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=SLOW)

    return mark


async def serve_and_run(
    argv: list[str], extra_env: dict[str, str], senders: int, per_round: int, rounds: int, *, callgrind: bool = False
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hubbub-sendbench-") as tmp:
        env = hubbub_env(Path(tmp) / "data", ServerOptions(extra_env=extra_env))
        env["HUBBUB_STORAGE_TIMEOUT_SECONDS"] = str(SERVER_STORAGE_TIMEOUT)
        env["HUBBUB_MONGO_CHANGE_LEASE_SECONDS"] = str(SERVER_STORAGE_TIMEOUT + 1)
        env["HUBBUB_AUTH_TIMEOUT_SECONDS"] = str(SLOW)
        env["HUBBUB_HANDSHAKE_TIMEOUT_SECONDS"] = str(SLOW)
        env["HUBBUB_PING_INTERVAL_SECONDS"] = str(SLOW)
        env["HUBBUB_PING_TIMEOUT_SECONDS"] = str(SLOW)
        server = await ServerProcess.start("hubbub", argv, env, Path(tmp), None)
        try:
            port = await server.port(timeout=SLOW)
            mark = callgrind_marks(server.pid) if callgrind else None
            result = await run(f"ws://127.0.0.1:{port}/", senders, per_round, rounds, mark)
        finally:
            code = await server.stop(grace=SLOW)
        result["server_exit"] = float(code if code is not None else -1)
        return result


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    server_argv: list[str] = []
    if "--" in args_in:
        at = args_in.index("--")
        args_in, server_argv = args_in[:at], args_in[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m hubbub.loadtest.sendbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running Hubbub (loopback)")
    parser.add_argument("--serve", action="store_true", help="start the server given after -- and stop it after")
    parser.add_argument("--senders", type=int, default=100, help="sending connections, one channel each (100)")
    parser.add_argument("--per-round", type=int, default=1, help="messages each sender pipelines per round (1)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (10)")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="HUBBUB_NAME=VALUE", help="a setting of --serve's server"
    )
    parser.add_argument(
        "--callgrind-rounds",
        action="store_true",
        help="--serve's server runs under callgrind: zero its counters before the rounds, dump them after",
    )
    args = parser.parse_args(args_in)
    if args.serve:
        if not server_argv:
            parser.error("--serve needs the server command after --")
        extra = dict(item.split("=", 1) for item in args.server_env)
        result = asyncio.run(
            serve_and_run(
                server_argv, extra, args.senders, args.per_round, args.rounds, callgrind=args.callgrind_rounds
            )
        )
    else:
        if not args.url:
            parser.error("give --url or --serve")
        result = asyncio.run(run(args.url, args.senders, args.per_round, args.rounds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
