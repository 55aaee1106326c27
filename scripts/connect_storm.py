"""The connect + ``auth`` cost of one reconnecting client, without the catch-up,
counted on a real server process (callgrind, cProfile), driven from another.

    # 1. accounts, rooms and tokens through a server started normally (not measured):
    .venv/bin/python scripts/connect_storm.py setup DIR 400
    # 2. the measured server on the same data dir, e.g. under callgrind:
    HUBBUB_DATA_DIR=DIR/data HUBBUB_JWT_SECRET=$(cat DIR/secret) ... \
        valgrind --tool=callgrind .venv/bin/python -m hubbub.server serve --port PORT
    # 3. N clients at once: handshake, hello, ``auth``, its reply; then all close:
    .venv/bin/python scripts/connect_storm.py storm DIR PORT 200

``run`` does 2 and 3 together (``run DIR N [callgrind|cprofile|none] [ROUNDS]``)
and prints the server's instruction total (callgrind) or writes its profile.
(total for 2N - total for N) / N is one client's connect, auth and disconnect.
With ROUNDS (default 1) the N clients storm that many times, one round after
the other, on the same server: the first is a deploy's storm (a new process
that has seen none of the tokens), the later ones a network blip's (the
server issued or verified each token before: server/auth.py remembers them).
BENCHMARKS.md ("Reconnect storms, fourth pass") records its runs. Accounts are
in rooms of 50 (``channel.create`` / ``channel.join``), as the storm scenario's.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import websockets

ROOM = 50
PYTHON = sys.executable


def server_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env.update(
        HUBBUB_HOST="127.0.0.1",
        HUBBUB_DATA_DIR=str(directory / "data"),
        HUBBUB_JWT_SECRET=(directory / "secret").read_text().strip(),
        HUBBUB_ARGON2_TIME_COST="1",
        HUBBUB_ARGON2_MEMORY_KIB="8",
        HUBBUB_ARGON2_PARALLELISM="1",
        HUBBUB_RATE_PER_SECOND="1000000",
        HUBBUB_RATE_BURST="1000000",
        HUBBUB_MAX_CONNECTIONS="20000",
        HUBBUB_AUTH_TIMEOUT_SECONDS="600",
        HUBBUB_HANDSHAKE_TIMEOUT_SECONDS="600",
        HUBBUB_SHUTDOWN_GRACE_SECONDS="1",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: Path, port: int, wrapper: list[str]) -> subprocess.Popen[bytes]:
    log = (directory / f"server-{port}.log").open("wb")
    return subprocess.Popen(
        [*wrapper, "-m", "hubbub.server", "serve", "--port", str(port)],
        env=server_env(directory),
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=directory,
    )


async def wait_listening(port: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        writer.close()
        return
    raise TimeoutError(f"no server on {port}")


async def call(ws: websockets.ClientConnection, request: dict[str, object]) -> dict[str, object]:
    await ws.send(json.dumps(request))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == request["id"]:
            if reply.get("type") == "error":
                raise RuntimeError(f"{request['type']}: {reply}")
            return reply["result"]  # type: ignore[no-any-return]


async def setup_accounts(port: int, count: int) -> list[str]:
    url = f"ws://127.0.0.1:{port}/"
    tokens: list[str] = []
    rooms: dict[int, int] = {}
    for i in range(count):
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()  # hello
            session = await call(
                ws,
                {
                    "type": "register",
                    "id": 1,
                    "username": f"user{i:05d}",
                    "password": "password-1",
                    "display_name": "U",
                },
            )
            k = i // ROOM
            if k not in rooms:
                made = await call(ws, {"type": "channel.create", "id": 2, "name": f"room-{k}"})
                rooms[k] = int(made["conversation"]["id"])  # type: ignore[index]
            else:
                await call(ws, {"type": "channel.join", "id": 2, "channel_id": rooms[k]})
            tokens.append(str(session["token"]))
    return tokens


async def storm(port: int, tokens: list[str]) -> dict[str, float]:
    """Every client at once: connect, hello, auth, its reply; seconds until each was ready."""
    url = f"ws://127.0.0.1:{port}/"
    t0 = time.monotonic()
    ready: list[float] = []
    sockets: list[websockets.ClientConnection] = []

    async def one(token: str) -> None:
        ws = await websockets.connect(url, max_size=None, open_timeout=600, ping_interval=None)
        sockets.append(ws)
        await ws.recv()  # hello
        await call(ws, {"type": "auth", "id": 1, "token": token})
        ready.append(time.monotonic() - t0)

    await asyncio.gather(*(one(t) for t in tokens))
    await asyncio.gather(*(ws.close() for ws in sockets))
    ready.sort()
    return {"clients": len(ready), "all_ready_s": ready[-1], "p50_s": ready[len(ready) // 2]}


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(600)


def callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


async def setup(directory: Path, count: int) -> list[str]:
    port = free_port()
    server = start(directory, port, [PYTHON])
    try:
        await wait_listening(port)
        return await setup_accounts(port, count)
    finally:
        stop(server)


async def measured(directory: Path, wrapper: list[str], tokens: list[str], rounds: int = 1) -> dict[str, float]:
    port = free_port()
    server = start(directory, port, wrapper)
    try:
        await wait_listening(port)
        figures = await storm(port, tokens)
        for _ in range(rounds - 1):
            figures = await storm(port, tokens)  # the last round's figures: a blip's
        return figures
    finally:
        stop(server)


def main(argv: list[str]) -> None:
    command, directory = argv[0], Path(argv[1]).resolve()
    if command == "setup":
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "secret").write_text(secrets.token_hex(32) + "\n")
        (directory / "tokens.json").write_text(json.dumps(asyncio.run(setup(directory, int(argv[2])))))
        return
    tokens = json.loads((directory / "tokens.json").read_text())
    if command == "storm":
        print(json.dumps(asyncio.run(storm(int(argv[2]), tokens[: int(argv[3])]))))
        return
    if command == "run":
        count, tool = int(argv[2]), argv[3] if len(argv) > 3 else "none"
        rounds = int(argv[4]) if len(argv) > 4 else 1
        out = directory / f"{tool}-{count}x{rounds}.out"
        wrapper = {
            "callgrind": ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PYTHON],
            "cprofile": [PYTHON, "-m", "cProfile", "-o", str(out)],
            "none": [PYTHON],
        }[tool]
        figures = asyncio.run(measured(directory, wrapper, tokens[:count], rounds))
        if tool == "callgrind":
            figures["instructions"] = callgrind_total(out)
        print(json.dumps(figures))
        return
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
