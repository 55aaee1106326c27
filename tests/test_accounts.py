"""Accounts: register, login, auth with a token, and everything they must refuse."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from hubbub.protocol import frames
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from hubbub.server.config import Settings
from tests.conftest import TEST_SETTINGS, RunningServer, unique_name
from tests.helpers import assert_serving, expect_error

pytestmark = pytest.mark.all_backends

PASSWORD = "correct horse"
SECRET: str = TEST_SETTINGS["jwt_secret"]
OTHER_SECRET = "another-secret-that-is-also-long-enough-0123456789-0123456789"
ISSUER = Settings().jwt_issuer
AUDIENCE = Settings().jwt_audience


async def assert_unauthenticated(client: Client) -> None:
    await assert_serving(client)
    await expect_error(client, ErrorCode.UNAUTHORIZED, "me")


# ---------------------------------------------------------------------------
# register, login, auth


async def test_register_returns_session_and_authenticates(server: RunningServer) -> None:
    client = await server.client()
    name = unique_name("reg")
    before_ms = int(time.time() * 1000)
    session = await client.call("register", username=name, password=PASSWORD, display_name="Reg Istered")
    assert isinstance(session, frames.Session)
    assert session.user.username == name
    assert session.user.display_name == "Reg Istered"
    assert session.user.id >= 1
    assert session.user.created_at >= before_ms - 1000
    assert session.token
    ttl_ms = Settings().jwt_ttl_seconds * 1000
    assert before_ms + ttl_ms - 2000 <= session.expires_at <= int(time.time() * 1000) + ttl_ms + 1000

    me = await client.call("me")
    assert me.user == session.user
    # Requests beyond the pre-auth set now work on this connection.
    listed = await client.call("channel.list")
    assert isinstance(listed, frames.ConversationList)


async def test_register_duplicate_username_conflicts(server: RunningServer) -> None:
    first = await server.user("taken")
    second = await server.client()
    err = await expect_error(
        second, ErrorCode.CONFLICT, "register", username="taken", password=PASSWORD, display_name="x"
    )
    assert "taken" in err.message
    # The failed register did not authenticate the connection; both keep serving.
    await assert_unauthenticated(second)
    await assert_serving(first)
    assert (await first.call("me")).user.username == "taken"


async def test_login_with_right_password(server: RunningServer) -> None:
    registered = await server.user("lena", password=PASSWORD)
    assert registered.user is not None
    client = await server.client()
    session = await client.login("lena", PASSWORD)
    assert session.user == registered.user
    assert session.token
    assert (await client.call("me")).user == registered.user


async def test_login_wrong_password_and_unknown_user_are_unauthorized(server: RunningServer) -> None:
    await server.user("mona", password=PASSWORD)
    client = await server.client()
    wrong = await expect_error(client, ErrorCode.UNAUTHORIZED, "login", username="mona", password="not the password")
    unknown = await expect_error(client, ErrorCode.UNAUTHORIZED, "login", username="nobody", password=PASSWORD)
    # The same answer for both, so that usernames cannot be probed.
    assert wrong.message == unknown.message
    await assert_unauthenticated(client)
    # The right password still works on the same connection afterwards.
    session = await client.login("mona", PASSWORD)
    assert session.user.username == "mona"


async def test_auth_with_token_on_new_connection(server: RunningServer) -> None:
    first = await server.user("tom")
    assert first.user is not None and first.token is not None
    second = await server.client()
    session = await second.auth(first.token)
    assert session.user == first.user
    assert session.token
    assert (await second.call("me")).user == first.user
    # The token handed back by auth works too.
    third = await server.client()
    assert (await third.auth(session.token)).user.id == first.user.id


async def test_login_token_works_for_auth(server: RunningServer) -> None:
    await server.user("ursula", password=PASSWORD)
    client = await server.client()
    session = await client.login("ursula", PASSWORD)
    other = await server.client()
    assert (await other.auth(session.token)).user == session.user


# Valid fields for every request that needs authentication; the assertion below
# makes sure a new request type is added here too.
NEEDS_AUTH: dict[str, dict[str, Any]] = {
    "me": {},
    "channel.create": {"name": "general"},
    "channel.list": {},
    "channel.join": {"channel_id": 1},
    "channel.invite": {"channel_id": 1, "user_id": 1},
    "channel.leave": {"channel_id": 1},
    "channel.members": {"channel_id": 1},
    "channel.update": {"channel_id": 1, "topic": "t"},
    "channel.kick": {"channel_id": 1, "user_id": 1},
    "channel.set_role": {"channel_id": 1, "user_id": 1, "role": "admin"},
    "dm.open": {"user_ids": [1]},
    "dm.list": {},
    "dm.rename": {"conversation_id": 1, "name": "crew"},
    "message.send": {"conversation_id": 1, "text": "hi", "client_msg_id": "c1"},
    "message.history": {"conversation_id": 1},
    "presence.query": {"user_ids": [1]},
    "typing": {"conversation_id": 1},
    "thread.history": {"conversation_id": 1, "thread_root_id": "m1"},
    "message.edit": {"conversation_id": 1, "message_id": "m1", "text": "hi"},
    "message.delete": {"conversation_id": 1, "message_id": "m1"},
    "reaction.add": {"conversation_id": 1, "message_id": "m1", "emoji": ":tada:"},
    "reaction.remove": {"conversation_id": 1, "message_id": "m1", "emoji": ":tada:"},
    "message.pin": {"conversation_id": 1, "message_id": "m1"},
    "message.unpin": {"conversation_id": 1, "message_id": "m1"},
    "conversation.pins": {"conversation_id": 1},
    "message.changes": {"conversation_id": 1, "after_rev": 0},
    "message.search": {"query": "hello"},
    "user.update": {"display_name": "Someone"},
    "user.get": {"user_ids": [1]},
    "user.search": {"query": "ex"},
    "password.change": {"old_password": "correct horse", "new_password": "staple battery"},
    "session.end_all": {},
    "conversation.mark_read": {"conversation_id": 1, "seq": 0},
    "conversation.mute": {"conversation_id": 1, "muted": True},
    "admin.disable_user": {"user_id": 1},
    "admin.enable_user": {"user_id": 1},
    "admin.set_workspace_role": {"user_id": 1, "role": "admin"},
}


def test_needs_auth_table_covers_every_request() -> None:
    assert set(NEEDS_AUTH) == set(frames.RESULT_TYPES) - frames.PRE_AUTH_TYPES


async def test_requests_before_auth_are_unauthorized(server: RunningServer) -> None:
    await server.user("existing")  # so that id 1 exists and only auth is missing
    client = await server.client()
    for op, fields in NEEDS_AUTH.items():
        await expect_error(client, ErrorCode.UNAUTHORIZED, op, **fields)
        await assert_serving(client)
    # After authenticating, the same connection is served.
    await client.register(unique_name(), PASSWORD)
    assert (await client.call("me")).user == client.user


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        pytest.param("register", {"username": "ab", "password": PASSWORD, "display_name": "x"}, id="username-short"),
        pytest.param("register", {"username": "Alice", "password": PASSWORD, "display_name": "x"}, id="uppercase"),
        pytest.param("register", {"username": "a" * 33, "password": PASSWORD, "display_name": "x"}, id="username-long"),
        pytest.param("register", {"username": "_alice", "password": PASSWORD, "display_name": "x"}, id="leading-_"),
        pytest.param("register", {"username": "al ice", "password": PASSWORD, "display_name": "x"}, id="space"),
        pytest.param("register", {"username": "alice", "password": "7chars!", "display_name": "x"}, id="pw-short"),
        pytest.param("register", {"username": "alice", "password": "x" * 257, "display_name": "x"}, id="pw-long"),
        pytest.param("register", {"username": "alice", "password": PASSWORD, "display_name": ""}, id="display-empty"),
        pytest.param("login", {"username": "Alice", "password": PASSWORD}, id="login-uppercase"),
        pytest.param("login", {"username": "alice", "password": "short"}, id="login-pw-short"),
        pytest.param("auth", {"token": ""}, id="auth-empty-token"),
    ],
)
async def test_invalid_field_values_are_bad_request(server: RunningServer, op: str, fields: dict[str, Any]) -> None:
    client = await server.client()
    await expect_error(client, ErrorCode.BAD_REQUEST, op, **fields)
    await assert_unauthenticated(client)
    if op == "register":
        # Nothing was created: "alice" is still free.
        assert (await client.register("alice", PASSWORD)).user.username == "alice"


async def test_register_on_authenticated_connection_is_forbidden(server: RunningServer) -> None:
    client = await server.user("first")
    assert client.user is not None
    await expect_error(client, ErrorCode.FORBIDDEN, "register", username="second", password=PASSWORD, display_name="s")
    assert (await client.call("me")).user == client.user
    # The refused register created nobody.
    other = await server.client()
    await expect_error(other, ErrorCode.UNAUTHORIZED, "login", username="second", password=PASSWORD)


async def test_switching_user_on_authenticated_connection_is_forbidden(server: RunningServer) -> None:
    victor = await server.user("victor", password=PASSWORD)
    wendy = await server.user("wendy", password=PASSWORD)
    assert victor.user is not None and wendy.token is not None
    await expect_error(victor, ErrorCode.FORBIDDEN, "login", username="wendy", password=PASSWORD)
    await expect_error(victor, ErrorCode.FORBIDDEN, "auth", token=wendy.token)
    assert (await victor.call("me")).user == victor.user
    # Logging in again as the same user is harmless.
    assert (await victor.login("victor", PASSWORD)).user == victor.user


# ---------------------------------------------------------------------------
# Tokens


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(user_id: int, **overrides: Any) -> dict[str, Any]:
    """Valid claims for ``user_id``; an override of None removes the claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + 3600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        **overrides,
    }
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def hs512(payload: dict[str, Any], key: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, key, algorithm="HS512")


def unsigned(payload: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."


TokenFactory = Callable[[int], str]

BAD_TOKENS: dict[str, TokenFactory] = {
    "expired": lambda uid: hs256(claims(uid, iat=int(time.time()) - 7200, exp=int(time.time()) - 60)),
    "forged-signature": lambda uid: hs256(claims(uid), key=OTHER_SECRET),
    "tampered-payload": lambda uid: (
        lambda parts: f"{parts[0]}.{_b64(claims(uid + 1))}.{parts[2]}"  # signature of another payload
    )(hs256(claims(uid)).split(".")),
    "alg-none": lambda uid: unsigned(claims(uid)),
    "alg-none-with-signature": lambda uid: unsigned(claims(uid)) + hs256(claims(uid)).split(".")[2],
    "hs512-other-key": lambda uid: hs512(claims(uid), OTHER_SECRET),
    "hs512-right-key": lambda uid: hs512(claims(uid), SECRET),
    "wrong-iss": lambda uid: hs256(claims(uid, iss="someone-else")),
    "wrong-aud": lambda uid: hs256(claims(uid, aud="someone-else")),
    "missing-exp": lambda uid: hs256(claims(uid, exp=None)),
    "missing-sub": lambda uid: hs256(claims(uid, sub=None)),
    "sub-not-a-number": lambda uid: hs256(claims(uid, sub="alice")),
    "no-such-user": lambda uid: hs256(claims(uid + 1000)),
    "not-a-jwt": lambda uid: "not.a.jwt",
    "garbage": lambda uid: "x" * 100,
}


async def test_hand_made_valid_token_is_accepted(server: RunningServer) -> None:
    """The control for the cases below: the same helper with nothing wrong works."""
    owner = await server.user()
    assert owner.user is not None
    client = await server.client()
    session = await client.auth(hs256(claims(owner.user.id)))
    assert session.user == owner.user


@pytest.mark.parametrize("make_token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
async def test_bad_tokens_are_unauthorized(server: RunningServer, make_token: TokenFactory) -> None:
    owner = await server.user()
    assert owner.user is not None
    client = await server.client()
    err = await expect_error(client, ErrorCode.UNAUTHORIZED, "auth", token=make_token(owner.user.id))
    assert err.message.startswith("invalid token"), err.message
    await assert_unauthenticated(client)
    # The connection can still authenticate properly afterwards.
    assert owner.token is not None
    assert (await client.auth(owner.token)).user == owner.user


def test_tokens_issued_in_the_same_second_differ() -> None:
    from hubbub.server.auth import Tokens

    tokens = Tokens(SECRET, ISSUER, AUDIENCE, 3600)
    now = time.time()
    (first, first_exp), (second, second_exp) = tokens.issue(7, now), tokens.issue(7, now)
    assert first_exp == second_exp
    assert first != second
    assert tokens.verify(first) == tokens.verify(second) == 7
    ids = {jwt.decode(t, SECRET, algorithms=["HS256"], audience=AUDIENCE)["jti"] for t in (first, second)}
    assert len(ids) == 2


async def test_every_session_gets_a_fresh_token(server: RunningServer) -> None:
    """register, login and auth, even within one second, each hand back a token of their own."""
    alice = await server.user(password=PASSWORD)
    assert alice.user is not None and alice.token is not None
    issued = [alice.token]
    issued.append((await alice.login(alice.user.username, PASSWORD)).token)
    for _ in range(3):
        issued.append((await alice.auth(issued[-1])).token)
    seconds = [jwt.decode(t, SECRET, algorithms=["HS256"], audience=AUDIENCE)["iat"] for t in issued]
    assert len(set(seconds)) < len(seconds), "the calls spanned too long to share a second"
    assert len(set(issued)) == len(issued)
    # Every one of them is valid.
    for token in issued:
        assert (await (await server.client()).auth(token)).user == alice.user
