"""server.archived and its feed in server.catchup: what an instance knows of archived channels, and when it forgets."""

from __future__ import annotations

import msgspec

from hubbub.protocol import frames
from hubbub.server.archived import ArchivedChannels
from hubbub.server.broker import InProcessBroker, event_of
from hubbub.server.catchup import Catchup
from hubbub.server.metrics import Metrics
from hubbub.server.registry import Registry
from hubbub.storage.records import ConversationRecord

CHANNEL = ConversationRecord(id=7, kind="channel", name="general", topic="", private=False, created_by=1, created_at=1)
ARCHIVED = msgspec.structs.replace(CHANNEL, archived=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def test_a_channel_is_known_from_its_read_until_it_expires() -> None:
    clock = Clock()
    known = ArchivedChannels(ttl_ms=100, clock=clock)
    assert known.archived(7) is None
    known.learn(CHANNEL, known.epoch)
    assert known.archived(7) is False
    known.learn(ARCHIVED, known.epoch)
    assert known.archived(7) is True
    clock.now += 99
    assert known.archived(7) is True
    clock.now += 1
    assert known.archived(7) is None


def test_forgetting_one_or_all() -> None:
    known = ArchivedChannels()
    known.learn(CHANNEL, known.epoch)
    known.learn(msgspec.structs.replace(CHANNEL, id=8), known.epoch)
    known.forget([7, 99])
    assert (known.archived(7), known.archived(8)) == (None, False)
    known.forget_all()
    assert known.archived(8) is None


def test_a_read_begun_before_a_forget_is_not_learnt() -> None:
    known = ArchivedChannels()
    began = known.epoch
    known.forget([7])  # an archive's channel.updated passed while the read was on its way
    known.learn(CHANNEL, began)
    assert known.archived(7) is None
    known.learn(ARCHIVED, known.epoch)
    assert known.archived(7) is True


def catchup_with(known: ArchivedChannels) -> Catchup:
    metrics = Metrics()
    return Catchup(_NoLog(), Registry(InProcessBroker(), metrics), metrics, known)  # type: ignore[arg-type]


class _NoLog:
    """Catchup reads the log only to fill gaps, which these tests never make."""


def test_a_channel_updated_event_forgets_its_channel_and_others_do_not() -> None:
    known = ArchivedChannels()
    known.learn(CHANNEL, known.epoch)
    catchup = catchup_with(known)
    view = frames.Conversation(
        id=7,
        kind="channel",
        name="general",
        topic="",
        private=False,
        created_by=1,
        created_at=1,
        last_seq=0,
        member=True,
    )
    catchup.on_event(event_of(frames.MemberLeft(conversation_id=7, user_id=2), conversations=(7,)))
    assert known.archived(7) is False
    catchup.on_event(event_of(frames.ChannelUpdated(conversation=view, by=1), conversations=(7,)))
    assert known.archived(7) is None


def test_the_last_local_member_going_forgets_its_channel() -> None:
    known = ArchivedChannels()
    known.learn(CHANNEL, known.epoch)
    catchup_with(known).forget([7])
    assert known.archived(7) is None
