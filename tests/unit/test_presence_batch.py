"""server.presence_batch: presence changes coalesced per connection into
presence.batch frames, through the registry's fan-out, with fake connections."""

from __future__ import annotations

import asyncio

import msgspec

from hubbub.protocol import codec, frames
from hubbub.server.broker import Event
from hubbub.server.metrics import Metrics
from hubbub.server.presence_batch import batch_payload, change_item
from hubbub.server.registry import Registry
from tests.unit.test_registry import FakeConnection, RecordingBroker


def change(user_id: int, status: frames.PresenceStatus, ts: int = 1) -> Event:
    presence = frames.Presence(user_id=user_id, status=status, last_seen=ts)
    payload = codec.encode(frames.PresenceChanged(presence=presence))
    return Event(payload, "presence", conversations=(10,), users=(user_id,))


def batches(connection: FakeConnection) -> list[list[tuple[int, frames.PresenceStatus]]]:
    """Each frame the connection got, as the (user, status) changes it carried."""
    found = []
    for frame in connection.frames:
        decoded = codec.decode_server_frame(frame[2:] if len(frame) - 2 < 126 else frame[4:])
        assert isinstance(decoded, frames.PresenceBatch)
        found.append([(p.user_id, p.status) for p in decoded.presence])
    return found


def make(window: float) -> tuple[Registry, Metrics]:
    metrics = Metrics()
    return Registry(RecordingBroker(), metrics, presence_batch_seconds=window), metrics


def test_the_item_is_the_presence_object_of_the_change() -> None:
    payload = change(7, "offline", 123).payload
    assert msgspec.json.decode(change_item(payload)) == {"user_id": 7, "status": "offline", "last_seen": 123}
    spaced = b'{ "type": "presence", "presence": {"user_id": 7, "status": "offline", "last_seen": 123} }'
    assert change_item(spaced) == change_item(payload)
    batch = codec.decode_server_frame(batch_payload([change_item(payload)] * 2))
    assert batch == frames.PresenceBatch(presence=[frames.Presence(user_id=7, status="offline", last_seen=123)] * 2)


def test_without_a_window_every_change_is_a_batch_of_one_at_once() -> None:
    registry, metrics = make(0.0)
    alice, bob = FakeConnection(1), FakeConnection(2)
    registry.add(alice, [10])
    registry.add(bob, [10])
    registry.deliver(change(1, "online"))
    registry.deliver(change(2, "online"))
    assert batches(alice) == [[(1, "online")], [(2, "online")]]
    assert batches(bob) == [[(1, "online")], [(2, "online")]]
    assert metrics.registry.get_sample_value("hubbub_frames_out_total", {"type": "presence.batch"}) == 4


async def test_changes_within_the_window_go_out_as_one_frame_in_order_nothing_merged() -> None:
    registry, metrics = make(0.05)
    room = [FakeConnection(uid) for uid in range(1, 6)]
    outsider = FakeConnection(99)
    for connection in room:
        registry.add(connection, [10])
    registry.add(outsider, [77])
    for connection in room:
        registry.deliver(change(connection.user_id, "online"))
    registry.deliver(change(3, "offline"))
    registry.deliver(change(3, "online"))
    assert all(connection.frames == [] for connection in room)  # waiting out the window
    await asyncio.sleep(0.1)  # the window itself is what is tested: nothing to await but time
    came = [(uid, "online") for uid in range(1, 6)]
    expected = [[*came, (3, "offline"), (3, "online")]]
    for connection in room:
        assert batches(connection) == expected
    assert room[0].frames[0] is room[4].frames[0]  # one room, one framing
    assert outsider.frames == []
    assert metrics.registry.get_sample_value("hubbub_frames_out_total", {"type": "presence.batch"}) == 5
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 5

    registry.deliver(change(4, "offline"))
    registry.presence.flush()  # a flush does not wait for the timer
    assert [batches(c)[-1] for c in room] == [[(4, "offline")]] * 5


async def test_a_connection_that_leaves_gets_nothing_more() -> None:
    registry, _ = make(10.0)
    alice, bob = FakeConnection(1), FakeConnection(2)
    registry.add(alice, [10])
    registry.add(bob, [10])
    registry.deliver(change(2, "offline"))
    registry.remove(bob)
    registry.presence.flush()
    assert batches(alice) == [[(2, "offline")]]
    assert bob.frames == []
    registry.deliver(change(1, "offline"))
    registry.presence.close()  # shutting down: the timer goes, nothing is written
    assert batches(alice) == [[(2, "offline")]]
