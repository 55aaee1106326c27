"""message.search end to end: real clients on real sockets against one real
server per store combination (shared by the module's tests: each test makes
its own users and conversations, and searches for words of its own, so
tests never see each other's messages)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from tests.conftest import RunningServer, unique_name
from tests.helpers import expect_error, uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("search")]

LIMITS: dict[str, Any] = {"search_max_limit": 3, "search_relevance_window": 100}
_words = itertools.count(1)


def word() -> str:
    """A word no other test's message has: letters only, so it is one search word."""
    n = next(_words)
    letters = ""
    while True:
        n, r = divmod(n, 26)
        letters += chr(ord("a") + r)
        if n == 0:
            return "zq" + letters + "x"


async def send(client: Client, cid: int, text: str, **fields: Any) -> frames.Message:
    ack: frames.SendAck = await client.call(
        "message.send", conversation_id=cid, text=text, client_msg_id=unique_name("m"), **fields
    )
    return ack.message


async def search(client: Client, query: str, **fields: Any) -> frames.SearchPage:
    page: frames.SearchPage = await client.call("message.search", query=query, **fields)
    return page


async def found_texts(client: Client, query: str, **fields: Any) -> list[str]:
    return [hit.message.text for hit in (await search(client, query, **fields)).results]


async def channel(owner: Client, *members: Client, private: bool = False) -> int:
    cid: int = (await owner.call("channel.create", name=unique_name("room"), private=private)).conversation.id
    for member in members:
        if private:
            await owner.call("channel.invite", channel_id=cid, user_id=uid(member))
        else:
            await member.call("channel.join", channel_id=cid)
    return cid


async def test_finds_words_newest_first_with_highlights(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    w = word()
    await send(alice, cid, f"first {w} here")
    await send(alice, cid, "nothing to see")
    last = await send(alice, cid, f"{w.upper()}: and {w} again")
    page = await search(alice, w)
    assert [hit.message.text for hit in page.results] == [f"{w.upper()}: and {w} again", f"first {w} here"]
    assert (page.results[0].message.id, page.results[0].message.seq) == (last.id, last.seq)
    n = len(w)
    assert page.results[0].highlights == [[0, n], [n + 6, 2 * n + 6]]
    assert page.results[1].highlights == [[6, 6 + n]]
    assert page.next_cursor is None


async def test_query_syntax_words_phrases_prefixes_and_diacritics(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    w = word()
    await send(alice, cid, f"{w} release notes are out")
    await send(alice, cid, f"notes on the {w} release")
    await send(alice, cid, f"{w}ment done")
    await send(alice, cid, f"Éclair for {w}")
    assert await found_texts(alice, f"{w} notes release") == [
        f"notes on the {w} release",
        f"{w} release notes are out",
    ]
    assert await found_texts(alice, f'"{w} release notes"') == [f"{w} release notes are out"]
    assert await found_texts(alice, f'"release {w}"') == []
    assert set(await found_texts(alice, f"{w}*", limit=3)) >= {f"{w}ment done"}
    assert await found_texts(alice, f"{w}ment") == [f"{w}ment done"]
    assert await found_texts(alice, f"eclair {w}") == [f"Éclair for {w}"]
    assert await found_texts(alice, f"ÉCLAIR {w}") == [f"Éclair for {w}"]
    hit = (await search(alice, f"ecl* {w}")).results[0]
    assert hit.highlights == [[0, 6], [11, 11 + len(w)]]
    # Operators of the stores' own syntax are plain text: no error, and they match nothing extra.
    for query in (f"{w} OR nothing", f"{w} NEAR(x)", f"text:{w}", f"{w} -release", f"{w} AND ''", f'"{w}'):
        assert isinstance(await search(alice, query), frames.SearchPage), query


async def test_bad_queries_are_bad_requests(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    await send(alice, await channel(alice), "hello there")  # a conversation to search: the store sees the cursor
    for query in ("", "   ", "!!! ---", '""', "a*", "*", "x" * 257):
        await expect_error(alice, "bad_request", "message.search", query=query)
    await expect_error(alice, "bad_request", "message.search", query=" ".join(f"w{n}" for n in range(17)))
    await expect_error(alice, "bad_request", "message.search", query="hello", limit=0)
    await expect_error(alice, "bad_request", "message.search", query="hello", order="oldest")
    await expect_error(alice, "bad_request", "message.search", query="hello", after_ts=10, before_ts=10)
    await expect_error(alice, "bad_request", "message.search", query="hello", cursor="garbage")
    await expect_error(alice, "bad_request", "message.search", query="hello", cursor="n1.2")
    await expect_error(alice, "bad_request", "message.search", query="hello", cursor="r5")  # a relevance cursor
    await expect_error(alice, "bad_request", "message.search", query="hello", order="relevance", cursor="rx")
    await expect_error(
        alice, "bad_request", "message.search", query="hello", order="relevance", cursor="r100"
    )  # the window
    await expect_error(alice, "bad_request", "message.search", query="hello", unknown=1)
    anonymous = await shared_server.client()
    await expect_error(anonymous, "unauthorized", "message.search", query="hello")


async def test_only_the_callers_conversations_at_the_time_of_the_search(shared_server: RunningServer) -> None:
    alice, bob, carol = await asyncio.gather(shared_server.user(), shared_server.user(), shared_server.user())
    w = word()
    public = await channel(alice, bob)
    private = await channel(alice, private=True)
    dm: int = (await alice.call("dm.open", user_ids=[carol.user.id if carol.user else 0])).conversation.id
    await send(alice, public, f"public {w}")
    await send(alice, private, f"private {w}")
    await send(carol, dm, f"dm {w}")
    assert sorted(await found_texts(alice, w)) == [f"dm {w}", f"private {w}", f"public {w}"]
    assert await found_texts(bob, w) == [f"public {w}"]
    assert await found_texts(carol, w) == [f"dm {w}"]
    # Naming a conversation the caller may not see: as every conversation request answers.
    await expect_error(bob, "not_found", "message.search", query=w, conversation_id=private)
    await expect_error(carol, "forbidden", "message.search", query=w, conversation_id=public)
    await expect_error(bob, "not_found", "message.search", query=w, conversation_id=10**9)
    # Leaving: its messages are no longer found, at once.
    await bob.call("channel.leave", channel_id=public)
    assert await found_texts(bob, w) == []
    await expect_error(bob, "forbidden", "message.search", query=w, conversation_id=public)
    # A user with no conversation at all finds nothing.
    loner = await shared_server.user()
    assert await found_texts(loner, w) == []


async def test_deleted_never_found_edited_only_by_new_text(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    old, new, gone = word(), word(), word()
    edited = await send(alice, cid, f"{old} wording")
    deleted = await send(alice, cid, f"{gone} soon")
    await alice.call("message.edit", conversation_id=cid, message_id=edited.id, text=f"{new} wording")
    await alice.call("message.delete", conversation_id=cid, message_id=deleted.id)
    assert await found_texts(alice, old) == []
    assert await found_texts(alice, gone) == []
    (hit,) = (await search(alice, f"{new} wording")).results
    assert (hit.message.id, hit.message.text, hit.message.edited_ts is not None) == (edited.id, f"{new} wording", True)
    assert await found_texts(alice, "wording", conversation_id=cid) == [f"{new} wording"]
    # A reaction (a change that keeps the text) keeps it found.
    await alice.call("reaction.add", conversation_id=cid, message_id=edited.id, emoji="\N{THUMBS UP SIGN}")
    (hit,) = (await search(alice, new)).results
    assert hit.message.my_reactions == ["\N{THUMBS UP SIGN}"]


async def test_paging_with_the_cursor(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    w = word()
    sent = [await send(alice, cid, f"{w} number {n}") for n in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        fields: dict[str, Any] = {"limit": 10} if cursor is None else {"limit": 10, "cursor": cursor}
        page = await search(alice, w, **fields)
        assert len(page.results) <= 3, "search_max_limit caps the page"
        seen += [hit.message.id for hit in page.results]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [m.id for m in reversed(sent)] and pages == 3
    # By relevance: every match once, over pages too.
    ranked: list[str] = []
    cursor = None
    while True:
        fields = {"order": "relevance"} if cursor is None else {"order": "relevance", "cursor": cursor}
        page = await search(alice, w, **fields)
        ranked += [hit.message.id for hit in page.results]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(ranked) == sorted(m.id for m in sent) and len(ranked) == 7


async def test_relevance_puts_the_best_match_first(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    cid = await channel(alice)
    w, v = word(), word()
    await send(alice, cid, f"{w} {v} {v} {v}")
    await send(alice, cid, f"{w} and a long text that goes on and on with many other words in it")
    await send(alice, cid, f"{w} and nothing more of interest here")
    page = await search(alice, f"{w} {v}", order="relevance")
    assert [hit.message.text for hit in page.results] == [f"{w} {v} {v} {v}"]
    ranked = await found_texts(alice, w, order="relevance")
    assert ranked[0] == f"{w} {v} {v} {v}"


async def test_filters_conversation_sender_dates_threads(shared_server: RunningServer) -> None:
    alice, bob = await asyncio.gather(shared_server.user(), shared_server.user())
    one = await channel(alice, bob)
    two = await channel(alice, bob)
    w = word()
    a1 = await send(alice, one, f"{w} alice one")
    b1 = await send(bob, one, f"{w} bob one")
    await asyncio.sleep(0.005)  # a later millisecond for the date range (ts are the server's clock)
    a2 = await send(alice, two, f"{w} alice two")
    reply = await send(bob, two, f"{w} bob reply", thread_root_id=a2.id)
    assert await found_texts(alice, w, conversation_id=one) == [b1.text, a1.text]
    assert await found_texts(alice, w, sender_id=uid(bob)) == [reply.text, b1.text]
    assert await found_texts(alice, w, sender_id=uid(bob), conversation_id=two) == [reply.text]
    assert await found_texts(alice, w, threads_only=True) == [reply.text]
    assert await found_texts(alice, w, after_ts=a2.ts) == [reply.text, a2.text]
    assert await found_texts(alice, w, before_ts=a2.ts) == [b1.text, a1.text]
    assert await found_texts(alice, w, after_ts=a1.ts, before_ts=a1.ts + 1, sender_id=uid(alice)) == [a1.text]
    assert await found_texts(alice, w, sender_id=10**9) == []
