"""server.inbound.scan: where the requests in a chunk start and end, and what
of a chunk it leaves to websockets."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from hubbub.server.inbound import scan

LIMIT = 1 << 20


def client() -> ClientProtocol:
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    protocol.state = State.OPEN  # frames only: no handshake
    return protocol


def client_frames(*texts: bytes, fin: bool = True) -> bytes:
    """Masked text frames as a client sends them (websockets' own client protocol)."""
    protocol = client()
    for payload in texts:
        protocol.send_text(payload, fin=fin)
    return b"".join(protocol.data_to_send())


def unmasked(spans: list[tuple[int, int, int]], data: bytes) -> list[bytes]:
    out = []
    for key, start, stop in spans:
        mask = data[key:start]
        out.append(bytes(b ^ mask[i % 4] for i, b in enumerate(data[start:stop])))
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 200, 65535, 65536, 70000])
def test_every_length_form_is_found_whole(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = client_frames(payload, b"next")
    spans, end, requests_only = scan(data, LIMIT)
    assert requests_only and end == len(data) and unmasked(spans, data) == [payload, b"next"]


def test_a_frame_still_arriving_waits_for_the_next_chunk() -> None:
    data = client_frames(b"one", b"x" * 300)
    first_end = len(client_frames(b"one"))
    for cut in range(first_end, len(data)):
        spans, end, requests_only = scan(data[:cut], LIMIT)
        assert requests_only and end == first_end and unmasked(spans, data) == [b"one"]


def test_other_frames_go_to_websockets_whole_and_a_frame_still_arriving_waits() -> None:
    protocol = client()
    protocol.send_ping(b"p")
    ping = b"".join(protocol.data_to_send())
    protocol.send_binary(b"b")
    binary = b"".join(protocol.data_to_send())
    text = client_frames(b"t")
    fragment = client_frames(b"start", fin=False)
    for chunk in (text + ping, ping + text, text + binary, fragment, b"\xc1\x81abcdx"):  # 0xc1: RSV1
        _, end, requests_only = scan(chunk, LIMIT)
        assert not requests_only and end == len(chunk)
    # A ping still arriving after a request: the request goes to websockets, the ping's start waits.
    _, end, requests_only = scan(text + ping[:3], LIMIT)
    assert not requests_only and end == len(text)
    _, end, requests_only = scan(ping + text[:3], LIMIT)
    assert not requests_only and end == len(ping)


def test_a_header_websockets_refuses_at_once_sends_everything_to_it() -> None:
    text = client_frames(b"t")
    over = client_frames(b"x" * 101)[:4]
    for chunk in (b"\x81\x03ab", text + b"\x83\x80", text + over):  # unmasked; opcode 3; over the limit
        assert scan(chunk, 100)[1:] == (len(chunk), False)
    assert scan(client_frames(b"x" * 100), 100)[2]


def test_the_start_of_a_header_is_not_yet_anything() -> None:
    assert scan(b"", 100) == ([], 0, True)
    assert scan(b"\x81", 100) == ([], 0, True)
    assert scan(client_frames(b"x" * 300)[:3], LIMIT) == ([], 0, True)
