"""Text fields are validated whole, the same way by the server and by a JSON Schema validator.

- Every ``pattern`` in protocol/schema.json must mean the same under Python's
  ``re.search`` (what msgspec and Python's jsonschema use) and under ECMA-262
  (what JSON Schema specifies, and JavaScript validators use), and must
  refuse a value with a newline appended where newlines are not allowed.
  ``^...$`` fails that: Python's ``$`` also matches before a final newline.
- No text field holds U+0000 (PostgreSQL text cannot) or another C0 control
  character; message text may hold tab and line feed. The protocol layer
  refuses them with ``bad_request`` on every store, tested on all three over
  real sockets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.protocol import codec
from hubbub.protocol.client import Client
from hubbub.protocol.errors import ErrorCode
from tests.conftest import RunningServer, unique_name
from tests.helpers import assert_serving, expect_error

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "protocol" / "schema.json").read_text(encoding="utf-8"))

MESSAGE_ID = "d98abef563e348f5b9a332ac50cfb11c"
# A valid request of every type that has a patterned field, and a valid value of each such field.
VALID_REQUESTS: dict[str, dict[str, Any]] = {
    "register": {"username": "nl123", "password": "correct horse", "display_name": "Alice Liddell"},
    "login": {"username": "nl123", "password": "correct horse"},
    "auth": {"token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"},
    "channel.create": {"name": "nl123", "topic": "Company-wide chatter"},
    "message.send": {
        "conversation_id": 1,
        "text": "first line\nsecond\tline",
        "client_msg_id": "c-1",
        "thread_root_id": MESSAGE_ID,
    },
    "typing": {"conversation_id": 1, "thread_root_id": MESSAGE_ID},
    "thread.history": {"conversation_id": 1, "thread_root_id": MESSAGE_ID},
    "message.edit": {"conversation_id": 1, "message_id": MESSAGE_ID, "text": "first line\nsecond\tline"},
    "message.delete": {"conversation_id": 1, "message_id": MESSAGE_ID},
    "reaction.add": {"conversation_id": 1, "message_id": MESSAGE_ID, "emoji": ":thumbsup:"},
    "reaction.remove": {"conversation_id": 1, "message_id": MESSAGE_ID, "emoji": "\N{THUMBS UP SIGN}"},
    "message.pin": {"conversation_id": 1, "message_id": MESSAGE_ID},
    "message.unpin": {"conversation_id": 1, "message_id": MESSAGE_ID},
    "user.update": {
        "display_name": "Alice Liddell",
        "status_text": "in a meeting",
        "status_emoji": ":spiral_calendar:",
        "time_zone": "Europe/Paris",
        "avatar_url": "https://cdn.example.org/alice.png",
    },
    "user.search": {"query": "ali", "cursor": "alice"},
    "message.search": {"query": '"release notes" depl*', "cursor": "n1853108427402772480"},
    "password.change": {"old_password": "correct horse", "new_password": "staple battery"},
    "channel.update": {"channel_id": 1, "name": "nl123", "topic": "Company-wide chatter", "purpose": "Announcements"},
    "dm.rename": {"conversation_id": 1, "name": "Launch crew"},
}
MULTI_LINE = {("MessageSend", "text"), ("MessageEdit", "text")}
"""Fields where a line feed (and a tab) is allowed."""
PASSWORDS = {
    ("Register", "password"),
    ("Login", "password"),
    ("PasswordChange", "old_password"),
    ("PasswordChange", "new_password"),
}
"""Hashed, never stored or shown as text: only U+0000 is refused (a password that worked keeps working)."""


def patterned_fields() -> Iterator[tuple[str, str, str]]:
    """(definition, property, pattern) for every string property with a pattern, however nested."""

    def walk(node: Any, definition: str, prop: str) -> Iterator[tuple[str, str, str]]:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                yield definition, prop, node["pattern"]
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for name, sub in value.items():
                        yield from walk(sub, definition, name)
                else:
                    yield from walk(value, definition, prop)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, definition, prop)

    for definition, node in SCHEMA["$defs"].items():
        yield from walk(node, definition, "")


PATTERNED = sorted(set(patterned_fields()))
REQUEST_DEFS = {ref.rsplit("/", 1)[1]: op for op, entry in SCHEMA["x-requests"].items() for ref in [entry["request"]]}


def python_accepts(pattern: str, value: str) -> bool:
    """msgspec's and Python jsonschema's reading: re.search."""
    return re.search(pattern, value) is not None


def ecma_accepts(pattern: str, value: str) -> bool:
    """ECMA-262's reading (no flags), for the syntax both dialects share.

    ``\\A``, ``\\Z`` and ``\\z`` do not exist in ECMA-262 (in unicode mode they
    are syntax errors); ``$`` matches only at the very end, ``^`` only at the
    start, as in Python without MULTILINE.
    """
    assert not re.search(r"\\[AZz]", pattern), f"{pattern!r}: \\A, \\Z and \\z are not ECMA-262"
    assert "(?P" not in pattern and "(?#" not in pattern, f"{pattern!r}: Python-only syntax"
    translated = re.sub(r"(?<!\\)\$", r"(?![\\s\\S])", pattern)
    return re.search(translated, value) is not None


def probes(valid: str) -> list[str]:
    return [valid, valid + "\n", valid + "\r\n", "\n" + valid, valid + "\x00", valid + "\u2028", valid + "\x1b[2J"]


def test_every_pattern_is_known_here() -> None:
    assert PATTERNED, "no patterns found: the walk is broken"
    for definition, prop, _ in PATTERNED:
        op = REQUEST_DEFS.get(definition)
        assert op is not None, f"{definition}.{prop}: a pattern outside a request; extend this test"
        assert prop in VALID_REQUESTS.get(op, {}), f"add a valid {op} {prop} to VALID_REQUESTS"


@pytest.mark.parametrize(("definition", "prop", "pattern"), PATTERNED, ids=[f"{d}.{p}" for d, p, _ in PATTERNED])
def test_pattern_refuses_a_trailing_newline_in_both_dialects(definition: str, prop: str, pattern: str) -> None:
    valid = VALID_REQUESTS[REQUEST_DEFS[definition]][prop]
    assert python_accepts(pattern, valid) and ecma_accepts(pattern, valid)
    for value in probes(valid):
        assert python_accepts(pattern, value) == ecma_accepts(pattern, value), f"{pattern!r} on {value!r}"
    if (definition, prop) in PASSWORDS:
        assert not python_accepts(pattern, valid + "\x00") and not ecma_accepts(pattern, valid + "\x00")
        return
    single_line = (definition, prop) not in MULTI_LINE
    assert python_accepts(pattern, valid + "\n") is not single_line
    for control in ("\x00", "\r", "\x1b", "\x1f"):
        assert not python_accepts(pattern, valid + control), f"{pattern!r} accepts {control!r}"
        assert not ecma_accepts(pattern, valid + control)


@pytest.mark.parametrize(("definition", "prop", "pattern"), PATTERNED, ids=[f"{d}.{p}" for d, p, _ in PATTERNED])
def test_decode_refuses_what_the_pattern_refuses(definition: str, prop: str, pattern: str) -> None:
    op = REQUEST_DEFS[definition]
    fields = VALID_REQUESTS[op]
    codec.decode_request(json.dumps({"type": op, "id": "ok", **fields}))
    for value in probes(fields[prop]):
        frame = json.dumps({"type": op, "id": "v", **fields, prop: value})
        if python_accepts(pattern, value):
            codec.decode_request(frame)
            continue
        with pytest.raises(codec.FrameError) as info:
            codec.decode_request(frame)
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.request_id == "v"
        assert prop in info.value.message, info.value.message


def _send(text_json: str, client_msg_id_json: str = '"c"') -> str:
    """A message.send frame with the given JSON string literals, escapes exactly as written."""
    return (
        '{"type":"message.send","id":"s","conversation_id":1,"text":'
        + text_json
        + ',"client_msg_id":'
        + client_msg_id_json
        + "}"
    )


@pytest.mark.parametrize(
    ("frame", "refused"),
    [
        (_send(r'"a\u0000b"'), "text"),
        (_send(r'"a\u001Fb"'), "text"),  # hex digits in either case
        (_send(r'"a\u001fb"'), "text"),
        (_send(r'"a\bb"'), "text"),
        (_send(r'"a\fb"'), "text"),
        (_send(r'"a\rb"'), "text"),
        (_send(r'"a\u000a\u0009\n\tb"'), None),  # line feed and tab, however escaped
        (_send(r'"C:\\bin\\fr\\u0000"'), None),  # escaped backslashes, not control escapes
        (_send(r'"\u00e9\u2028\"\/"'), None),
        (_send('"ok"', r'"c\n1"'), "client_msg_id"),
        (_send('"ok"', r'"c\t1"'), "client_msg_id"),
        (_send('"ok"', r'"\u00e9\u2028"'), None),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_message_send_control_characters_by_escape(frame: str, refused: str | None, as_bytes: bool) -> None:
    """message.send is checked by the codec, not by a schema pattern (the hot path): every escape form counts."""
    raw: str | bytes = frame.encode() if as_bytes else frame
    if refused is None:
        request = codec.decode_request(raw)
        assert request.text == json.loads(frame)["text"]  # type: ignore[union-attr]
        return
    with pytest.raises(codec.FrameError) as info:
        codec.decode_request(raw)
    assert info.value.code == ErrorCode.BAD_REQUEST and info.value.request_id == "s"
    assert f"`$.{refused}`" in info.value.message


# ---------------------------------------------------------------------------
# Over real sockets


async def test_username_with_a_trailing_newline_is_refused(server: RunningServer) -> None:
    first = await server.client()
    await first.register("nl123", "correct horse")
    other = await server.client()
    error = await expect_error(
        other, ErrorCode.BAD_REQUEST, "register", username="nl123\n", password="correct horse", display_name="x"
    )
    assert "username" in error.message
    await expect_error(other, ErrorCode.BAD_REQUEST, "login", username="nl123\n", password="correct horse")
    # The one account is reachable by its real name only.
    assert (await other.login("nl123", "correct horse")).user == first.user


async def test_channel_name_with_a_trailing_newline_is_refused(server: RunningServer) -> None:
    alice = await server.user()
    error = await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.create", name="nl123\n")
    assert "name" in error.message
    created = (await alice.call("channel.create", name="nl123")).conversation
    assert [c.name for c in (await alice.call("channel.list")).conversations] == [created.name]


pytestmark = pytest.mark.all_backends

CONTROLS = ["\x00", "a\x00b", "\x01", "\x1b[31mred", "\r", "\x1f"]
"""Refused in every single-line field; in message text too, except tab and line feed."""


async def _member_of_channel(server: RunningServer) -> tuple[Client, int]:
    alice = await server.user()
    return alice, (await alice.call("channel.create", name=unique_name("room"))).conversation.id


@pytest.mark.parametrize("control", CONTROLS, ids=[repr(c) for c in CONTROLS])
async def test_control_characters_are_bad_request_on_every_store(server: RunningServer, control: str) -> None:
    client = await server.client()
    error = await expect_error(
        client,
        ErrorCode.BAD_REQUEST,
        "register",
        username=unique_name("ctl"),
        password="correct horse",
        display_name=f"Al{control}ice",
    )
    assert "display_name" in error.message
    alice, cid = await _member_of_channel(server)
    await expect_error(alice, ErrorCode.BAD_REQUEST, "channel.create", name=unique_name("t"), topic=f"a{control}")
    await expect_error(
        alice, ErrorCode.BAD_REQUEST, "message.send", conversation_id=cid, text=f"hi{control}", client_msg_id="m1"
    )
    await expect_error(
        alice, ErrorCode.BAD_REQUEST, "message.send", conversation_id=cid, text="hi", client_msg_id=f"m{control}"
    )
    # Nothing was stored, and the same client_msg_id with clean text now goes through.
    ack = await alice.call("message.send", conversation_id=cid, text="hi", client_msg_id="m1")
    assert ack.duplicate is False and ack.message.seq == 1
    await assert_serving(alice)


async def test_tab_and_line_feed_in_message_text_round_trip_on_every_store(server: RunningServer) -> None:
    alice, cid = await _member_of_channel(server)
    text = "line one\n\tindented\nline three \u2028 and \u00e9\U0001f600"
    ack = await alice.call("message.send", conversation_id=cid, text=text, client_msg_id="ok-1")
    assert ack.message.text == text
    (stored,) = (await alice.call("message.history", conversation_id=cid)).messages
    assert stored.text == text
    # Names and other single-line fields take no line feed or tab.
    for display_name in ("Al\nice", "Al\tice"):
        await expect_error(
            await server.client(),
            ErrorCode.BAD_REQUEST,
            "register",
            username=unique_name("nl"),
            password="correct horse",
            display_name=display_name,
        )
