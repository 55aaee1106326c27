"""Turning bytes into frames and frames into bytes, with no I/O.

The server and the client both go through here, so validation and encoding
happen one way only.
"""

from __future__ import annotations

import functools
import re
import struct
from itertools import accumulate
from typing import Any

import msgspec

from hubbub.protocol.errors import ErrorCode
from hubbub.protocol.frames import (
    MAX_NESTING_DEPTH,
    MESSAGE_TEXT_PATTERN,
    PATTERN_RULES,
    SINGLE_LINE_PATTERN,
    AnyRequest,
    AnyServerFrame,
    ErrorBody,
    ErrorFrame,
    MessageSend,
    RequestId,
    ResultFrame,
)

_request_decoder = msgspec.json.Decoder(AnyRequest)
_server_frame_decoder = msgspec.json.Decoder(AnyServerFrame)
_encoder = msgspec.json.Encoder()


class _IdOnly(msgspec.Struct):
    """Used to recover the request id from a frame that failed validation."""

    id: RequestId | None = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


class FrameError(Exception):
    """A client frame that cannot be served, with the reply it deserves."""

    def __init__(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code
        self.message = message


# Nesting depth. msgspec decodes nested values recursively and raises
# RecursionError (through Py_EnterRecursiveCall) when it runs out of stack: a
# clean exception, but an unhandled one, and at a depth that depends on how
# deep the caller's stack already is. The typed request decoder only recurses
# while skipping fields that come before ``type``; decoding the id of a
# refused frame (_IdOnly) recurses into every field it skips. So both catch
# RecursionError, and a frame that fails to decode is measured before
# anything else is said about it. A frame that decodes is a valid request,
# whose schema bounds its depth far below MAX_NESTING_DEPTH (a test checks
# that), so measuring every frame up front would only slow the hot path.
#
# The checks below run in C (regex, bytes methods): refusing a frame for its
# depth costs microseconds to about a millisecond per 64 KiB, not a Python
# loop per byte. The regexes are possessive (no backtracking), so linear.

_STRING = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'


def _shallow(levels: int) -> str:
    """A regex for JSON text whose arrays and objects nest at most ``levels`` deep, consumed possessively.

    It stops at a closing bracket it did not open, at a quote that starts no
    complete string, or at an opening bracket whose value nests deeper (or
    never closes).
    """
    inner = "" if levels == 0 else r"|[\[{]" + _shallow(levels - 1) + r"[\]}]"
    return r'(?:[^"\[\]{}]++|' + _STRING + inner + ")*+"


def _descent(levels: int) -> str:
    """A regex for a prefix that goes ``levels`` levels deeper than where it starts.

    At each level, values that stay shallow enough are skipped; the first one
    that does not must be entered (an opening bracket), and so on down.
    """
    return "" if levels == 0 else _shallow(levels - 1) + r"[\[{]" + _descent(levels - 1)


@functools.cache
def _too_deep_pattern() -> re.Pattern[str]:
    # Compiled on first use (some 30 KB of pattern, ~70 ms): most processes never meet such a frame.
    return re.compile(r"\s*[\[{]" + _descent(MAX_NESTING_DEPTH), re.DOTALL)


# The opening of a top-level object up to the first member value nested too deep.
_SHALLOW_OPENING = re.compile(r"\s*\{" + _shallow(MAX_NESTING_DEPTH - 1), re.DOTALL)


def too_deep(text: str) -> bool:
    """Whether a JSON decoder reading ``text`` would nest deeper than MAX_NESTING_DEPTH.

    Only the top-level value counts, as far as it is valid; brackets inside
    strings do not. Agrees with ``nesting_depth(text) > MAX_NESTING_DEPTH``.
    """
    # Fewer opening brackets than the limit cannot nest deeper than it: no scan.
    if text.count("[") + text.count("{") <= MAX_NESTING_DEPTH:
        return False
    return _too_deep_pattern().match(text) is not None


_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEP = [0] * 256
for _byte in b"[{":
    _DEPTH_STEP[_byte] = 1
for _byte in b"]}":
    _DEPTH_STEP[_byte] = -1


def nesting_depth(raw: str | bytes) -> int:
    """Deepest nesting of arrays and objects in a JSON text (a top-level object is 1): the reference measure.

    As far as a decoder would read: brackets inside strings, after the
    top-level value has closed, or inside a string left unterminated do not
    count. Arithmetic over every bracket, so slower than ``too_deep``.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # Escaped backslashes, then escaped quotes: what remains of a quote delimits a string.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(data.split(b'"')[::2])
    depths = list(accumulate(map(_DEPTH_STEP.__getitem__, outside.translate(None, _NOT_BRACKETS))))
    # Steps are +-1 from 0: the first 0 is where the top-level value closed (or a stray closer ended it).
    end = depths.index(0) if 0 in depths else len(depths)
    return max(0, max(depths[:end], default=0))


def _id_before_too_deep(text: str) -> RequestId | None:
    """The id of a frame nested too deep, when it is a top-level member before the first too-deep value.

    The opening is closed where the too-deep value starts (``{"id":"n","x":``
    becomes ``{"id":"n","x":null}``) and decoded: no recursion into the rest.
    """
    match = _SHALLOW_OPENING.match(text)
    if match is None:
        return None
    opening = text[: match.end()].rstrip()
    closed = opening + "null}" if opening.endswith(":") else opening.rstrip(",") + "}"
    return _decoded_id(closed)


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def recover_request_id(raw: bytes | str) -> RequestId | None:
    """The ``id`` of a malformed frame when it can still be read, else None.

    Of a frame nested deeper than MAX_NESTING_DEPTH, only an id that comes
    before the too-deep value can be read (the same for every refusal).
    """
    text = _text(raw)
    return _id_before_too_deep(text) if too_deep(text) else _decoded_id(text)


def _decoded_id(text: str) -> RequestId | None:
    try:
        rid = _id_decoder.decode(text).id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # RecursionError: only a caller already near the end of its stack sees it here
    if isinstance(rid, str) and len(rid) > 64:
        return None
    return rid


def decode_request(raw: bytes | str) -> AnyRequest:
    """Validate one client frame; raise FrameError with a precise message otherwise."""
    try:
        request: AnyRequest = _request_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise _refusal(raw, exc) from None
    if isinstance(request.id, str) and len(request.id) > 64:
        raise FrameError(None, ErrorCode.BAD_REQUEST, "id: longer than 64 characters")
    # Only a frame with an escape (a backslash) can hold a control character: see _check_send.
    if request.__class__ is MessageSend and ("\\" in raw if isinstance(raw, str) else b"\\" in raw):
        _check_send(_text(raw), request)
    return request


# Control characters in message.send (frames.CODEC_CHECKED_PATTERNS). msgspec
# refuses raw control characters in JSON strings, so one can only come from
# an escape: a frame without a backslash is clean, and of the escapes only
# these make a control character other than tab and line feed.
_SEND_FIELD_FORBIDDEN = re.compile(r"[\x00-\x1f]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f]")
_CONTROL_ESCAPE = re.compile(r"\\(?:u00[01]|[bfr])")  # one regex scan beats five substring scans


def _check_send(text: str, request: MessageSend) -> None:
    """Refuse control characters in a message.send whose frame holds an escape."""
    # isprintable() is False for every control character (and a few others): a fast pass first.
    client_msg_id = request.client_msg_id
    if not client_msg_id.isprintable() and _SEND_FIELD_FORBIDDEN.search(client_msg_id):
        rule = PATTERN_RULES[SINGLE_LINE_PATTERN]
        raise FrameError(request.id, ErrorCode.BAD_REQUEST, f"Expected `str` {rule} - at `$.client_msg_id`")
    if _CONTROL_ESCAPE.search(text) and _TEXT_FORBIDDEN.search(request.text):
        rule = PATTERN_RULES[MESSAGE_TEXT_PATTERN]
        raise FrameError(request.id, ErrorCode.BAD_REQUEST, f"Expected `str` {rule} - at `$.text`")


def _refusal(raw: bytes | str, exc: Exception) -> FrameError:
    """The bad_request a frame that failed to decode gets: too deep first, then what msgspec said."""
    text = _text(raw)
    if too_deep(text):
        return FrameError(
            _id_before_too_deep(text),
            ErrorCode.BAD_REQUEST,
            f"arrays and objects nested deeper than {MAX_NESTING_DEPTH} levels",
        )
    if isinstance(exc, msgspec.ValidationError):
        return FrameError(_decoded_id(text), ErrorCode.BAD_REQUEST, _describe(exc))
    # A DecodeError; or a RecursionError of a frame within the depth limit, which only a
    # caller already near the end of its stack could see: refused all the same.
    return FrameError(None, ErrorCode.BAD_REQUEST, f"not valid JSON: {exc}")


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Expected `object`, got"):
        return "a frame must be a JSON object: " + text
    if text.startswith("Invalid value") and "`$.type`" in text:
        return "unknown request type: " + text
    if "matching regex" in text:
        for pattern, rule in PATTERN_RULES.items():
            text = text.replace(f"matching regex {pattern!r}", rule)
    return text


def encode(frame: msgspec.Struct) -> bytes:
    """JSON bytes of one server or client frame."""
    return _encoder.encode(frame)


def encode_result(request_id: RequestId, result: Any) -> bytes:
    return _encoder.encode(ResultFrame(id=request_id, result=result))


def encode_error(request_id: RequestId | None, code: ErrorCode, message: str) -> bytes:
    return _encoder.encode(ErrorFrame(id=request_id, error=ErrorBody(code=code.value, message=message)))


def decode_server_frame(raw: bytes | str) -> AnyServerFrame:
    """Decode a frame sent by the server (used by clients and tests).

    Raises msgspec.ValidationError for JSON that is not a server frame and
    msgspec.DecodeError for a frame that is not JSON, or that nests deeper
    than MAX_NESTING_DEPTH (the server never sends one, PROTOCOL.md §1):
    never RecursionError, so a hostile server cannot kill a client's reader
    with deep JSON. As for requests, the depth is measured only once the
    decode has failed: a frame that decodes costs nothing more.
    """
    try:
        frame: AnyServerFrame = _server_frame_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        if too_deep(_text(raw)):
            raise msgspec.DecodeError(f"arrays and objects nested deeper than {MAX_NESTING_DEPTH} levels") from None
        if isinstance(exc, RecursionError):
            # Within the limit: only a caller already near the end of its stack sees this.
            raise msgspec.DecodeError(f"not decodable at this stack depth: {exc}") from None
        raise
    return frame


def websocket_text_frame(payload: bytes) -> bytes:
    """The complete RFC 6455 text frame a server sends for ``payload``.

    Server-to-client frames are never masked, so the same bytes go to every
    recipient: fan-out frames an event once and writes these bytes to each
    connection. Compression is off, so no extension touches the payload.
    """
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload
