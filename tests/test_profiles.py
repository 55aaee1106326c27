"""Profiles and the directory (issue 12), end to end: user.update and the
user.updated event, user.get, user.search, password.change and
session.end_all, over real sockets against one real server per store
combination (shared by the module's tests: each makes its own users), with
small limits so that each can be reached. Two instances: tests/test_profiles_cluster.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import CloseCode, ErrorCode
from hubbub.server.clock import now_ms
from tests.conftest import TEST_SETTINGS, RunningServer, unique_name
from tests.helpers import assert_serving, closed_with, expect_error, settled_events, uid

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("profiles")]

LIMITS: dict[str, Any] = {"max_status_chars": 20, "max_avatar_url_chars": 40, "user_search_max_limit": 3}
PASSWORD = "correct horse"
CALENDAR = "\N{SPIRAL CALENDAR PAD}\N{VARIATION SELECTOR-16}"


def prefix() -> str:
    """A name prefix nobody else in the shared server has."""
    return f"p{uuid.uuid4().hex[:8]}"


async def device(shared_server: RunningServer, token: str) -> Client:
    """Another connection of the user of ``token``."""
    client = await shared_server.client()
    await client.auth(token)
    return client


async def register(shared_server: RunningServer, username: str, display_name: str | None = None) -> tuple[Client, str]:
    client = await shared_server.client()
    session = await client.register(username, PASSWORD, display_name)
    return client, session.token


async def get_user(client: Client, user_id: int) -> frames.User:
    found: frames.UserList = await client.call("user.get", user_ids=[user_id])
    (user,) = found.users
    return user


# -- user.update and user.updated --------------------------------------------------


async def test_update_changes_the_profile_and_tells_everyone_who_shares_a_conversation_once(
    shared_server: RunningServer,
) -> None:
    alice, alice_token = await register(shared_server, unique_name("alice"))
    alice_phone = await device(shared_server, alice_token)
    bob, carol, stranger = await shared_server.user(), await shared_server.user(), await shared_server.user()
    room: frames.ConversationResult = await alice.call("channel.create", name=unique_name("room"))
    await bob.call("channel.join", channel_id=room.conversation.id)
    await alice.call("dm.open", user_ids=[uid(bob)])  # bob shares two conversations with alice
    await alice.call("dm.open", user_ids=[uid(carol)])
    for client in (alice, alice_phone, bob, carol, stranger):
        await settled_events(client)

    expires = now_ms() + 3_600_000
    result: frames.UserResult = await alice.call(
        "user.update",
        display_name="Alice Ä.",
        status_text="in a meeting",
        status_emoji=":spiral_calendar:",
        status_expires_at=expires,
        time_zone="Europe/Paris",
        avatar_url="https://cdn.example/a.png",
    )
    user = result.user
    assert (user.display_name, user.status_text, user.status_emoji) == ("Alice Ä.", "in a meeting", CALENDAR)
    assert (user.status_expires_at, user.time_zone, user.avatar_url) == (
        expires,
        "Europe/Paris",
        "https://cdn.example/a.png",
    )
    assert (await alice.call("me")).user == user

    for client in (alice, alice_phone, bob, carol):
        events = await settled_events(client)
        assert [e for e in events if isinstance(e, frames.UserUpdated)] == [frames.UserUpdated(user=user)], client
    assert [e for e in await settled_events(stranger) if isinstance(e, frames.UserUpdated)] == []
    assert await get_user(stranger, user.id) == user


async def test_update_changes_only_the_fields_given_and_an_empty_status_clears_it(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    await alice.call("user.update", status_text="lunch", status_emoji="🍜", time_zone="Asia/Tokyo")
    renamed: frames.UserResult = await alice.call("user.update", display_name="New Name")
    assert (renamed.user.status_text, renamed.user.status_emoji, renamed.user.time_zone) == (
        "lunch",
        "🍜",
        "Asia/Tokyo",
    )
    cleared: frames.UserResult = await alice.call(
        "user.update", status_text="", status_emoji="", time_zone="", avatar_url=""
    )
    assert cleared.user == frames.User(
        id=uid(alice), username=renamed.user.username, display_name="New Name", created_at=renamed.user.created_at
    )


async def test_an_expired_status_reads_as_none(shared_server: RunningServer) -> None:
    alice = await shared_server.user()
    reader = await shared_server.user()
    expires = now_ms() + 300
    result: frames.UserResult = await alice.call("user.update", status_text="brb", status_expires_at=expires)
    assert result.user.status_text == "brb"
    # The status expires by the clock, so the test waits for the clock.
    await asyncio.sleep(max(0, expires - now_ms() + 10) / 1000)
    assert now_ms() > expires
    user = await get_user(reader, uid(alice))
    assert (user.status_text, user.status_emoji, user.status_expires_at) == ("", "", None)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"status_text": "late", "status_expires_at": 1_000}, ErrorCode.BAD_REQUEST),  # in the past
        ({"status_expires_at": 2**52}, ErrorCode.BAD_REQUEST),  # an expiry without a status
        ({"status_emoji": "not an emoji"}, ErrorCode.BAD_REQUEST),
        ({"status_emoji": "x" * 65}, ErrorCode.BAD_REQUEST),
        ({"status_text": "x" * 21}, ErrorCode.TOO_LARGE),  # max_status_chars
        ({"status_text": "x" * 257}, ErrorCode.BAD_REQUEST),  # the schema's cap
        ({"status_text": "two\nlines"}, ErrorCode.BAD_REQUEST),
        ({"time_zone": "Mars/Olympus"}, ErrorCode.BAD_REQUEST),
        ({"time_zone": "../../etc/passwd"}, ErrorCode.BAD_REQUEST),
        ({"avatar_url": "ftp://example.org/a.png"}, ErrorCode.BAD_REQUEST),
        ({"avatar_url": "javascript:alert(1)"}, ErrorCode.BAD_REQUEST),
        ({"avatar_url": "https://"}, ErrorCode.BAD_REQUEST),  # no host
        ({"avatar_url": "https://example.org/" + "a" * 30}, ErrorCode.TOO_LARGE),  # max_avatar_url_chars
        ({"display_name": "x" * 65}, ErrorCode.BAD_REQUEST),
        ({"display_name": ""}, ErrorCode.BAD_REQUEST),
        ({"searchable": "no"}, ErrorCode.BAD_REQUEST),
    ],
)
async def test_bad_profile_fields_change_nothing(
    shared_server: RunningServer, fields: dict[str, Any], code: str
) -> None:
    alice = await shared_server.user()
    watcher = await shared_server.user()
    await alice.call("dm.open", user_ids=[uid(watcher)])
    await settled_events(watcher)
    before = await get_user(alice, uid(alice))
    # With a valid change beside the bad field: the whole request is refused.
    await expect_error(alice, code, "user.update", **{"time_zone": "UTC", **fields})
    assert await get_user(alice, uid(alice)) == before
    assert [e for e in await settled_events(watcher) if isinstance(e, frames.UserUpdated)] == []


# -- user.get ---------------------------------------------------------------------


async def test_get_reads_up_to_100_users_and_leaves_out_missing_ones(shared_server: RunningServer) -> None:
    alice, bob = await shared_server.user(), await shared_server.user()
    await bob.call("user.update", searchable=False)
    found: frames.UserList = await alice.call("user.get", user_ids=[uid(bob), 2**50, uid(alice)])
    assert [u.id for u in found.users] == sorted([uid(alice), uid(bob)])
    assert [u.searchable for u in found.users if u.id == uid(bob)] == [False]  # hidden from search only
    await alice.call("user.get", user_ids=list(range(1, 101)))
    await expect_error(alice, ErrorCode.BAD_REQUEST, "user.get", user_ids=list(range(1, 102)))
    await expect_error(alice, ErrorCode.BAD_REQUEST, "user.get", user_ids=[])


# -- user.search ------------------------------------------------------------------


async def test_search_by_username_or_display_name_prefix_paged_without_hidden_users(
    shared_server: RunningServer,
) -> None:
    p = prefix()
    searcher = await shared_server.user()
    by_name = [(await register(shared_server, f"{p}-{n}"))[0] for n in range(4)]
    by_display, _ = await register(shared_server, f"z{p}", f"{p.upper()} Display")
    hidden, _ = await register(shared_server, f"{p}-hidden")
    await hidden.call("user.update", searchable=False)
    expected = sorted([uid(c) for c in [*by_name, by_display]], key=lambda i: i)
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        fields: dict[str, Any] = {"query": p.upper(), "limit": 100}  # capped at user_search_max_limit
        if cursor is not None:
            fields["cursor"] = cursor
        page: frames.UserPage = await searcher.call("user.search", **fields)
        pages.append([u.id for u in page.users])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p_) for p_ in pages] == [3, 2]
    assert sorted(i for page_ in pages for i in page_) == expected
    assert uid(hidden) not in [i for page_ in pages for i in page_]
    one: frames.UserPage = await searcher.call("user.search", query=f"{p} d")
    assert [u.id for u in one.users] == [uid(by_display)] and one.next_cursor is None


async def test_search_errors(shared_server: RunningServer) -> None:
    searcher = await shared_server.user()
    await expect_error(searcher, ErrorCode.BAD_REQUEST, "user.search", query="")
    await expect_error(searcher, ErrorCode.BAD_REQUEST, "user.search", query="a", limit=101)
    await expect_error(searcher, ErrorCode.BAD_REQUEST, "user.search", query="a", limit=0)
    await expect_error(searcher, ErrorCode.BAD_REQUEST, "user.search", query="x" * 65)
    empty: frames.UserPage = await searcher.call("user.search", query=prefix())
    assert (empty.users, empty.next_cursor) == ([], None)


# -- password.change and session.end_all -------------------------------------------


async def test_password_change_logs_out_every_other_session(shared_server: RunningServer) -> None:
    name = unique_name("pw")
    alice, token = await register(shared_server, name)
    phone, laptop = await device(shared_server, token), await device(shared_server, token)
    await expect_error(alice, ErrorCode.UNAUTHORIZED, "password.change", old_password="wrong one", new_password="n" * 8)
    await assert_serving(phone)  # a wrong old password changes nothing
    await expect_error(alice, ErrorCode.BAD_REQUEST, "password.change", old_password=PASSWORD, new_password="short")

    session: frames.Session = await alice.call("password.change", old_password=PASSWORD, new_password="new horse!")
    assert await closed_with(phone) == CloseCode.SESSION_ENDED
    assert await closed_with(laptop) == CloseCode.SESSION_ENDED
    await assert_serving(alice)  # the connection that changed it stays
    assert (await alice.call("me")).user.id == session.user.id

    stale = await shared_server.client()
    await expect_error(stale, ErrorCode.UNAUTHORIZED, "auth", token=token)
    await (await shared_server.client()).auth(session.token)
    await expect_error(await shared_server.client(), ErrorCode.UNAUTHORIZED, "login", username=name, password=PASSWORD)
    await (await shared_server.client()).login(name, "new horse!")


async def test_end_all_closes_every_connection_after_its_reply(shared_server: RunningServer) -> None:
    alice, token = await register(shared_server, unique_name("out"))
    phone = await device(shared_server, token)
    assert await alice.call("session.end_all") == frames.Empty()
    assert await closed_with(alice) == CloseCode.SESSION_ENDED
    assert await closed_with(phone) == CloseCode.SESSION_ENDED
    await expect_error(await shared_server.client(), ErrorCode.UNAUTHORIZED, "auth", token=token)
    fresh = await shared_server.client()
    await fresh.login(alice.user.username if alice.user else "", PASSWORD)  # the password still works
    await assert_serving(fresh)


async def test_a_token_issued_before_generations_authenticates_until_the_first_change(
    shared_server: RunningServer,
) -> None:
    """Tokens of the release before profiles carry no ``gen`` claim: they are of generation 0."""
    alice, _ = await register(shared_server, unique_name("old"))
    now = int(time.time())
    claims = {"sub": str(uid(alice)), "iat": now, "exp": now + 600, "iss": "hubbub", "aud": "hubbub"}
    old_token = jwt.encode(claims, TEST_SETTINGS["jwt_secret"], algorithm="HS256")
    await (await shared_server.client()).auth(old_token)
    await alice.call("password.change", old_password=PASSWORD, new_password="another horse")
    await expect_error(await shared_server.client(), ErrorCode.UNAUTHORIZED, "auth", token=old_token)
