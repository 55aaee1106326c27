"""A private Redis Cluster for tests: six redis-server processes in cluster
mode on free loopback ports (three masters, one replica each), created with
``redis-cli --cluster create``; never the machine's shared Redis.

Each node is this module's own process, started with no persistence but its
``nodes.conf`` (so a killed node restarts as the same node and rejoins), and
always stopped by its PID. The ``redis_cluster`` fixture is one cluster for
the session; tests that use it mark themselves ``xdist_group("redis_cluster")``
so they share it on one worker, and each waits for ``cluster_state:ok``
first (a failover test may leave a node rejoining). ``cluster-node-timeout`` is short so a killed
master is replaced in about two seconds, as the failover tests need.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from tests.backends import free_port
from tests.redis_server import REDIS_SERVER

REDIS_CLI = os.environ.get("HUBBUB_TEST_REDIS_CLI", "redis-cli")
CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")
NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: a master silent this long is failed over by its replica."""


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    """The cluster bus (Redis's default, port + 10000, may not exist or be free)."""
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> aredis.Redis:
        return aredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def spawn(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(self.bus_port),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL, by PID: the crash a failover test needs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def info(self, section: str) -> dict[str, str]:
        client = self.client()
        try:
            raw = await client.execute_command("CLUSTER", "INFO") if section == "cluster" else None  # type: ignore[no-untyped-call]
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                return dict(line.split(":", 1) for line in text.split() if ":" in line)
            info = await client.info(section)
            return {k: str(v) for k, v in info.items()}
        finally:
            await client.aclose()

    async def role(self) -> str:
        client = self.client()
        try:
            reply = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            role = reply[0]
            return role.decode() if isinstance(role, bytes) else str(role)
        finally:
            await client.aclose()


@dataclass
class RedisClusterProcesses:
    directory: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A startup node: the client discovers the others from it."""
        return f"redis://{self.nodes[0].address}/0"

    @property
    def urls(self) -> str:
        """Every node, for a client that must find the cluster with any one of them down."""
        return ",".join(n.address for n in self.nodes)

    def start(self, deadline_seconds: float = 30.0) -> None:
        """Start six nodes, create the cluster, wait for cluster_state:ok (synchronous: a
        module-scoped fixture, outside any test's event loop)."""
        self.nodes = [ClusterNode(free_port(), free_port(), self.directory / f"node-{i}") for i in range(6)]
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            _wait_answers(node, deadline_seconds)
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(n.address for n in self.nodes), *CREATE_OPTIONS],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=deadline_seconds,
            check=False,
        )
        assert created.returncode == 0, created.stdout.decode() + created.stderr.decode()
        end = time.monotonic() + deadline_seconds
        while not all(_cluster_ok(n) for n in self.nodes):
            assert time.monotonic() < end, "the Redis Cluster never reached cluster_state:ok"
            time.sleep(0.05)

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    async def wait_ok(self, deadline_seconds: float = 30.0) -> float:
        """Until every running node says cluster_state:ok, with three masters and every
        replica's link to its master up; the seconds it took."""
        start = time.monotonic()
        while True:
            try:
                states = await asyncio.gather(*(n.info("cluster") for n in self.running()))
                replication = await asyncio.gather(*(n.info("replication") for n in self.running()))
                masters = [r for r in replication if r.get("role") == "master"]
                replicas = [r for r in replication if r.get("role") == "slave"]
                if (
                    all(s.get("cluster_state") == "ok" for s in states)
                    and len(masters) == 3
                    # A replica still syncing could not take over: the next failover would stall.
                    and all(r.get("master_link_status") == "up" for r in replicas)
                ):
                    return time.monotonic() - start
            except (RedisError, OSError):
                pass
            assert time.monotonic() - start < deadline_seconds, "the Redis Cluster never reached cluster_state:ok"
            await asyncio.sleep(0.05)

    async def masters(self) -> list[ClusterNode]:
        running = self.running()
        roles = await asyncio.gather(*(n.role() for n in running))
        return [n for n, role in zip(running, roles, strict=True) if role == "master"]

    async def replica_of(self, master: ClusterNode) -> ClusterNode:
        """The running replica that replicates ``master``."""
        for node in self.running():
            if node is master:
                continue
            info = await node.info("replication")
            if info.get("role") == "slave" and info.get("master_port") == str(master.port):
                return node
        raise AssertionError(f"no replica of {master.address}")

    async def failover(self, replica: ClusterNode) -> None:
        """CLUSTER FAILOVER on ``replica``: a graceful, coordinated switch of roles."""
        client = replica.client()
        try:
            await client.execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _wait_answers(node: ClusterNode, deadline_seconds: float) -> None:
    end = time.monotonic() + deadline_seconds
    with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, socket_connect_timeout=1) as client:
        while True:
            assert node.process is not None
            if node.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {node.process.returncode}, see {node.directory}")
            try:
                if client.ping():
                    return
            except (RedisError, OSError):
                if time.monotonic() > end:
                    raise
            time.sleep(0.05)


def _cluster_ok(node: ClusterNode) -> bool:
    with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, socket_connect_timeout=1) as client:
        info = client.cluster("INFO")
    state = info.get("cluster_state") if isinstance(info, dict) else None
    return bool(state == "ok")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()
