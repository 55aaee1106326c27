"""The fan-out bench (loadtest/fanoutbench.py) measures the real delivery path:
every connection gets every message, in seq order, as one text frame per write."""

from __future__ import annotations

from hubbub.loadtest import fanoutbench
from hubbub.protocol import codec, frames


async def test_every_recipient_gets_every_message_in_order_one_write_each() -> None:
    delivered, transports = await fanoutbench.run(messages=20, recipients=5, size=10)
    assert delivered == 100
    assert len(transports) == 5
    for transport in transports:
        assert len(transport.frames) == 20  # one write per loop turn, one frame in each
        seqs = []
        for data in transport.frames:
            header = 2 if data[1] < 126 else 4  # unmasked: no key; 126: a 16-bit length follows
            payload = data[header:]
            assert data == codec.websocket_text_frame(payload)  # a final, unmasked text frame
            frame = codec.decode_server_frame(payload)
            assert isinstance(frame, frames.MessageNew)
            seqs.append(frame.message.seq)
        assert seqs == list(range(1, 21))
    assert len({bytes(t.frames[0]) for t in transports}) == 1  # framed once: the same bytes for all


def test_the_command_checks_its_own_count() -> None:
    assert fanoutbench.main(["--messages", "3", "--recipients", "2"]) == 0
