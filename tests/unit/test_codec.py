"""protocol.codec: the JSON encoding of frames and the prebuilt WebSocket text
frame the fan-out writes, checked by decoding the bytes with websockets' own
sans-I/O parser (a client-side Protocol fed the bytes, as a browser reads them)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.streams import StreamReader

from hubbub.protocol import codec, frames
from hubbub.protocol.errors import ErrorCode


def client_reads(data: bytes) -> list[Frame]:
    """What a WebSocket client's protocol makes of ``data`` from the server."""
    client = Protocol(Side.CLIENT, max_size=None)
    client.receive_data(data)
    assert client.data_to_send() == []  # no protocol error, so no close frame in reply
    events = client.events_received()
    assert all(isinstance(e, Frame) for e in events)
    return [e for e in events if isinstance(e, Frame)]


def parse_one(data: bytes) -> tuple[Frame, bytes]:
    """websockets.frames.Frame.parse on ``data``: the frame and what is left over."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert isinstance(frame, Frame)
    return frame, bytes(reader.buffer)


@pytest.mark.parametrize(
    ("length", "header_bytes"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (70000, 10)],
)
def test_the_header_length_field_switches_at_126_and_65536_bytes(length: int, header_bytes: int) -> None:
    payload = b"x" * length
    wire = codec.websocket_text_frame(payload)
    assert len(wire) == header_bytes + length
    assert wire[0] == 0x81  # FIN + text, no RSV bits
    assert wire[1] & 0x80 == 0  # a server never masks
    frame, rest = parse_one(wire)
    assert (frame.opcode, frame.fin, frame.data, rest) == (Opcode.TEXT, True, payload, b"")
    assert frame.rsv1 is frame.rsv2 is frame.rsv3 is False


@pytest.mark.parametrize("length", [125, 126, 65535, 65536])
def test_the_extended_length_uses_the_shortest_form_rfc_6455_allows(length: int) -> None:
    wire = codec.websocket_text_frame(b"a" * length)
    if length < 126:
        assert wire[1] == length
    elif length < 65536:
        assert wire[1] == 126 and int.from_bytes(wire[2:4], "big") == length
    else:
        assert wire[1] == 127 and int.from_bytes(wire[2:10], "big") == length


def test_frames_written_back_to_back_are_read_as_separate_messages() -> None:
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65536, "\u00e9t\u00e9 \U0001f389".encode()]
    received = client_reads(b"".join(codec.websocket_text_frame(p) for p in payloads))
    assert [(f.opcode, f.fin, f.data) for f in received] == [(Opcode.TEXT, True, p) for p in payloads]


@given(st.text(max_size=300).map(str.encode))
def test_any_utf8_payload_arrives_intact(payload: bytes) -> None:
    (frame,) = client_reads(codec.websocket_text_frame(payload))
    assert frame.opcode == Opcode.TEXT
    assert frame.data == payload


@given(st.integers(min_value=0, max_value=70_000))
def test_the_frame_length_always_matches_the_header(length: int) -> None:
    wire = codec.websocket_text_frame(b"z" * length)
    frame, rest = parse_one(wire)
    assert len(frame.data) == length and rest == b""


def message(text: str, seq: int = 1) -> frames.Message:
    return frames.Message(
        id="m1", conversation_id=3, seq=seq, sender_id=4, text=text, client_msg_id="c1", ts=17, rev=seq
    )


def test_encode_writes_the_tag_and_every_field() -> None:
    encoded = codec.encode(frames.MessageNew(message=message("hi")))
    assert msgspec.json.decode(encoded) == {
        "type": "message.new",
        "message": {
            "id": "m1",
            "conversation_id": 3,
            "seq": 1,
            "sender_id": 4,
            "text": "hi",
            "client_msg_id": "c1",
            "ts": 17,
            "rev": 1,
        },
    }


@given(text=st.text(max_size=200), seq=st.integers(min_value=1, max_value=2**53))
def test_an_encoded_server_frame_decodes_back_to_itself(text: str, seq: int) -> None:
    frame = frames.MessageNew(message=message(text, seq))
    decoded = codec.decode_server_frame(codec.encode(frame))
    assert decoded == frame


@pytest.mark.parametrize("request_id", [7, "req-7", None])
def test_error_replies_keep_the_request_id_and_code(request_id: int | str | None) -> None:
    decoded = codec.decode_server_frame(codec.encode_error(request_id, ErrorCode.RATE_LIMITED, "slow down"))
    assert decoded == frames.ErrorFrame(id=request_id, error=frames.ErrorBody(code="rate_limited", message="slow down"))


def test_result_replies_carry_any_result_struct() -> None:
    decoded = codec.decode_server_frame(codec.encode_result("r1", frames.Empty()))
    assert isinstance(decoded, frames.ResultFrame)
    assert (decoded.id, decoded.result) == ("r1", {})


def test_a_request_round_trips_through_the_request_decoder() -> None:
    request = frames.Ping(id=5)
    assert codec.decode_request(codec.encode(request)) == request


@pytest.mark.parametrize(
    ("raw", "request_id", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"type": "no.such", "id": 3}', 3, "unknown request type"),
        (b'{"type": "ping", "id": "' + b"x" * 65 + b'"}', None, "longer than 64"),
    ],
)
def test_a_bad_request_names_its_problem_and_keeps_a_readable_id(
    raw: bytes, request_id: int | None, fragment: str
) -> None:
    with pytest.raises(codec.FrameError) as caught:
        codec.decode_request(raw)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.request_id == request_id
    assert fragment in caught.value.message


# ---------------------------------------------------------------------------
# Server frames nested too deep (what a client's reader decodes)


def deep_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_objects(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"result","id":"r1","result":' + deep_arrays(100_000) + "}",  # deeper than any stack
        '{"type":"result","id":"r1","result":' + deep_objects(100_000) + "}",
        '{"type":"presence","presence":' + deep_arrays(1_000) + "}",  # a typed field: refused by the schema
        deep_arrays(100_000),  # not even an object
    ],
    ids=["arrays-in-result", "objects-in-result", "arrays-in-typed-field", "bare-arrays"],
)
def test_a_server_frame_nested_too_deep_is_a_decode_error_naming_the_limit(raw: str) -> None:
    for data in (raw, raw.encode()):
        with pytest.raises(msgspec.DecodeError, match=f"nested deeper than {frames.MAX_NESTING_DEPTH} levels"):
            codec.decode_server_frame(data)


def test_a_server_frame_at_the_nesting_limit_decodes() -> None:
    # The frame's own object is level 1, so its result may nest MAX_NESTING_DEPTH - 1 deep.
    raw = '{"type":"result","id":"r1","result":' + deep_arrays(frames.MAX_NESTING_DEPTH - 1) + "}"
    frame = codec.decode_server_frame(raw)
    assert isinstance(frame, frames.ResultFrame) and frame.id == "r1"


def test_other_undecodable_server_frames_keep_msgspecs_errors() -> None:
    with pytest.raises(msgspec.DecodeError):
        codec.decode_server_frame('{"type":"result",')
    with pytest.raises(msgspec.ValidationError):
        codec.decode_server_frame('{"type":"result","id":[1]}')
