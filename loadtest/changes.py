"""``hubbub-loadtest --changes``: what message changes cost on one store.

One channel of N members (one connection and one user each), M seeded
messages, then five measured phases of ``duration`` seconds each, every
reply decoded and checked (an error frame or a reply that does not say
what was asked is counted, per code, never taken as an ack):

1. ``message.send`` acks/s, W requests in flight per connection: the
   reference (sends are group-committed).
2. ``message.edit`` acks/s: each member edits its own seeded messages, one
   edit in flight per message.
3. ``reaction.add`` / ``reaction.remove`` acks/s: every member toggles
   reactions on the same shared message(s), one emoji per in-flight slot,
   so each request changes the message (never a no-op) and every member
   contends for the same rows.
4. Page latency, one request at a time from one member, alternating:
   ``message.history`` of a page of plain messages, of a page of messages
   each carrying 5 emojis x 3 users and a reply count, and
   ``thread.history`` of one thread of that many replies.
5. ``message.changes`` paging from rev 0 (one client re-syncing), in
   messages/s, passes checked for completeness.

After phase 3 the server's reaction counts (read back with
``message.history``) must equal, per message and emoji, the adds minus the
removes it acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import subprocess
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from time import monotonic_ns
from typing import Any, Literal

import msgspec

from hubbub.loadtest import procstat
from hubbub.loadtest.conn import Conn
from hubbub.loadtest.report import Progress, summarize_ns
from hubbub.loadtest.safety import MAX_CONNECTIONS, MAX_DURATION_S, SETUP_TIMEOUT_S, check_loopback
from hubbub.loadtest.scenarios import Scenario, build_plan
from hubbub.loadtest.servers import ServerOptions, started_servers
from hubbub.loadtest.targets import CALL_TIMEOUT_S, HubbubTarget, SetupError, error_code

Store = Literal["sqlite", "postgres", "mongo"]
STORES: tuple[Store, ...] = ("sqlite", "postgres", "mongo")
EMOJIS = (
    "👍",
    "🎉",
    "😂",
    "🔥",
    "👀",
    "🚀",
    "💯",
    "🙏",
    "😄",
    "🤔",
    "👏",
    "😮",
    "🙌",
    "💡",
    "✨",
    "🍕",
    "🐛",
    "🧪",
    "📌",
    "🥳",
)
"""Canonical Unicode emoji (protocol.emoji.normalize leaves them as they are): one per slot."""
MAX_WINDOW = 20
"""In-flight slots per connection; each slot reacts with its own emoji, and the server allows
``max_reactions_per_user`` (20 by default) distinct emojis per user and message."""
RICH_EMOJIS = 5
RICH_USERS = 3
"""A rich page's messages each carry RICH_EMOJIS reactions of RICH_USERS users each."""
GENERATOR_SATURATED = 0.85


@dataclass(frozen=True)
class ChangesOptions:
    store: Store = "sqlite"
    postgres_dsn: str = ""
    """PostgreSQL server: the run creates a database of its own there and drops it afterwards.
    With ``store == "mongo"`` it holds the accounts (else SQLite does)."""
    mongo_url: str = ""
    """MongoDB server of ``store == "mongo"``: a database of the run's own, dropped afterwards."""
    members: int = 50
    seed_messages: int = 1000
    window: int = 4
    """Requests in flight per connection in phases 1-3."""
    duration: float = 10.0
    size: int = 100
    page: int = 100
    """Messages per history page, and replies of the thread."""
    hot_messages: int = 1
    """Shared messages the reactions go to (slot k reacts on hot message k % H)."""

    def check(self) -> ChangesOptions:
        """Validate (ValueError, UnsafeTarget for a store off loopback); the duration capped."""
        if self.store not in STORES:
            raise ValueError(f"--store must be one of {', '.join(STORES)}")
        if self.store == "postgres" and not self.postgres_dsn:
            raise ValueError("--store postgres needs --postgres-dsn")
        if self.store == "mongo" and not self.mongo_url:
            raise ValueError("--store mongo needs --mongo-url")
        for url in (self.postgres_dsn, self.mongo_url):
            if url:
                check_loopback(url)
        if not 1 <= self.members <= MAX_CONNECTIONS:
            raise ValueError(f"--members must be between 1 and {MAX_CONNECTIONS}")
        if self.members < RICH_USERS:
            raise ValueError(f"--members must be at least {RICH_USERS} (the rich page's reactors)")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"--per-conn-inflight must be between 1 and {MAX_WINDOW}")
        if self.seed_messages < self.members * self.window:
            raise ValueError("--seed-messages must be at least members x per-conn-inflight (one per edit slot)")
        if not 1 <= self.hot_messages <= self.seed_messages:
            raise ValueError("--hot-messages must be between 1 and --seed-messages")
        if not 1 <= self.page <= 100:
            raise ValueError("--page must be between 1 and 100 (the protocol's page limit)")
        if self.size < 20 or self.size > 3900:
            raise ValueError("--size must be between 20 and 3900 bytes")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")
        if self.duration > MAX_DURATION_S:
            return replace(self, duration=MAX_DURATION_S)
        return self


# -- replies, decoded as far as the checks need ------------------------------------------


class _Reaction(msgspec.Struct):
    emoji: str
    count: int


class _Msg(msgspec.Struct):
    id: str
    seq: int
    rev: int
    text: str = ""
    edited_ts: int | None = None
    thread_root_id: str | None = None
    reply_count: int = 0
    reactions: list[_Reaction] = []
    my_reactions: list[str] | None = None


class _MessageBody(msgspec.Struct):
    message: _Msg


class _Page(msgspec.Struct):
    messages: list[_Msg]
    next_cursor: int | None = None


class _ThreadPage(msgspec.Struct):
    root: _Msg
    messages: list[_Msg]
    next_cursor: int | None = None


class _ChangesPage(msgspec.Struct):
    messages: list[_Msg]
    next_cursor: int | None
    rev: int


_message_decoder = msgspec.json.Decoder(_MessageBody)
_page_decoder = msgspec.json.Decoder(_Page)
_thread_decoder = msgspec.json.Decoder(_ThreadPage)
_changes_decoder = msgspec.json.Decoder(_ChangesPage)


class Mismatch(Exception):
    """A reply that is a result but does not say what the request asked for."""


# -- requests ------------------------------------------------------------------------------


def _text(tag: bytes, size: int) -> bytes:
    return tag + b" " + b"x" * max(0, size - len(tag) - 1)


def send_request(rid: int, conversation: int, text: bytes, root: str | None = None) -> bytes:
    thread = b',"thread_root_id":"%s"' % root.encode() if root else b""
    return b'{"type":"message.send","id":%d,"conversation_id":%d,"text":"%s","client_msg_id":"c%d"%s}' % (
        rid,
        conversation,
        text,
        rid,
        thread,
    )


def edit_request(rid: int, conversation: int, message_id: str, text: bytes) -> bytes:
    return b'{"type":"message.edit","id":%d,"conversation_id":%d,"message_id":"%s","text":"%s"}' % (
        rid,
        conversation,
        message_id.encode(),
        text,
    )


def reaction_request(rid: int, conversation: int, message_id: str, emoji: str, add: bool) -> bytes:
    kind = b"reaction.add" if add else b"reaction.remove"
    return b'{"type":"%s","id":%d,"conversation_id":%d,"message_id":"%s","emoji":"%s"}' % (
        kind,
        rid,
        conversation,
        message_id.encode(),
        emoji.encode(),
    )


def history_request(rid: int, conversation: int, before: int, limit: int) -> bytes:
    return b'{"type":"message.history","id":%d,"conversation_id":%d,"before":%d,"limit":%d}' % (
        rid,
        conversation,
        before,
        limit,
    )


def thread_request(rid: int, conversation: int, root: str, limit: int) -> bytes:
    return b'{"type":"thread.history","id":%d,"conversation_id":%d,"thread_root_id":"%s","limit":%d}' % (
        rid,
        conversation,
        root.encode(),
        limit,
    )


def changes_request(rid: int, conversation: int, after_rev: int) -> bytes:
    return b'{"type":"message.changes","id":%d,"conversation_id":%d,"after_rev":%d,"limit":100}' % (
        rid,
        conversation,
        after_rev,
    )


@dataclass
class Phase:
    """Acks, errors and latencies of one measured phase."""

    name: str
    acked: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: array[int] = field(default_factory=lambda: array("q"))
    reply_bytes: int = 0
    seconds: float = 0.0
    server_cores: float | None = None
    server_cpu_s: float | None = None
    generator_cores: float | None = None
    other_cores: float | None = None
    """Machine CPU used by neither the server nor the generator (a store, another program)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        per_s = round(self.acked / self.seconds, 1) if self.seconds else 0.0
        return {
            "acked": self.acked,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "acks_per_s": per_s,
            "latency_ms": summarize_ns(self.latencies),
            "reply_bytes_mean": round(self.reply_bytes / self.acked) if self.acked else None,
            "server_cores": None if self.server_cores is None else round(self.server_cores, 3),
            "server_cpu_us_per_ack": round(self.server_cpu_s * 1e6 / self.acked, 1)
            if self.server_cpu_s is not None and self.acked
            else None,
            "generator_cores": None if self.generator_cores is None else round(self.generator_cores, 3),
            "other_cores": None if self.other_cores is None else round(self.other_cores, 3),
            **self.extra,
        }


async def call(conn: Conn, phase: Phase, build: Callable[[int], bytes]) -> bytes | None:
    """One request: its reply body when it is a result, None (counted in ``phase.errors``) when
    it is an error frame or no reply came within CALL_TIMEOUT_S. Latency and bytes recorded."""
    rid = conn.next_id()
    started = monotonic_ns()
    try:
        ok, body = await conn.call(build(rid), rid, CALL_TIMEOUT_S)
    except (TimeoutError, ConnectionError) as exc:
        phase.errors[type(exc).__name__] += 1
        return None
    if not ok:
        phase.errors[error_code(body)] += 1
        return None
    phase.latencies.append(monotonic_ns() - started)
    phase.reply_bytes += len(body)
    return body


async def checked(conn: Conn, phase: Phase, build: Callable[[int], bytes], check: Callable[[bytes], Any]) -> Any:
    """``call`` and then ``check`` the body; the check's value, or None (counted) when either fails."""
    body = await call(conn, phase, build)
    if body is None:
        return None
    try:
        value = check(body)
    except (Mismatch, msgspec.DecodeError, msgspec.ValidationError) as exc:
        phase.errors[f"mismatch: {exc}"[:120]] += 1
        return None
    phase.acked += 1
    return value


@dataclass
class Member:
    index: int
    conn: Conn
    own: list[_Msg] = field(default_factory=list)
    """This member's seeded messages (edited in phase 2)."""


@dataclass
class Setup:
    conversation: int
    members: list[Member]
    hot: list[_Msg]
    window: int = 1
    """Requests in flight per member during set-up sends."""
    plain: list[_Msg] = field(default_factory=list)
    rich: list[_Msg] = field(default_factory=list)
    rich_replies: list[_Msg] = field(default_factory=list)
    thread_root: _Msg | None = None
    thread: list[_Msg] = field(default_factory=list)
    last_seq: int = 0


def _sent_check(text: bytes) -> Callable[[bytes], _Msg]:
    def check(body: bytes) -> _Msg:
        message = _message_decoder.decode(body).message
        if message.text.encode() != text:
            raise Mismatch("send ack of another text")
        return message

    return check


async def send_many(
    setup: Setup, phase: Phase, count: int, tag: bytes, size: int, root: _Msg | None = None
) -> list[_Msg]:
    """``count`` messages round-robin over the members, ``setup.window`` per member in flight
    (as in the measured phases: a slow store would time out on all of them at once); their
    acks in seq order."""
    slots = asyncio.Semaphore(len(setup.members) * setup.window)

    async def one(k: int) -> _Msg | None:
        member = setup.members[k % len(setup.members)]
        text = _text(b"%s%d" % (tag, k), size)
        async with slots:
            result: _Msg | None = await checked(
                member.conn,
                phase,
                lambda rid: send_request(rid, setup.conversation, text, root.id if root else None),
                _sent_check(text),
            )
        if result is not None:
            member.own.append(result)
        return result

    sent = await asyncio.gather(*(one(k) for k in range(count)))
    messages = sorted((m for m in sent if m is not None), key=lambda m: m.seq)
    if len(messages) != count:
        raise SetupError(f"set-up: {count - len(messages)} of {count} sends failed: {dict(phase.errors)}")
    setup.last_seq = max(setup.last_seq, messages[-1].seq)
    return messages


# -- the measured phases --------------------------------------------------------------------


class Measured:
    """Server and generator CPU over a phase."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    @asynccontextmanager
    async def over(self, phase: Phase) -> AsyncIterator[None]:
        server = procstat.sample_all(self.pids)
        generator = procstat.sample(os.getpid())
        machine = procstat.cpu_times()
        started = monotonic_ns()
        yield
        phase.seconds = (monotonic_ns() - started) / 1e9
        server_end = procstat.sample_all(self.pids)
        phase.server_cores = procstat.cpu_share(server, server_end)
        if server is not None and server_end is not None:
            phase.server_cpu_s = server_end.cpu_s - server.cpu_s
        phase.generator_cores = procstat.cpu_share(generator, procstat.sample(os.getpid()))
        busy = sum(v["busy"] for v in procstat.cpu_busy(machine, procstat.cpu_times()).values())
        if phase.server_cores is not None and phase.generator_cores is not None:
            phase.other_cores = busy - phase.server_cores - phase.generator_cores


async def closed_loop(
    members: list[Member], window: int, seconds: float, slot: Callable[[Member, int], Awaitable[bool]]
) -> None:
    """``window`` workers per member, each running ``slot`` one request after another until the
    deadline (a slot returns False to stop, e.g. when its state became unknown)."""
    deadline = monotonic_ns() + int(seconds * 1e9)

    async def worker(member: Member, k: int) -> None:
        while monotonic_ns() < deadline:
            if not await slot(member, k):
                return

    await asyncio.gather(*(worker(m, k) for m in members for k in range(window)))


async def measure_sends(setup: Setup, o: ChangesOptions, measured: Measured) -> Phase:
    phase = Phase("message.send")
    counter = iter(range(10**12))

    async def slot(member: Member, k: int) -> bool:
        text = _text(b"s%d" % next(counter), o.size)
        message: _Msg | None = await checked(
            member.conn, phase, lambda rid: send_request(rid, setup.conversation, text), _sent_check(text)
        )
        if message is not None:
            setup.last_seq = max(setup.last_seq, message.seq)
        return True

    async with measured.over(phase):
        await closed_loop(setup.members, o.window, o.duration, slot)
    return phase


async def measure_edits(setup: Setup, o: ChangesOptions, measured: Measured) -> Phase:
    """Slot k of a member edits its own messages k, k + W, ... in turn: one edit in flight per message."""
    phase = Phase("message.edit")
    counter = iter(range(10**12))
    turns: dict[tuple[int, int], int] = collections.defaultdict(int)

    async def slot(member: Member, k: int) -> bool:
        mine = member.own[k :: o.window]
        target = mine[turns[member.index, k] % len(mine)]
        turns[member.index, k] += 1
        text = _text(b"e%d" % next(counter), o.size)

        def check(body: bytes) -> None:
            message = _message_decoder.decode(body).message
            if message.id != target.id or message.text.encode() != text or message.edited_ts is None:
                raise Mismatch("edit reply is not the edited message")

        await checked(member.conn, phase, lambda rid: edit_request(rid, setup.conversation, target.id, text), check)
        return True

    async with measured.over(phase):
        await closed_loop(setup.members, o.window, o.duration, slot)
    return phase


async def measure_reactions(setup: Setup, o: ChangesOptions, measured: Measured) -> Phase:
    """Slot k of every member toggles EMOJIS[k] on hot message k % H: add, remove, add...
    Sequential per (member, slot), so every request changes the message; the reply's
    my_reactions must say whether the caller's emoji is now there."""
    phase = Phase("reaction.add/remove")
    added: dict[tuple[int, int], bool] = collections.defaultdict(bool)
    net: collections.Counter[tuple[str, str]] = collections.Counter()
    adds = removes = 0

    async def slot(member: Member, k: int) -> bool:
        nonlocal adds, removes
        target, emoji = setup.hot[k % len(setup.hot)], EMOJIS[k]
        add = not added[member.index, k]

        def check(body: bytes) -> bool:
            message = _message_decoder.decode(body).message
            if message.id != target.id or (emoji in (message.my_reactions or [])) != add:
                raise Mismatch("reaction reply does not show the change")
            return True

        done = await checked(
            member.conn, phase, lambda rid: reaction_request(rid, setup.conversation, target.id, emoji, add), check
        )
        if done is None:
            return False  # after an error the slot's state on the server is not known: stop it
        added[member.index, k] = add
        net[target.id, emoji] += 1 if add else -1
        if add:
            adds += 1
        else:
            removes += 1
        return True

    async with measured.over(phase):
        await closed_loop(setup.members, o.window, o.duration, slot)
    phase.extra["adds"] = adds
    phase.extra["removes"] = removes
    phase.extra["expected"] = {f"{m}:{e}": n for (m, e), n in sorted(net.items())}
    return phase


def _had_mismatch(phase: Phase) -> bool:
    return any(key.startswith("mismatch") for key in phase.errors)


async def check_reaction_counts(setup: Setup, phase: Phase) -> dict[str, Any]:
    """The server's counts per (hot message, emoji), read with message.history, against the
    acknowledged adds minus removes."""
    reader = setup.members[0].conn
    found: dict[str, int] = {}
    check_phase = Phase("reaction check")
    for message in setup.hot:
        page: _Page | None = await checked(
            reader,
            check_phase,
            partial(history_request, conversation=setup.conversation, before=message.seq + 1, limit=1),
            _page_decoder.decode,
        )
        if page is None or not page.messages or page.messages[0].id != message.id:
            raise SetupError(f"reaction check: could not read message {message.id}: {dict(check_phase.errors)}")
        for reaction in page.messages[0].reactions:
            found[f"{message.id}:{reaction.emoji}"] = reaction.count
    expected: dict[str, int] = {k: v for k, v in phase.extra["expected"].items() if v}
    wrong = {
        k: {"expected": expected.get(k, 0), "found": found.get(k, 0)}
        for k in expected.keys() | found.keys()
        if expected.get(k, 0) != found.get(k, 0)
    }
    return {
        "ok": not wrong and not _had_mismatch(phase),
        "reactions_expected": sum(expected.values()),
        "reactions_found": sum(found.values()),
        "acked_adds_minus_removes": phase.extra["adds"] - phase.extra["removes"],
        "wrong": wrong,
    }


async def build_pages(setup: Setup, o: ChangesOptions) -> Phase:
    """The messages of phase 4, each set stored before the next so their seqs are contiguous:
    a page of plain messages, a page of rich ones (RICH_EMOJIS x RICH_USERS reactions, then one
    reply each, stored after them), a thread root and its replies."""
    phase = Phase("pages set-up")
    setup.plain = await send_many(setup, phase, o.page, b"p", o.size)
    setup.rich = await send_many(setup, phase, o.page, b"r", o.size)

    async def react(message: _Msg, user: int, emoji: str) -> None:
        await checked(
            setup.members[user].conn,
            phase,
            lambda rid: reaction_request(rid, setup.conversation, message.id, emoji, True),
            _message_decoder.decode,
        )

    # One member's reactions one after another (RICH_EMOJIS per message), all members at once.
    async def reactions_of(user: int) -> None:
        for message in setup.rich:
            await asyncio.gather(*(react(message, user, emoji) for emoji in EMOJIS[:RICH_EMOJIS]))

    await asyncio.gather(*(reactions_of(user) for user in range(RICH_USERS)))
    setup.rich_replies = []
    for root in setup.rich:  # one reply each; in order, so the replies follow the rich page
        setup.rich_replies += await send_many(setup, phase, 1, b"q", o.size, root)
    (setup.thread_root,) = await send_many(setup, phase, 1, b"t", o.size)
    setup.thread = await send_many(setup, phase, o.page, b"u", o.size, setup.thread_root)
    if phase.errors:
        raise SetupError(f"pages set-up: {dict(phase.errors)}")
    return phase


def _page_check(expected: list[_Msg], rich: bool) -> Callable[[bytes], None]:
    seqs = sorted(m.seq for m in expected)

    def check(body: bytes) -> None:
        page = _page_decoder.decode(body)
        if sorted(m.seq for m in page.messages) != seqs:
            raise Mismatch("history page of other messages")
        for m in page.messages:
            counts = sorted(r.count for r in m.reactions)
            if rich and (counts != [RICH_USERS] * RICH_EMOJIS or m.reply_count != 1):
                raise Mismatch("rich message without its reactions or reply count")
            if not rich and (m.reactions or m.reply_count):
                raise Mismatch("plain message with reactions or replies")

    return check


def _thread_check(root: _Msg, expected: list[_Msg]) -> Callable[[bytes], None]:
    seqs = [m.seq for m in expected]

    def check(body: bytes) -> None:
        page = _thread_decoder.decode(body)
        if page.root.id != root.id or [m.seq for m in page.messages] != seqs:
            raise Mismatch("thread page of other replies")
        if page.root.reply_count != len(expected) or any(m.thread_root_id != root.id for m in page.messages):
            raise Mismatch("thread page with a wrong root or reply")

    return check


async def measure_pages(setup: Setup, o: ChangesOptions, measured: Measured) -> dict[str, Phase]:
    """One request at a time from member 0, plain / rich / thread in turn, for the duration."""
    if setup.thread_root is None:
        raise SetupError("pages set-up did not run")
    root = setup.thread_root
    kinds: list[tuple[Phase, Callable[[int], bytes], Callable[[bytes], None]]] = [
        (
            Phase("history plain"),
            lambda rid: history_request(rid, setup.conversation, setup.rich[0].seq, o.page),
            _page_check(setup.plain, rich=False),
        ),
        (
            Phase("history rich"),
            lambda rid: history_request(rid, setup.conversation, setup.rich_replies[0].seq, o.page),
            _page_check(setup.rich, rich=True),
        ),
        (
            Phase("thread.history"),
            lambda rid: thread_request(rid, setup.conversation, root.id, o.page),
            _thread_check(root, setup.thread),
        ),
    ]
    reader = setup.members[0].conn
    whole = Phase("pages")
    deadline = monotonic_ns() + int(o.duration * 1e9)
    async with measured.over(whole):
        turn = 0
        while monotonic_ns() < deadline:
            phase, build, check = kinds[turn % len(kinds)]
            await checked(reader, phase, build, check)
            turn += 1
    for phase, _, _ in kinds:  # CPU is the whole phase's: the three kinds alternate
        phase.seconds = whole.seconds
        phase.server_cores, phase.generator_cores, phase.other_cores = (
            whole.server_cores,
            whole.generator_cores,
            whole.other_cores,
        )
    return {phase.name: phase for phase, _, _ in kinds}


def _changes_check(after: int) -> Callable[[bytes], _ChangesPage]:
    def check(body: bytes) -> _ChangesPage:
        page = _changes_decoder.decode(body)
        revs = [m.rev for m in page.messages]
        if revs != sorted(set(revs)) or (revs and revs[0] <= after):
            raise Mismatch("changes page not in rising rev order after the cursor")
        if page.next_cursor is not None and (not revs or page.next_cursor != revs[-1]):
            raise Mismatch("next_cursor is not the page's last rev")
        return page

    return check


async def measure_changes(setup: Setup, o: ChangesOptions, measured: Measured) -> Phase:
    """Member 0 pages message.changes from rev 0 to the end, again and again, for the duration.
    Each page's revs rise above the cursor; next_cursor is the page's last rev or null, and
    a whole pass holds every message of the conversation once (nothing changes meanwhile)."""
    phase = Phase("message.changes")
    reader = setup.members[0].conn
    messages = passes = 0
    incomplete: list[int] = []
    deadline = monotonic_ns() + int(o.duration * 1e9)
    async with measured.over(phase):
        while monotonic_ns() < deadline:
            cursor, seen = 0, 0
            while monotonic_ns() < deadline:
                after = cursor

                page: _ChangesPage | None = await checked(
                    reader,
                    phase,
                    partial(changes_request, conversation=setup.conversation, after_rev=after),
                    _changes_check(after),
                )
                if page is None:
                    break
                seen += len(page.messages)
                messages += len(page.messages)
                if page.next_cursor is None:
                    passes += 1
                    if seen != setup.last_seq:
                        incomplete.append(seen)
                    break
                cursor = page.next_cursor
    phase.extra.update(
        messages=messages,
        messages_per_s=round(messages / phase.seconds, 1) if phase.seconds else 0.0,
        full_passes=passes,
        messages_in_conversation=setup.last_seq,
        incomplete_passes=incomplete,
    )
    return phase


# -- the run ----------------------------------------------------------------------------------


@asynccontextmanager
async def store_env(o: ChangesOptions, run_id: str) -> AsyncIterator[tuple[dict[str, str], str]]:
    """HUBBUB_* settings of the store, with a database of the run's own (dropped on exit), and a note."""
    database = f"hubbub_loadtest_{run_id}"
    env: dict[str, str] = {}
    dsn = ""
    if o.postgres_dsn and o.store in ("postgres", "mongo"):
        import asyncpg

        admin = await asyncpg.connect(o.postgres_dsn, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        dsn = o.postgres_dsn.rsplit("/", 1)[0] + "/" + database
        env["HUBBUB_POSTGRES_DSN"] = dsn
    if o.store == "mongo":
        env.update(HUBBUB_MONGO_URL=o.mongo_url, HUBBUB_MONGO_DATABASE=database, HUBBUB_MESSAGES_BACKEND="mongo")
    accounts = "PostgreSQL" if dsn else "SQLite"
    messages = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mongo": "MongoDB"}[o.store]
    note = f"accounts in {accounts}, messages in {messages}" + (
        f" (database {database})" if o.store != "sqlite" else ""
    )
    try:
        yield env, note
    finally:
        if o.store == "mongo":
            from pymongo import AsyncMongoClient

            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(o.mongo_url, serverSelectionTimeoutMS=5000)
            try:
                await client.drop_database(database)
            finally:
                await client.close()
        if dsn:
            import asyncpg

            admin = await asyncpg.connect(o.postgres_dsn, timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                await admin.close()


async def run_changes(o: ChangesOptions, server: ServerOptions, progress: Progress) -> dict[str, Any]:
    """Start Hubbub on the store, set the channel up, run the five phases; the result."""
    run_id = secrets.token_hex(3)
    result: dict[str, Any] = {"target": "hubbub", "store": o.store, "error": None, "warnings": [], "notes": []}
    async with store_env(o, run_id) as (env, note):
        result["notes"].append(note)
        options = ServerOptions(cpus=server.cpus, extra_env={**server.extra_env, **env})
        async with started_servers("hubbub", options, run_id) as servers:
            result["urls"], result["server_pids"] = servers.urls, servers.pids
            members: list[Member] = []
            try:
                await _run_phases(o, servers.urls, servers.pids, run_id, result, members, progress)
            except (SetupError, OSError, TimeoutError) as exc:
                # Keep the phases measured so far; the last lines of the server's log say why.
                result["error"] = str(exc) or type(exc).__name__
                result["server_log_tail"] = [line for p in servers.processes for line in list(p.log)[-20:]]
            finally:
                for member in members:
                    member.conn.abort()
    return result


async def _run_phases(
    o: ChangesOptions,
    urls: list[str],
    pids: list[int],
    run_id: str,
    result: dict[str, Any],
    members: list[Member],
    progress: Progress,
) -> None:
    started = time.monotonic()
    scenario = Scenario(name="changes", subscribers=o.members, rooms=1, publishers=0, duration=o.duration)
    plan = build_plan(scenario, urls, run_id)
    target = HubbubTarget(urls)
    progress.note(f"[changes/{o.store}] set-up: 1 channel, {o.members} members")
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        await target.setup(plan, scenario)
        for spec in plan.subscribers:
            conn = await target.open(spec.url, None, False, CALL_TIMEOUT_S)
            members.append(Member(spec.index, conn))
            await target.ready(conn, spec, plan)
        setup = Setup(conversation=plan.rooms[0].channel_id, members=members, hot=[], window=o.window)
        seeded = await send_many(setup, Phase("seed"), o.seed_messages, b"m", o.size)
    setup.hot = seeded[: o.hot_messages]
    result["setup_seconds"] = round(time.monotonic() - started, 2)
    measured = Measured(pids)
    phases: dict[str, Any] = {}
    result["phases"] = phases
    progress.note(f"[changes/{o.store}] 1/5 message.send for {o.duration:g} s")
    phases["send"] = (await measure_sends(setup, o, measured)).as_dict()
    progress.note(f"[changes/{o.store}] 2/5 message.edit")
    phases["edit"] = (await measure_edits(setup, o, measured)).as_dict()
    progress.note(f"[changes/{o.store}] 3/5 reaction.add/remove")
    reactions = await measure_reactions(setup, o, measured)
    phases["reaction"] = reactions.as_dict()
    result["correctness"] = await check_reaction_counts(setup, reactions)
    progress.note(f"[changes/{o.store}] 4/5 pages: set-up, then history plain / rich / thread")
    pages_setup = time.monotonic()
    await build_pages(setup, o)
    result["pages_setup_seconds"] = round(time.monotonic() - pages_setup, 2)
    pages = await measure_pages(setup, o, measured)
    phases.update({name: phase.as_dict() for name, phase in pages.items()})
    plain, rich = phases["history plain"]["latency_ms"], phases["history rich"]["latency_ms"]
    result["rich_over_plain"] = {
        q: round(rich[q] / plain[q], 2) if rich[q] and plain[q] else None for q in ("p50", "p99")
    }
    progress.note(f"[changes/{o.store}] 5/5 message.changes from rev 0")
    phases["changes"] = (await measure_changes(setup, o, measured)).as_dict()
    if phases["changes"]["incomplete_passes"]:
        result["correctness"]["ok"] = False
    result["errors"] = sum(sum(p["errors"].values()) for p in phases.values())
    for name, phase in phases.items():
        if (phase["generator_cores"] or 0) >= GENERATOR_SATURATED:
            result["warnings"].append(
                f"WARNING: the generator used {phase['generator_cores']:.2f} cores in {name}: "
                "that figure is the generator's limit, not the server's"
            )
    if result["errors"]:
        result["warnings"].append(f"WARNING: {result['errors']} requests failed or had a wrong reply")
    if not result["correctness"]["ok"]:
        result["warnings"].append(f"WARNING: not correct: {result['correctness']}")


def commit() -> str | None:
    """``git rev-parse --short HEAD`` of the tree the tool runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


TABLE_ROWS = ("send", "edit", "reaction", "history plain", "history rich", "thread.history", "changes")


def table(result: dict[str, Any]) -> str:
    """One row per phase: acks/s (messages/s for changes), latency p50 / p99, errors, CPU."""
    header = ("phase", "acks/s", "p50 ms", "p99 ms", "errors", "server cores", "srv us/ack", "gen cores", "other")
    rows: list[tuple[str, ...]] = [header]
    for name in TABLE_ROWS:
        p = result.get("phases", {}).get(name)
        if p is None:
            continue
        rate = f"{p['messages_per_s']:,.0f} msg/s" if name == "changes" else f"{p['acks_per_s']:,.0f}"
        rows.append(
            (
                name,
                rate,
                _ms(p["latency_ms"]["p50"]),
                _ms(p["latency_ms"]["p99"]),
                str(sum(p["errors"].values())),
                _ms(p["server_cores"]),
                _ms(p["server_cpu_us_per_ack"], 0),
                _ms(p["generator_cores"]),
                _ms(p["other_cores"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    ratio = result.get("rich_over_plain")
    if ratio:
        lines.append(f"history rich / plain: p50 {ratio['p50']}x, p99 {ratio['p99']}x")
    correctness = result.get("correctness")
    if correctness:
        lines.append(
            f"reactions: server {correctness['reactions_found']}, acked adds - removes "
            f"{correctness['acked_adds_minus_removes']}: {'ok' if correctness['ok'] else 'WRONG'}"
        )
    lines.extend(f"[{result['store']}] {w}" for w in result.get("warnings", []))
    if result.get("error"):
        lines.append(f"[{result['store']}] ERROR: {result['error']}")
    return "\n".join(lines)


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
