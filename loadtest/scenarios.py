"""What a run does: the scenario (flags or a named row of the benchmark table)
and the plan derived from it (which connection goes where, in which room,
as which user)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from hubbub.loadtest.safety import MAX_CONNECTIONS, MAX_DURATION_S, MAX_SOAK_DURATION_S

Role = Literal["sub", "pub", "idle"]


@dataclass(frozen=True)
class Scenario:
    name: str = "custom"
    subscribers: int = 100
    rooms: int = 1
    publishers: int = 1
    rate: float = 10.0
    """Open loop: messages per second over all publishers (message i due at t0 + i/rate)."""
    max_rate: bool = False
    """Closed loop instead: as fast as possible with ``inflight`` messages outstanding end to end."""
    inflight: int = 32
    size: int = 100
    """Message text length in bytes (the 19-digit send timestamp included)."""
    duration: float = 10.0
    connect_storm: bool = False
    connect_concurrency: int = 64
    """Connections opened at a time outside a storm (below the usual listen backlog of 100)."""
    idle: int = 0
    """Extra authenticated connections that only sit there (memory per connection)."""
    history_reads: float = 0.0
    """message.history requests per second during the run (Hubbub only)."""
    conns_per_user: int = 1
    """Hubbub: connections sharing one account (1: every connection its own user)."""
    login: bool = False
    """Hubbub: connect with ``login`` (password, argon2) instead of ``auth`` with a token."""
    instances: int = 1
    """Hubbub servers the tool starts (more than one: sharing one store and Redis, ``--redis-url``)."""
    rss_interval: float = 0.0
    """Soak: seconds between RSS readings of each server process during the run (0: none)."""
    warmup: float = 0.0
    """Soak: seconds at the start of the run left out of the RSS slope."""
    storm: bool = False
    """The reconnect storm instead of a send run (loadtest/storm.py)."""
    gap_messages: int = 10
    """Storm: messages per room seen live before the drop, and as many sent while everyone is away."""
    catch_up: bool = True
    """Storm, Hubbub: each reconnected client catches up (PROTOCOL.md §9); False measures the reconnect alone."""
    description: str = ""

    @property
    def connections(self) -> int:
        return self.subscribers + self.publishers + self.idle

    @property
    def sends(self) -> bool:
        return self.publishers > 0 and self.rooms > 0

    @property
    def soak(self) -> bool:
        """RSS is sampled through the run and its slope reported (and longer runs are allowed)."""
        return self.rss_interval > 0

    @property
    def mode(self) -> str:
        if not self.sends:
            return "idle"
        return f"closed loop, {self.inflight} in flight" if self.max_rate else f"open loop, {self.rate:g} msg/s"

    def check(self) -> Scenario:
        """Validate and clamp to the hard caps; ValueError on nonsense."""
        if min(self.subscribers, self.rooms, self.publishers, self.idle) < 0:
            raise ValueError("counts must not be negative")
        if self.subscribers and not self.rooms:
            raise ValueError("subscribers need at least one room")
        if self.connections == 0:
            raise ValueError("nothing to do: no subscribers, publishers or idle connections")
        if self.connections > MAX_CONNECTIONS:
            raise ValueError(f"{self.connections} connections: the cap is {MAX_CONNECTIONS}")
        if self.sends and not self.max_rate and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.inflight < 1 or self.conns_per_user < 1 or self.connect_concurrency < 1:
            raise ValueError("--inflight, --conns-per-user and --connect-concurrency must be at least 1")
        if self.size < 20 or self.size > 3900:
            raise ValueError("--size must be between 20 and 3900 bytes")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")
        if self.gap_messages < 0:
            raise ValueError("--gap-messages must not be negative")
        if self.instances < 1:
            raise ValueError("--instances must be at least 1")
        if self.rss_interval < 0 or self.warmup < 0:
            raise ValueError("--rss-interval and --warmup must not be negative")
        if self.soak and self.warmup >= self.duration:
            raise ValueError("--warmup must be shorter than --duration (the slope needs a steady part)")
        cap = MAX_SOAK_DURATION_S if self.soak else MAX_DURATION_S
        return replace(self, duration=min(self.duration, cap))


SCENARIOS: dict[str, Scenario] = {
    "a": Scenario(
        name="a",
        subscribers=1000,
        rooms=1,
        publishers=1,
        rate=50.0,
        duration=30.0,
        description="1000 subscribers in 1 room, 50 msg/s",
    ),
    "b": Scenario(
        name="b",
        subscribers=1000,
        rooms=1,
        publishers=1,
        max_rate=True,
        inflight=32,
        duration=30.0,
        description="1000 subscribers in 1 room, max rate",
    ),
    "c": Scenario(
        name="c",
        subscribers=5000,
        rooms=100,
        publishers=5,
        max_rate=True,
        inflight=64,
        duration=30.0,
        description="5000 subscribers in 100 rooms of 50, 5 publishers, max rate",
    ),
    "d": Scenario(
        name="d",
        subscribers=0,
        rooms=0,
        publishers=0,
        idle=10000,
        duration=10.0,
        conns_per_user=10,
        description="10000 idle authenticated connections: KB per connection",
    ),
    "soak": Scenario(
        name="soak",
        subscribers=2000,
        rooms=125,  # odd: subscriber j goes to room j % K and instance j % 2, so every room spans both
        publishers=10,
        rate=200.0,
        duration=1800.0,
        instances=2,
        rss_interval=5.0,
        warmup=60.0,
        description="2000 subscribers in 125 rooms of 16 over 2 instances + Redis, 200 msg/s for 30 min: "
        "RSS slope per instance",
    ),
    "storm": Scenario(
        name="storm",
        subscribers=10000,
        rooms=200,
        publishers=5,
        storm=True,
        gap_messages=10,
        description="10000 clients in 200 rooms of 50 dropped at once and reconnecting at once: "
        "time until all are authenticated, and until each has caught up every conversation",
    ),
}

BENCHMARK_TABLE = ("a", "b", "c", "d")
"""The rows ``--scenario all`` runs (the soak is not one: it is long, and measures something else)."""


# ---------------------------------------------------------------------------
# The plan.


@dataclass
class Room:
    index: int
    name: str
    channel_id: int = 0
    """Hubbub's id of the room's channel (the peers name rooms by ``name``)."""
    subscribers: int = 0
    publishers: list[int] = field(default_factory=list)
    streams: dict[int, int] = field(default_factory=dict)
    """Publisher index -> the conversation id its messages are numbered in (Hubbub: the
    channel id, one sequence for all; peers: one sequence per publisher and room)."""


@dataclass
class User:
    index: int
    name: str
    rooms: list[int]
    token: str = ""


@dataclass
class ConnSpec:
    role: Role
    index: int
    url: str
    rooms: list[int]
    user: int
    """Index into Plan.users (Hubbub accounts; unused by the peers)."""


@dataclass
class Plan:
    run_id: str
    rooms: list[Room]
    users: list[User]
    subscribers: list[ConnSpec]
    publishers: list[ConnSpec]
    idle: list[ConnSpec]

    def stream_ids(self) -> list[int]:
        return sorted({s for room in self.rooms for s in room.streams.values()})


def publisher_rooms(p: int, publishers: int, rooms: int) -> list[int]:
    """Rooms publisher ``p`` sends to: every room r with r % P == p, or room p % K when P > K."""
    if publishers <= rooms:
        return [r for r in range(rooms) if r % publishers == p]
    return [p % rooms]


def build_plan(scenario: Scenario, urls: list[str], run_id: str) -> Plan:
    """Subscriber j goes to room j % K and URL j % len(urls); accounts are
    grouped ``conns_per_user`` connections at a time within a room."""
    s = scenario
    rooms = [Room(index=k, name=f"lt{run_id}-r{k}") for k in range(s.rooms)]
    users: list[User] = []
    subscribers: list[ConnSpec] = []
    by_room: list[list[int]] = [[] for _ in range(s.rooms)]
    for j in range(s.subscribers):
        by_room[j % s.rooms].append(j)
    specs: dict[int, ConnSpec] = {}
    for k, members in enumerate(by_room):
        rooms[k].subscribers = len(members)
        for start in range(0, len(members), s.conns_per_user):
            user = User(index=len(users), name=f"lt{run_id}u{len(users)}", rooms=[k])
            users.append(user)
            for j in members[start : start + s.conns_per_user]:
                specs[j] = ConnSpec("sub", j, urls[j % len(urls)], [k], user.index)
    subscribers = [specs[j] for j in range(s.subscribers)]
    publishers = []
    for p in range(s.publishers if s.rooms else 0):
        mine = publisher_rooms(p, s.publishers, s.rooms)
        user = User(index=len(users), name=f"lt{run_id}p{p}", rooms=mine)
        users.append(user)
        publishers.append(ConnSpec("pub", p, urls[p % len(urls)], mine, user.index))
        for k in mine:
            rooms[k].publishers.append(p)
    idle = []
    for start in range(0, s.idle, s.conns_per_user):
        user = User(index=len(users), name=f"lt{run_id}i{len(users)}", rooms=[])
        users.append(user)
        for i in range(start, min(start + s.conns_per_user, s.idle)):
            idle.append(ConnSpec("idle", i, urls[i % len(urls)], [], user.index))
    return Plan(run_id, rooms, users, subscribers, publishers, idle)
