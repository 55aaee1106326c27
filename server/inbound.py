"""The receive path's own reader for the one frame every request comes in:
a complete, masked, final text frame.

websockets' sans-I/O parser is a chain of Python generators (``Frame.parse``
and its ``read_exact`` steps, a ``Frame`` dataclass and its checks per frame):
15-20 Python calls per received frame, for each ``message.send`` (BENCHMARKS.md,
"The send path's CPU"). ``scan`` finds the frames' boundaries in a chunk from
their headers; the connection (server/connection.py) unmasks requests with
websockets' own C ``apply_mask`` and hands them on. A chunk with anything else
(a control, binary or fragmented frame, reserved bits) goes to websockets,
which keeps every rule it had (pongs, the closing handshake, 1002, 1009,
discarding after a close): it is given **whole frames only**, the start of a
frame still arriving waits for its end, so websockets always sits at a frame
boundary and a later chunk of requests can skip it. The one exception is a
header websockets refuses at once (unmasked, an unknown opcode, over the size
limit): everything goes to it, and it fails the connection as before.
"""

from __future__ import annotations

FIN_TEXT = 0x81
"""First header byte of a final text frame without reserved bits (no extension is negotiated)."""
MASKED = 0x80
"""Second header byte's mask bit: every client frame carries it (RFC 6455 5.3)."""
_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})
"""The opcodes RFC 6455 defines: websockets refuses any other at its header (1002)."""

Span = tuple[int, int, int]
"""(masking key's offset, payload's start, payload's end) of one request frame in a chunk."""


def scan(data: bytes | bytearray, limit: int) -> tuple[list[Span], int, bool]:
    """The complete frames at the start of ``data``: the spans of the requests
    among them, the offset after the last of them, and whether they are all
    requests (masked final text frames of at most ``limit`` bytes), as the start
    of the frame after them is too (or its header is not all there yet).

    Not all requests: the spans are incomplete and the bytes up to the offset go
    to websockets. A header websockets refuses at once puts the offset at the
    end of ``data``: all of it goes to websockets, which fails the connection.
    """
    spans: list[Span] = []
    simple = True
    n = len(data)
    pos = 0
    while n - pos >= 2:
        b0 = data[pos]
        length = data[pos + 1]
        if b0 != FIN_TEXT:
            simple = False
            if b0 & 0x0F not in _OPCODES or not length & MASKED:
                return spans, n, False
        elif not length & MASKED:
            return spans, n, False
        length &= 0x7F
        key = pos + 2
        if length == 126:
            if n - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            key = pos + 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            key = pos + 10
        if length > limit:
            return spans, n, False  # websockets refuses it (1009) as soon as it has the header
        end = key + 4 + length
        if end > n:
            break
        if simple:
            spans.append((key, key + 4, end))
        pos = end
    return spans, pos, simple
