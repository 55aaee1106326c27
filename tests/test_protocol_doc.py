"""PROTOCOL.md and protocol/schema.json agree with protocol/frames.py.

Every ```json block in PROTOCOL.md is an example with a marker:

- ``json request``: a client request; must pass ``codec.decode_request``.
- ``json reply OP``: the reply to request type OP; a ``result`` whose
  ``result`` converts strictly into ``frames.RESULT_TYPES[OP]`` with no field
  missing or extra, or an ``error`` whose code is an ErrorCode.
- ``json event``: one of ``frames.EVENT_TYPES``, exactly as the server would
  encode it.

The document must also show a request and a result for every request type
and an example of every event type, pair every reply with its request by
``id``, mention every error and close code, list the limit settings with
their environment variables and defaults, and name the fixed protocol
constants (FIXED_LIMITS, the reserved mention words) with their values. The checks are plain functions over
the document's text, so the last tests can prove that each catches a broken
document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.protocol import codec, frames, mentions, schema
from hubbub.protocol.errors import CloseCode, ErrorCode
from hubbub.server.config import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "PROTOCOL.md"
SCHEMA_PATH = ROOT / "protocol" / "schema.json"

LIMIT_SETTINGS = (
    "max_frame_bytes",
    "max_message_chars",
    "rate_per_second",
    "rate_burst",
    "max_connections",
    "max_connections_per_user",
    "login_failures_per_username",
    "login_failures_per_address",
    "login_failure_window_seconds",
    "auth_timeout_seconds",
    "outbound_buffer_bytes",
    "allowed_origins",
    "close_timeout_seconds",
    "shutdown_grace_seconds",
    "typing_ttl_seconds",
    "typing_per_second",
    "typing_burst",
    "typing_max_members",
    "edit_window_seconds",
    "max_reaction_emojis",
    "max_reactions_per_user",
    "max_pins",
    "max_status_chars",
    "max_avatar_url_chars",
    "user_search_max_limit",
    "unread_count_cap",
    "search_max_limit",
    "search_relevance_window",
)
"""Settings that PROTOCOL.md's limits table must list, with env var and default."""

FIXED_LIMITS = {
    "MAX_EMOJI_CHARS": frames.MAX_EMOJI_CHARS,
    "REACTION_USERS_SHOWN": frames.REACTION_USERS_SHOWN,
    "MAX_MENTIONS": mentions.MAX_MENTIONS,
}
"""Protocol constants that PROTOCOL.md's fixed limits table must name, each with its value."""

_OPENING_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown document."""

    line: int
    """1-based line of the opening fence."""
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"PROTOCOL.md:{self.line}"


@dataclass(frozen=True)
class Example:
    """A ```json block and what its marker says it is."""

    block: Block
    kind: str
    """``request``, ``reply`` or ``event``."""
    op: str | None = None
    """For replies: the request type replied to."""

    def data(self) -> Any:
        return json.loads(self.block.body)

    def obj(self) -> dict[str, Any]:
        """The example as an object; empty when it is not one (example_problems reports that)."""
        try:
            data = self.data()
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced code block, indented ones (inside list items) included."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _OPENING_FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            body.append(lines[j])
            j += 1
        blocks.append(Block(line=i + 1, info=opening["info"].strip(), body="\n".join(body)))
        i = j + 1
    return blocks


def parse_marker(block: Block) -> Example | None:
    """The example a ```json block declares; None when its marker is not understood."""
    words = block.info.split()
    if words == ["json", "request"]:
        return Example(block, "request")
    if words == ["json", "event"]:
        return Example(block, "event")
    if len(words) == 3 and words[:2] == ["json", "reply"] and words[2] in frames.RESULT_TYPES:
        return Example(block, "reply", words[2])
    return None


def json_blocks(text: str) -> list[Block]:
    return [b for b in fenced_blocks(text) if b.info.split()[:1] == ["json"]]


def examples(text: str) -> list[Example]:
    return [e for e in map(parse_marker, json_blocks(text)) if e is not None]


# ---------------------------------------------------------------------------
# Checks: each returns the problems it finds, empty when the text is right.


def marker_problems(text: str) -> list[str]:
    return [
        f"{b.where}: unknown marker {b.info!r}: use 'json request', 'json reply <request type>' or 'json event'"
        for b in json_blocks(text)
        if parse_marker(b) is None
    ]


def _exact_problem(example: Example, expected: Any, actual: Any, what: str) -> list[str]:
    """Extra fields are dropped by decoding and missing ones filled from defaults: compare back."""
    if actual == expected:
        return []
    return [f"{example.block.where}: {what} is not exactly what the server sends: {expected!r} != {actual!r}"]


def example_problems(example: Example) -> list[str]:
    where = example.block.where
    body = example.block.body
    try:
        data = example.data()
    except json.JSONDecodeError as exc:
        return [f"{where}: not valid JSON: {exc}"]
    if example.kind == "request":
        try:
            codec.decode_request(body)
        except codec.FrameError as exc:
            return [f"{where}: request does not decode: {exc.code}: {exc.message}"]
        return []
    try:
        frame = codec.decode_server_frame(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return [f"{where}: not a server frame: {exc}"]
    problems = _exact_problem(example, data, msgspec.to_builtins(frame), "frame")
    if example.kind == "event":
        if not isinstance(frame, frames.EVENT_TYPES):
            problems.append(f"{where}: a {frames.tag_of(type(frame))!r} frame is not an event")
        return problems
    assert example.op is not None
    if isinstance(frame, frames.ResultFrame):
        result_type = frames.RESULT_TYPES[example.op]
        try:
            result = msgspec.convert(frame.result, result_type, strict=True)
        except msgspec.ValidationError as exc:
            return [*problems, f"{where}: result is not a {result_type.__name__}: {exc}"]
        problems += _exact_problem(example, frame.result, msgspec.to_builtins(result), "result")
    elif isinstance(frame, frames.ErrorFrame):
        if frame.error.code not in {c.value for c in ErrorCode}:
            problems.append(f"{where}: {frame.error.code!r} is not an ErrorCode")
    else:
        problems.append(f"{where}: a reply must be a result or error frame, not {frames.tag_of(type(frame))!r}")
    return problems


def all_example_problems(text: str) -> list[str]:
    return [p for e in examples(text) for p in example_problems(e)]


def _request_type(example: Example) -> str | None:
    request_type = example.obj().get("type")
    return request_type if isinstance(request_type, str) else None


def coverage_problems(text: str) -> list[str]:
    """A request and a result reply for every request type; an example of every event type."""
    found = examples(text)
    requested = {_request_type(e) for e in found if e.kind == "request"}
    answered = {e.op for e in found if e.kind == "reply" and e.obj().get("type") == "result"}
    events = {e.obj().get("type") for e in found if e.kind == "event"}
    problems: list[str] = []
    for request_type in frames.REQUEST_TYPES:
        op = frames.tag_of(request_type)
        if op not in requested:
            problems.append(f"no ```json request example of {op!r}")
        if op not in answered:
            problems.append(f"no ```json reply {op} example with a result")
    for event_type in frames.EVENT_TYPES:
        tag = frames.tag_of(event_type)
        if tag not in events:
            problems.append(f"no ```json event example of {tag!r}")
    return problems


def _is_bad_request(example: Example) -> bool:
    data = example.obj()
    error = data.get("error")
    return data.get("type") == "error" and isinstance(error, dict) and error.get("code") == ErrorCode.BAD_REQUEST.value


def pairing_problems(text: str) -> list[str]:
    """Request ids are unique and every request has exactly one reply of its type with its id.

    An error reply with a null id, or a ``bad_request`` one to a frame too broken
    to be a request example, needs no request example.
    """
    found = examples(text)
    requests: dict[Any, Example] = {}
    problems: list[str] = []
    for e in found:
        if e.kind != "request":
            continue
        rid = e.obj().get("id")
        if rid in requests:
            problems.append(f"{e.block.where}: request id {rid!r} already used at {requests[rid].block.where}")
        requests[rid] = e
    replied: dict[Any, Example] = {}
    for e in found:
        if e.kind != "reply":
            continue
        rid = e.obj().get("id")
        if rid is None:
            continue  # the id could not be read: shown without a request block
        request = requests.get(rid)
        if request is None and _is_bad_request(e):
            pass  # answers an invalid frame, which cannot be a request example (shown as ```text)
        elif request is None:
            problems.append(f"{e.block.where}: reply to id {rid!r}, but no request example has that id")
        elif _request_type(request) != e.op:
            problems.append(f"{e.block.where}: 'reply {e.op}' answers {_request_type(request)!r} request {rid!r}")
        if rid in replied:
            problems.append(f"{e.block.where}: second reply to id {rid!r} (first at {replied[rid].block.where})")
        replied[rid] = e
    for rid, e in requests.items():
        if rid not in replied:
            problems.append(f"{e.block.where}: request {rid!r} has no reply example")
    return problems


def code_problems(text: str) -> list[str]:
    """Every ErrorCode and CloseCode value appears, in backticks."""
    problems = [f"error code `{c.value}` is not documented" for c in ErrorCode if f"`{c.value}`" not in text]
    problems += [f"close code `{c.value}` is not documented" for c in CloseCode if f"`{c.value}`" not in text]
    return problems


def _default_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def limit_problems(text: str) -> list[str]:
    """Each limit setting has a line with its env var and its default, both in backticks."""
    defaults = Settings()
    lines = text.splitlines()
    problems: list[str] = []
    for name in LIMIT_SETTINGS:
        env = f"`{env_name(name)}`"
        default = f"`{_default_text(getattr(defaults, name))}`"
        if not any(env in line and default in line for line in lines):
            problems.append(f"no limits table row with {env} and its default {default}")
    hard_frame_bytes = defaults.limits.hard_frame_bytes
    if f"`{hard_frame_bytes}`" not in text:
        problems.append(f"the hard frame cap `{hard_frame_bytes}` (4 x max_frame_bytes) is not documented")
    depth = f"at most {frames.MAX_NESTING_DEPTH} levels"
    if not any(depth in line and line.startswith("|") for line in lines):
        problems.append(f"the nesting limit ({depth}) is not in the fixed limits table")
    return problems


FIXED_LIMITS_TABLE = "Fixed limits, part of the schema:"


def fixed_limits_rows(text: str) -> list[str]:
    """The rows of the table that follows FIXED_LIMITS_TABLE in §15."""
    _, found, after = text.partition(FIXED_LIMITS_TABLE)
    if not found:
        return []
    rows = after.lstrip("\n").splitlines()
    return rows[: next((i for i, row in enumerate(rows) if not row.startswith("|")), len(rows))]


def fixed_limit_problems(text: str) -> list[str]:
    """Each FIXED_LIMITS constant has a fixed limits row with its name and value, and one row
    lists the reserved mention words."""
    rows = fixed_limits_rows(text)
    if not rows:
        return [f"no {FIXED_LIMITS_TABLE!r} table"]
    problems = [
        f"no fixed limits table row with `{name}` and its value {value}"
        for name, value in FIXED_LIMITS.items()
        if not any(f"`{name}`" in row and re.search(rf"\b{value}\b", row) for row in rows)
    ]
    words = [f"`{word}`" for word in sorted(mentions.RESERVED_MENTIONS)]
    if not any("reserved" in row and all(word in row for word in words) for row in rows):
        problems.append(f"no fixed limits table row with the reserved mention words {', '.join(words)}")
    return problems


# ---------------------------------------------------------------------------
# PROTOCOL.md as it is.


def _assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


DOC = DOC_PATH.read_text(encoding="utf-8")
EXAMPLES = examples(DOC)


def test_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 2 * len(frames.REQUEST_TYPES) + len(frames.EVENT_TYPES)


def test_every_json_block_has_a_known_marker() -> None:
    _assert_none(marker_problems(DOC))


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"L{e.block.line}-{e.kind}" for e in EXAMPLES])
def test_example_matches_schema(example: Example) -> None:
    _assert_none(example_problems(example))


def test_every_request_and_event_type_has_examples() -> None:
    _assert_none(coverage_problems(DOC))


def test_replies_pair_with_requests() -> None:
    _assert_none(pairing_problems(DOC))


def test_every_error_and_close_code_is_documented() -> None:
    _assert_none(code_problems(DOC))


def test_limits_are_documented() -> None:
    _assert_none(limit_problems(DOC))


def test_fixed_protocol_limits_are_documented() -> None:
    _assert_none(fixed_limit_problems(DOC))


# ---------------------------------------------------------------------------
# protocol/schema.json.


def test_schema_json_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema.render(), (
        "protocol/schema.json is stale: run python -m hubbub.protocol.schema --write protocol/schema.json"
    )


def test_schema_covers_every_frame() -> None:
    generated = schema.build_schema()
    defs = generated["$defs"]
    types: list[type[Any]] = [*frames.REQUEST_TYPES, *frames.RESULT_TYPES.values(), *frames.EVENT_TYPES]
    types += [frames.ResultFrame, frames.ErrorFrame, ErrorCode, CloseCode]
    assert {t.__name__ for t in types} <= defs.keys()
    assert generated["x-requests"].keys() == frames.RESULT_TYPES.keys()
    assert generated["x-events"].keys() == {frames.tag_of(t) for t in frames.EVENT_TYPES}
    assert sorted(defs["ErrorCode"]["enum"]) == sorted(c.value for c in ErrorCode)
    assert sorted(defs["CloseCode"]["enum"]) == sorted(c.value for c in CloseCode)


def test_schema_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "schema.json"
    assert schema.main(["--write", str(path)]) == 0
    assert schema.main(["--check", str(path)]) == 0
    path.write_text(schema.render().replace('"hubbub.v1"', '"hubbub.v0"', 1), encoding="utf-8")
    assert schema.main(["--check", str(path)]) == 1
    assert schema.main(["--check", str(tmp_path / "missing.json")]) == 1
    capsys.readouterr()
    assert schema.main([]) == 0
    assert capsys.readouterr().out == schema.render()


# ---------------------------------------------------------------------------
# The checks catch a broken document.


RESULT_LEAVE = '```json reply channel.leave\n{"type": "result"'
Check = Callable[[str], list[str]]


@pytest.mark.parametrize(
    ("old", "new", "count", "check"),
    [
        pytest.param("```json event", "```json evnt", 1, marker_problems, id="unknown-marker"),
        pytest.param("```json request", "```json", 1, marker_problems, id="missing-marker"),
        pytest.param("```json reply ping", "```json reply pong", 1, marker_problems, id="unknown-op"),
        pytest.param(RESULT_LEAVE, '```text\n{"type": "result"', 1, coverage_problems, id="no-result"),
        pytest.param("```json event", "```text", -1, coverage_problems, id="no-events"),
        pytest.param('"by": null', '"by": null, "via": "web"', 1, all_example_problems, id="extra-event-field"),
        pytest.param('"duplicate": false', '"duplicated": false', 1, all_example_problems, id="result-field"),
        pytest.param(', "member_ids": [1, 2]', "", 1, all_example_problems, id="missing-result-field"),
        pytest.param('"code": "conflict"', '"code": "taken"', 1, all_example_problems, id="error-code"),
        pytest.param('"limit": 2}', '"limit": 200}', 1, all_example_problems, id="bad-request"),
        pytest.param('"last_seq": 3', '"last_seq": "3"', 1, all_example_problems, id="lax-type"),
        pytest.param('"id": "cj-2", "channel_id"', '"id": "cj-9", "channel_id"', 1, pairing_problems, id="unpaired"),
        pytest.param("`4008`", "4008", -1, code_problems, id="close-code"),
        pytest.param("`unavailable`", "unavailable", -1, code_problems, id="error-code-doc"),
        pytest.param("`HUBBUB_RATE_BURST`", "HUBBUB_RATE_BURST", 1, limit_problems, id="limit"),
        pytest.param("| at most 32 levels", "| at most 64 levels", 1, limit_problems, id="nesting-limit"),
        pytest.param("`HUBBUB_MAX_PINS`", "HUBBUB_MAX_PINS", 1, limit_problems, id="message-limit"),
        pytest.param("`MAX_MENTIONS`", "MAX_MENTIONS", -1, fixed_limit_problems, id="fixed"),
        pytest.param(
            "the first 20 (`REACTION_USERS_SHOWN`)",
            "the first 10 (`REACTION_USERS_SHOWN`)",
            1,
            fixed_limit_problems,
            id="fixed-value",
        ),
        pytest.param("`here`, `everyone`: never", "`here`: never", 1, fixed_limit_problems, id="reserved-words"),
        pytest.param('"rev": 14\n', '"rev": "14"\n', 1, all_example_problems, id="lax-rev"),
    ],
)
def test_checks_catch_a_broken_doc(old: str, new: str, count: int, check: Check) -> None:
    assert old in DOC, f"the test's anchor {old!r} is no longer in PROTOCOL.md: pick another"
    new_problems = set(check(DOC.replace(old, new, count))) - set(check(DOC))
    assert new_problems, f"replacing {old!r} with {new!r} went unnoticed"
