"""Turning bytes into frames and frames into bytes, with no I/O.

The server and the client both go through here, so validation and encoding
happen one way only.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from protocol.errors import ErrorCode
from protocol.frames import AnyRequest, AnyServerFrame, ErrorBody, ErrorFrame, RequestId, ResultFrame

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


def recover_request_id(raw: bytes | str) -> RequestId | None:
    """The ``id`` of a malformed frame when it can still be read, else None."""
    try:
        rid = _id_decoder.decode(raw).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(rid, str) and len(rid) > 64:
        return None
    return rid


def decode_request(raw: bytes | str) -> AnyRequest:
    """Validate one client frame; raise FrameError with a precise message otherwise."""
    try:
        request: AnyRequest = _request_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise FrameError(recover_request_id(raw), ErrorCode.BAD_REQUEST, _describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise FrameError(None, ErrorCode.BAD_REQUEST, f"not valid JSON: {exc}") from None
    if isinstance(request.id, str) and len(request.id) > 64:
        raise FrameError(None, ErrorCode.BAD_REQUEST, "id: longer than 64 characters")
    return request


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Expected `object`, got"):
        return "a frame must be a JSON object: " + text
    if text.startswith("Invalid value") and "`$.type`" in text:
        return "unknown request type: " + text
    return text


def encode(frame: msgspec.Struct) -> bytes:
    """JSON bytes of one server or client frame."""
    return _encoder.encode(frame)


def encode_result(request_id: RequestId, result: Any) -> bytes:
    return _encoder.encode(ResultFrame(id=request_id, result=result))


def encode_error(request_id: RequestId | None, code: ErrorCode, message: str) -> bytes:
    return _encoder.encode(ErrorFrame(id=request_id, error=ErrorBody(code=code.value, message=message)))


def decode_server_frame(raw: bytes | str) -> AnyServerFrame:
    """Decode a frame sent by the server (used by clients and tests)."""
    frame: AnyServerFrame = _server_frame_decoder.decode(raw)
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
