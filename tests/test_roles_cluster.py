"""Channel administration across server instances: a member kicked on one
instance stops receiving the channel at once on the other (the message sent
right after the kick reaches the other members there, never the kicked one);
role changes and channel updates reach members on every instance; an
archive made on one instance refuses the next send on the other; two owners
on two instances demoting each other at once leave one owner.

Real `hubbub serve` processes on PostgreSQL, routed through Redis (tests/cluster.py).
"""

from __future__ import annotations

import asyncio

from hubbub.protocol import frames
from hubbub.protocol.client import ServerError
from hubbub.protocol.errors import ErrorCode
from tests.cluster import Cluster, Peer
from tests.conftest import unique_name
from tests.helpers import expect_error

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)


async def channel_of(owner: Peer, *members: Peer) -> int:
    channel: frames.ConversationResult = await owner.call("channel.create", name=unique_name("room"))
    for member in members:
        await owner.call("channel.invite", channel_id=channel.conversation.id, user_id=member.user_id)
    return channel.conversation.id


async def test_a_member_kicked_on_one_instance_gets_nothing_more_on_the_other(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    for round_ in range(3):
        bob = await cluster.connect(b, name=f"bob{round_}")
        carol = await cluster.connect(b, name=f"carol{round_}")
        await kick_then_send(cluster, alice, bob, carol, f"right-after-{round_}")


async def kick_then_send(cluster: Cluster, alice: Peer, bob: Peer, carol: Peer, text: str) -> None:
    """Alice on A kicks bob on B and sends at once; carol, also on B, witnesses the delivery."""
    cid = await channel_of(alice, bob, carol)
    await bob.expect(frames.ConversationAdded, lambda e: e.conversation.id == cid)
    await carol.expect(frames.ConversationAdded, lambda e: e.conversation.id == cid)
    await cluster.settle()

    await alice.call("channel.kick", channel_id=cid, user_id=bob.user_id)
    sent = await alice.send(cid, text)

    await carol.has_messages([sent.id])  # delivered on B ...
    removed = await bob.expect(frames.ConversationRemoved, lambda e: e.conversation_id == cid)
    await bob.expect(frames.MemberRemoved, lambda e: e.conversation_id == cid and e.by == alice.user_id)
    # ... and bob, on B too, saw the channel go and nothing of it after: a ping
    # of his own answered means everything B sent him before has arrived.
    await bob.call("ping")
    assert sent.id not in bob.messages
    after_removal = bob.events[bob.events.index(removed) :]
    assert not [e for e in after_removal if isinstance(e, frames.MessageNew) and e.message.conversation_id == cid]
    await expect_error(
        bob.client, ErrorCode.FORBIDDEN, "message.send", conversation_id=cid, text="x", client_msg_id="k"
    )


async def test_role_changes_and_updates_reach_members_on_every_instance(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    cid = await channel_of(alice, bob)
    await bob.expect(frames.ConversationAdded, lambda e: e.conversation.id == cid)
    await cluster.settle()

    await alice.call("channel.set_role", channel_id=cid, user_id=bob.user_id, role="admin")
    changed = await bob.expect(frames.MemberRoleChanged, lambda e: e.conversation_id == cid)
    assert (changed.user_id, changed.role, changed.by) == (bob.user_id, "admin", alice.user_id)

    # Bob, now an admin, changes the topic from B; alice on A hears of it.
    await bob.call("channel.update", channel_id=cid, topic="from b")
    updated = await alice.expect(frames.ChannelUpdated, lambda e: e.conversation.id == cid)
    assert updated.conversation.topic == "from b" and updated.by == bob.user_id

    # B knows the channel is not archived (bob sent into it); an archive on A reaches B
    # with its channel.updated, and from then on B refuses bob's sends.
    await bob.send(cid, "before the archive")
    await alice.call("channel.update", channel_id=cid, archived=True)
    await bob.expect(frames.ChannelUpdated, lambda e: e.conversation.id == cid and e.conversation.archived)
    await expect_error(bob.client, ErrorCode.ARCHIVED, "message.send", conversation_id=cid, text="x", client_msg_id="z")
    since = len(bob.events)  # the topic's channel.updated above also says archived: false
    await alice.call("channel.update", channel_id=cid, archived=False)
    await bob.expect(frames.ChannelUpdated, lambda e: e.conversation.id == cid and not e.conversation.archived, since)
    await bob.send(cid, "after the unarchive")


async def test_two_owners_on_two_instances_demoting_each_other_leave_one(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    for round_ in range(3):
        alice = await cluster.connect(a, name=f"alice{round_}")
        bob = await cluster.connect(b, name=f"bob{round_}")
        cid = await channel_of(alice, bob)
        await alice.call("channel.set_role", channel_id=cid, user_id=bob.user_id, role="owner")

        outcomes = await asyncio.gather(demote(alice, bob, cid), demote(bob, alice, cid))
        members: frames.Members = await alice.call("channel.members", channel_id=cid)
        assert sorted(m.role for m in members.members) == ["member", "owner"], outcomes
        assert "done" in outcomes


async def demote(actor: Peer, target: Peer, channel_id: int) -> str:
    try:
        await actor.call("channel.set_role", channel_id=channel_id, user_id=target.user_id, role="member")
    except ServerError as exc:
        return exc.code
    return "done"


async def test_a_group_dm_renamed_on_one_instance_and_errors_on_the_other(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    carol = await cluster.connect(b, name="carol")
    dm: frames.ConversationResult = await alice.call("dm.open", user_ids=[bob.user_id, carol.user_id])
    dm_id = dm.conversation.id
    for peer in (bob, carol):
        await peer.expect(frames.ConversationAdded, lambda e: e.conversation.id == dm_id)
    await cluster.settle()

    await carol.call("dm.rename", conversation_id=dm_id, name="Launch crew")
    renamed = await alice.expect(frames.DmUpdated, lambda e: e.conversation.id == dm_id)
    assert renamed.conversation.name == "Launch crew" and renamed.by == carol.user_id
    listed: frames.ConversationList = await alice.call("dm.list")
    assert [c.name for c in listed.conversations if c.id == dm_id] == ["Launch crew"]

    # The rules hold whichever instance is asked: a plain member on B, the last owner on B.
    cid = await channel_of(alice, bob)
    await expect_error(bob.client, ErrorCode.FORBIDDEN, "channel.kick", channel_id=cid, user_id=alice.user_id)
    await alice.call("channel.set_role", channel_id=cid, user_id=bob.user_id, role="owner")
    await alice.call("channel.leave", channel_id=cid)
    await bob.expect(frames.MemberLeft, lambda e: e.conversation_id == cid and e.user_id == alice.user_id)
    await expect_error(
        bob.client, ErrorCode.CONFLICT, "channel.set_role", channel_id=cid, user_id=bob.user_id, role="admin"
    )
