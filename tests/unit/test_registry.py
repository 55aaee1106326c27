"""server.registry.Registry: routing state, the broker interest it reports, and
fan-out, with fake recipients and a broker that records watch/unwatch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hubbub.protocol.codec import websocket_text_frame
from hubbub.server.broker import Event, InProcessBroker, MembershipChange
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Registry


@dataclass(eq=False)
class FakeConnection:
    user_id: int
    conversations: set[int] = field(default_factory=set)
    frames: list[bytes] = field(default_factory=list)

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def end_session_before(self, generation: int, *, disabled: bool = False) -> bool:
        raise AssertionError("no test here ends sessions")

    @property
    def outbound(self) -> FakeConnection:
        return self


class RecordingBroker(InProcessBroker):
    """Records watch and unwatch; delivers nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[int], list[int]]] = []

    def publish(self, event: Event) -> None:
        pass

    def publish_membership(self, change: MembershipChange) -> None:
        pass

    def watch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        self.calls.append(("watch", sorted(conversations), sorted(users)))

    def unwatch(self, conversations: Iterable[int] = (), users: Iterable[int] = ()) -> None:
        self.calls.append(("unwatch", sorted(conversations), sorted(users)))

    def take(self) -> list[tuple[str, list[int], list[int]]]:
        calls, self.calls = self.calls, []
        return calls


def make() -> tuple[Registry, RecordingBroker, Metrics]:
    broker = RecordingBroker()
    metrics = Metrics()
    return Registry(broker, metrics), broker, metrics


def event(
    payload: bytes = b'{"type":"x"}',
    *,
    conversations: Sequence[int] = (),
    users: Sequence[int] = (),
    event_type: str = "message.new",
) -> Event:
    return Event(payload, event_type, conversations=tuple(conversations), users=tuple(users))


def test_the_first_connection_of_a_user_and_the_first_member_of_a_conversation_start_watching() -> None:
    registry, broker, _ = make()
    phone = FakeConnection(user_id=1)
    registry.add(phone, [10, 20])
    assert broker.take() == [("watch", [], [1]), ("watch", [10, 20], [])]
    assert phone.conversations == {10, 20}
    assert registry.has_local_members(10) and registry.has_local_members(20)
    assert not registry.has_local_members(30)
    assert registry.connections_of(1) == 1


def test_further_interest_in_a_watched_topic_is_not_reported_again() -> None:
    registry, broker, _ = make()
    registry.add(FakeConnection(user_id=1), [10])
    broker.take()
    registry.add(FakeConnection(user_id=1), [10, 20])  # a second device of the same user
    registry.add(FakeConnection(user_id=2), [10])
    assert broker.take() == [("watch", [20], []), ("watch", [], [2])]
    assert registry.connections_of(1) == 2


def test_only_the_last_device_and_the_last_member_stop_watching() -> None:
    registry, broker, _ = make()
    phone, laptop, bob = FakeConnection(1), FakeConnection(1), FakeConnection(2)
    registry.add(phone, [10, 20])
    registry.add(laptop, [10])
    registry.add(bob, [20])
    broker.take()

    registry.remove(phone)
    assert broker.take() == []  # laptop keeps user 1 and conversation 10; bob keeps 20
    registry.remove(laptop)
    assert broker.take() == [("unwatch", [], [1]), ("unwatch", [10], [])]
    registry.remove(bob)
    assert broker.take() == [("unwatch", [], [2]), ("unwatch", [20], [])]
    assert not registry.has_local_members(10) and not registry.has_local_members(20)
    assert registry.connections_of(1) == 0


def test_removing_a_connection_twice_or_one_never_added_changes_nothing() -> None:
    registry, broker, _ = make()
    kept = FakeConnection(1)
    registry.add(kept, [10])
    broker.take()
    stranger = FakeConnection(1, conversations={10})
    registry.remove(stranger)
    registry.remove(kept)
    registry.remove(kept)
    assert broker.take() == [("unwatch", [], [1]), ("unwatch", [10], [])]


def test_a_message_reaches_every_member_connection_as_one_prebuilt_frame() -> None:
    registry, _, metrics = make()
    a1, a2, b, outsider = FakeConnection(1), FakeConnection(1), FakeConnection(2), FakeConnection(3)
    registry.add(a1, [10])
    registry.add(a2, [10])
    registry.add(b, [10])
    registry.add(outsider, [99])
    payload = b'{"type":"message.new"}'
    registry.deliver(event(payload, conversations=[10]))
    expected = websocket_text_frame(payload)
    assert a1.frames == a2.frames == b.frames == [expected]
    assert a1.frames[0] is b.frames[0]  # framed once for all
    assert outsider.frames == []
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 3
    assert metrics.registry.get_sample_value("hubbub_frames_out_total", {"type": "message.new"}) == 3


def test_a_delivery_with_no_local_target_sends_nothing() -> None:
    registry, _, metrics = make()
    registry.add(FakeConnection(1), [10])
    registry.deliver(event(conversations=[11], users=[2]))
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 0


def test_conversations_and_users_together_reach_each_connection_once() -> None:
    registry, _, metrics = make()
    alice = FakeConnection(1)
    bob = FakeConnection(2)
    carol = FakeConnection(3)
    registry.add(alice, [10, 20])
    registry.add(bob, [20])
    registry.add(carol, [30])
    registry.deliver(event(b"{}", conversations=[10, 20], users=[1, 2, 3], event_type="user.updated"))
    assert len(alice.frames) == 1  # member of both conversations and addressed as a user
    assert len(bob.frames) == 1
    assert len(carol.frames) == 1  # addressed as a user only
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 3


def test_an_event_except_a_user_reaches_every_other_member_and_none_of_that_users_devices() -> None:
    registry, _, metrics = make()
    phone, laptop, bob, carol = FakeConnection(1), FakeConnection(1), FakeConnection(2), FakeConnection(3)
    for connection in (phone, laptop, bob, carol):
        registry.add(connection, [10])
    payload = b'{"type":"typing"}'
    registry.deliver(Event(payload, "typing", (10,), except_user=1))
    assert phone.frames == laptop.frames == []
    assert bob.frames == carol.frames == [websocket_text_frame(payload)]
    assert metrics.registry.get_sample_value("hubbub_deliveries_total") == 2
    assert metrics.registry.get_sample_value("hubbub_frames_out_total", {"type": "typing"}) == 2


def test_users_alone_reach_all_their_devices() -> None:
    registry, _, _ = make()
    phone, laptop, other = FakeConnection(1), FakeConnection(1), FakeConnection(2)
    for connection in (phone, laptop, other):
        registry.add(connection, [])
    registry.deliver(event(b"{}", users=[1], event_type="conversation.joined"))
    assert len(phone.frames) == len(laptop.frames) == 1
    assert other.frames == []


def test_a_join_routes_the_conversation_to_every_device_of_the_user() -> None:
    registry, broker, _ = make()
    member, phone, laptop = FakeConnection(1), FakeConnection(2), FakeConnection(2)
    registry.add(member, [10])
    registry.add(phone, [])
    registry.add(laptop, [])
    broker.take()
    registry.join([2], 10)
    assert phone.conversations == laptop.conversations == {10}
    assert broker.take() == []  # conversation 10 was already watched here
    registry.deliver(event(b"{}", conversations=[10], event_type="member.joined"))
    assert len(member.frames) == len(phone.frames) == len(laptop.frames) == 1


def test_a_join_into_a_conversation_new_to_this_instance_starts_watching_it() -> None:
    registry, broker, _ = make()
    joiner = FakeConnection(2)
    registry.add(joiner, [])
    broker.take()
    registry.join([2], 10)
    assert broker.take() == [("watch", [10], [])]
    assert registry.has_local_members(10)
    registry.deliver(event(b"{}", conversations=[10], event_type="member.joined"))
    assert len(joiner.frames) == 1


def test_a_join_of_users_without_a_connection_here_routes_nothing() -> None:
    registry, broker, _ = make()
    registry.add(FakeConnection(1), [])
    broker.take()
    registry.join([2, 3], 10)
    assert broker.take() == []
    assert not registry.has_local_members(10)


def test_a_leave_stops_routing_and_the_last_member_stops_watching() -> None:
    registry, broker, _ = make()
    leaver, stayer = FakeConnection(2), FakeConnection(3)
    registry.add(leaver, [10, 20])
    registry.add(stayer, [20])
    broker.take()
    registry.leave([2], 10)
    registry.leave([2], 20)
    registry.deliver(event(b"{}", conversations=[10, 20], event_type="member.left"))
    assert leaver.frames == []  # no longer a member of either when it was fanned out
    assert len(stayer.frames) == 1
    assert leaver.conversations == set()
    assert broker.take() == [("unwatch", [10], [])]
    assert registry.has_local_members(20) and not registry.has_local_members(10)


def test_a_leave_announced_to_the_user_still_reaches_them() -> None:
    registry, _, _ = make()
    leaver = FakeConnection(2)
    registry.add(leaver, [10])
    registry.leave([2], 10)
    registry.deliver(event(b"{}", users=[2], event_type="conversation.removed"))
    assert len(leaver.frames) == 1
    assert leaver.conversations == set()


@dataclass
class Forgetting:
    forgotten: list[list[int]] = field(default_factory=list)

    def forget(self, conversation_ids: Sequence[int]) -> None:
        self.forgotten.append(list(conversation_ids))


def test_the_unrouted_listener_hears_of_each_conversation_whose_last_local_member_went() -> None:
    registry, _, _ = make()
    listener = Forgetting()
    registry.tell_unrouted(listener)
    phone, laptop, bob = FakeConnection(1), FakeConnection(1), FakeConnection(2)
    registry.add(phone, [10, 20])
    registry.add(laptop, [10])
    registry.add(bob, [30])
    registry.remove(phone)  # 10 still has the laptop
    assert listener.forgotten == [[20]]
    registry.leave([1], 10)
    registry.leave([2], 30)
    assert listener.forgotten == [[20], [10], [30]]


def test_a_removed_connection_receives_nothing_more() -> None:
    registry, _, _ = make()
    gone, kept = FakeConnection(1), FakeConnection(2)
    registry.add(gone, [10])
    registry.add(kept, [10])
    registry.remove(gone)
    registry.deliver(event(conversations=[10], users=[1]))
    assert gone.frames == []
    assert len(kept.frames) == 1
