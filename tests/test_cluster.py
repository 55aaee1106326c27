"""Several `hubbub serve` processes routed through Redis, on one PostgreSQL.

Real processes, real Redis: the machine's shared Redis under a fresh
HUBBUB_REDIS_PREFIX per test, except the outage test, which starts, kills
and restarts a private redis-server of its own. Clients follow the
PROTOCOL.md §9 algorithm (deduplicate by message id, fill gaps by seq from
message.history); the assertions say what the cluster must deliver without
that help and what it may leave to it. The cluster and its clients are in
tests/cluster.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.exceptions import ConnectionClosed

from hubbub.protocol import frames
from hubbub.protocol.client import ServerError
from tests.cluster import HEARTBEAT_SECONDS, TTL_SECONDS, WAIT, Cluster, Peer, create_channel, full_history, send_many
from tests.helpers import presence_changes
from tests.redis_server import PrivateRedis

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, private_cluster, private_redis


# -- 1. cross-instance delivery ---------------------------------------------


PER_SENDER = 15


async def test_cross_instance_delivery_in_channel_and_dm(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    alice = await cluster.connect(a, name="alice")
    dave = await cluster.connect(a, name="dave")
    bob = await cluster.connect(b, name="bob")
    carol = await cluster.connect(c, name="carol")
    everyone = [alice, dave, bob, carol]
    channel = await create_channel(alice, [dave, bob, carol])
    dm_mark = len(bob.events)
    dm: int = (await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id
    added = await bob.expect(frames.ConversationAdded, lambda e: e.conversation.id == dm, since=dm_mark)
    assert added.by == alice.user_id
    await cluster.settle()

    # One message each way first: every instance then has delivered a seq of
    # both conversations, the base its gap detection starts from.
    warm = [await bob.send(channel, "warm-channel"), await bob.send(dm, "warm-dm")]
    await asyncio.gather(*(p.has_messages([warm[0].id]) for p in everyone), alice.has_messages([warm[1].id]))

    results = await asyncio.gather(
        send_many(alice, channel, "alice", PER_SENDER),
        send_many(dave, channel, "dave", PER_SENDER),
        send_many(bob, channel, "bob", PER_SENDER),
        send_many(carol, channel, "carol", PER_SENDER),
        send_many(alice, dm, "alice-dm", PER_SENDER),
        send_many(bob, dm, "bob-dm", PER_SENDER),
    )
    in_channel = [warm[0], *(m for r in results[:4] for m in r)]
    in_dm = [warm[1], *(m for r in results[4:] for m in r)]
    assert sorted(m.seq for m in in_channel) == list(range(1, len(in_channel) + 1))
    assert sorted(m.seq for m in in_dm) == list(range(1, len(in_dm) + 1))

    # Every receiver gets every message as message.new: no client-side gap fill needed.
    await asyncio.gather(*(p.has_messages(m.id for m in in_channel) for p in everyone))
    await asyncio.gather(*(p.has_messages(m.id for m in in_dm) for p in (alice, bob)))
    for peer in everyone:
        peer.assert_exactly(channel, in_channel)
        peer.assert_in_order(channel)
        assert not peer.from_history
    for peer in (alice, bob):
        peer.assert_exactly(dm, in_dm)
        peer.assert_in_order(dm)
    assert not any(p.redelivered for p in everyone), "no message.new twice on a connection"
    assert not carol.find(frames.MessageNew, lambda e: e.message.conversation_id == dm), "carol is not in the DM"


# -- 2. membership --------------------------------------------------------------


async def test_membership_changes_reach_other_instances(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob_a = await cluster.connect(a, name="bob")
    bob_b = await cluster.connect(b, peer=bob_a.device("bob-b"))  # bob's second device
    carol = await cluster.connect(b, name="carol")
    lobby = await create_channel(alice, [])
    dm: int = (await alice.call("dm.open", user_ids=[bob_a.user_id])).conversation.id
    await cluster.settle()

    # bob joins on a: his device on b hears of it at once and receives the channel.
    mark = len(bob_b.events)
    await bob_a.call("channel.join", channel_id=lobby)
    added = await bob_b.expect(frames.ConversationAdded, lambda e: e.conversation.id == lobby, since=mark)
    assert added.by == bob_a.user_id and added.conversation.member
    joined = await bob_b.expect(frames.MemberJoined, lambda e: e.conversation_id == lobby, since=mark)
    assert joined.user.id == bob_a.user_id and joined.by is None
    await alice.expect(frames.MemberJoined, lambda e: e.conversation_id == lobby and e.user.id == bob_a.user_id)
    hello = await alice.send(lobby, "hello-lobby")
    await asyncio.gather(bob_a.has_messages([hello.id]), bob_b.has_messages([hello.id]))

    # alice invites carol (only on b) to a private channel on a.
    design = await create_channel(alice, [], private=True)
    mark = len(carol.events)
    await alice.call("channel.invite", channel_id=design, user_id=carol.user_id)
    invited = await carol.expect(frames.ConversationAdded, lambda e: e.conversation.id == design, since=mark)
    assert invited.by == alice.user_id
    joined = await carol.expect(frames.MemberJoined, lambda e: e.conversation_id == design, since=mark)
    assert joined.user.id == carol.user_id and joined.by == alice.user_id
    welcome = await alice.send(design, "welcome-carol")
    await carol.has_messages([welcome.id])
    reply = await carol.send(design, "thanks")
    await alice.has_messages([reply.id])

    # bob leaves on a: both his devices hear member.left then conversation.removed, and the channel stops.
    marks = {p.name: len(p.events) for p in (alice, bob_a, bob_b)}
    await bob_a.call("channel.leave", channel_id=lobby)
    for peer in (alice, bob_a, bob_b):
        left = await peer.expect(frames.MemberLeft, lambda e: e.conversation_id == lobby, since=marks[peer.name])
        assert left.user_id == bob_a.user_id
    for peer in (bob_a, bob_b):
        await peer.expect(frames.ConversationRemoved, lambda e: e.conversation_id == lobby, since=marks[peer.name])
        kinds = [type(e) for e in peer.events[marks[peer.name] :]]
        assert kinds.index(frames.MemberLeft) < kinds.index(frames.ConversationRemoved)
    after_leave = await alice.send(lobby, "after-bob-left")
    # A later message from the same instance, in a conversation bob is still in, as a marker:
    # one publisher's events reach an instance in publish order.
    marker = await alice.send(dm, "marker")
    await asyncio.gather(bob_a.has_messages([marker.id]), bob_b.has_messages([marker.id]))
    for peer in (bob_a, bob_b):
        assert after_leave.id not in peer.messages, f"{peer.name} still receives the channel it left"
    await cluster.settle()


# -- 3. presence ------------------------------------------------------------------


async def presence_everywhere(peers: list[Peer], user_id: int) -> set[str]:
    answers = await asyncio.gather(*(p.call("presence.query", user_ids=[user_id]) for p in peers))
    return {answer.presence[0].status for answer in answers}


async def test_presence_with_devices_on_different_instances(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    watcher = await cluster.connect(c, name="watcher")
    observers = [await cluster.connect(a, name="on-a"), await cluster.connect(b, name="on-b"), watcher]

    # ursula shares a channel with the watcher; she starts offline.
    setup = await cluster.connect(a, name="ursula")
    uid = setup.user_id
    channel = await create_channel(setup, [watcher])
    await setup.client.close()
    await watcher.wait_for(lambda: watcher.presence_of(uid) == ["offline"], "offline after setup")
    assert await presence_everywhere(observers, uid) == {"offline"}

    # First device (on a): online, for everyone.
    device_a = await cluster.connect(a, peer=setup.device("ursula-a"))
    await watcher.wait_for(lambda: watcher.presence_of(uid) == ["offline", "online"], "online event")
    assert await presence_everywhere(observers, uid) == {"online"}

    # Second device (on b): nothing changes. A message it sends after authenticating is a
    # marker: an online event from b would have reached the watcher before it.
    device_b = await cluster.connect(b, peer=setup.device("ursula-b"))
    await cluster.settle()
    marker = await device_b.send(channel, "second-device")
    await watcher.has_messages([marker.id])
    assert watcher.presence_of(uid) == ["offline", "online"]
    assert await presence_everywhere(observers, uid) == {"online"}

    # The device on a closes: still online (on b), for everyone.
    await device_a.client.close()
    key = f"{cluster.prefix}:user:{uid}:instances"
    end = time.monotonic() + WAIT
    while await cluster.redis.smembers(key) != {b.instance_id}:  # a has recorded the disconnect
        assert time.monotonic() < end, "instance a never recorded the closed connection"
        await asyncio.sleep(0.05)
    assert await presence_everywhere(observers, uid) == {"online"}

    # The last device (on b) closes: offline, for the watcher on c and on every instance.
    await device_b.client.close()
    await watcher.wait_for(lambda: watcher.presence_of(uid)[-1:] == ["offline"], "offline event")
    # One online and one offline for the two devices: closing the one on a announced nothing.
    assert watcher.presence_of(uid) == ["offline", "online", "offline"]
    answers = await asyncio.gather(*(p.call("presence.query", user_ids=[uid]) for p in observers))
    assert {answer.presence[0].status for answer in answers} == {"offline"}
    offline = presence_changes(watcher.events, uid)[-1]
    assert {answer.presence[0].last_seen for answer in answers} == {offline.last_seen}


async def test_typing_reaches_the_other_members_on_every_instance_and_not_the_typists_devices(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    phone = await cluster.connect(b, peer=alice.device("alice-phone"))
    bob, carol = await cluster.connect(b, name="bob"), await cluster.connect(a, name="carol")
    channel = await create_channel(alice, [bob, carol])
    dm = (await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id
    await cluster.settle()

    def typing_of(peer: Peer, cid: int) -> list[frames.UserTyping]:
        return peer.find(frames.UserTyping, lambda e: e.conversation_id == cid and e.user_id == alice.user_id)

    await alice.call("typing", conversation_id=channel, thread_root_id="root-1")
    await alice.call("typing", conversation_id=dm)
    expected = frames.UserTyping(
        conversation_id=channel, user_id=alice.user_id, thread_root_id="root-1", expires_in_ms=5000
    )
    for member in (bob, carol):  # on the other instance and on the typist's own
        assert await member.expect(frames.UserTyping, lambda e: e.conversation_id == channel) == expected
    assert (await bob.expect(frames.UserTyping, lambda e: e.conversation_id == dm)).user_id == alice.user_id

    # The message ends the indicator: on each instance it follows the typing, which
    # the typist's own devices, here and on the other instance, never received.
    marker = await alice.send(channel, "typed")
    dm_marker = await alice.send(dm, "typed-dm")
    for peer in (alice, phone, bob, carol):
        await peer.has_messages([marker.id] if peer is carol else [marker.id, dm_marker.id])
    assert typing_of(alice, channel) == typing_of(phone, channel) == typing_of(phone, dm) == []
    for member in (bob, carol):
        in_channel = [
            type(e)
            for e in member.events
            if (isinstance(e, frames.UserTyping) and e.conversation_id == channel)
            or (isinstance(e, frames.MessageNew) and e.message.conversation_id == channel)
        ]
        assert in_channel[-2:] == [frames.UserTyping, frames.MessageNew]

    # Not a member: the same not_found on any instance as for a conversation that does not exist.
    outsider = await cluster.connect(b, name="outsider")
    for cid in (dm, 999_999):
        with pytest.raises(ServerError) as refused:
            await outsider.call("typing", conversation_id=cid)
        assert (refused.value.code, refused.value.message) == ("not_found", "conversation not found")


# -- 4. SIGKILL of an instance -----------------------------------------------------


async def test_killed_instance(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    xavier = await cluster.connect(a, name="xavier")  # reconnects to b after the kill
    zoe = await cluster.connect(a, name="zoe")  # only ever on a
    yann = await cluster.connect(b, name="yann")
    wanda = await cluster.connect(c, name="wanda")
    channel = await create_channel(xavier, [zoe, yann, wanda])
    await cluster.settle()
    warm = await yann.send(channel, "warm")
    await asyncio.gather(*(p.has_messages([warm.id]) for p in (xavier, zoe, yann, wanda)))

    acked: list[frames.Message] = [warm]
    enough_before_kill = asyncio.Event()
    killed = asyncio.Event()
    done_after_kill = asyncio.Event()

    def record(message: frames.Message) -> None:
        acked.append(message)
        if len(acked) >= 30:
            enough_before_kill.set()

    async def steady_sender(peer: Peer) -> None:
        for i in range(60):
            if done_after_kill.is_set():
                break
            record(await peer.send(channel, f"{peer.name}-{i}"))

    async def xavier_sender() -> None:
        i = 0
        # Before the kill: sends through a until the connection dies under them.
        while True:
            try:
                record(await xavier.send(channel, f"xavier-{i}"))
            except (ConnectionError, ConnectionClosed):
                break
            i += 1
        assert killed.is_set()
        # Reconnect to b with the token, resend the unacknowledged message (same client_msg_id),
        # then catch up from history after the last seq seen.
        last = xavier.last_contiguous(channel)
        await cluster.connect(b, peer=xavier)
        record(await xavier.send(channel, f"xavier-{i}"))
        acked_so_far = {m.id for m in acked}
        await xavier.catch_up(channel, after=last)
        assert acked_so_far <= xavier.messages.keys(), "history after the last seen seq has every acked message"
        for j in range(i + 1, i + 10):
            record(await xavier.send(channel, f"xavier-{j}"))
        done_after_kill.set()

    senders = asyncio.gather(xavier_sender(), steady_sender(yann), steady_sender(wanda))
    await asyncio.wait_for(enough_before_kill.wait(), WAIT)
    killed.set()
    killed_at = time.monotonic()
    await a.kill()
    await asyncio.wait_for(senders, WAIT * 2)

    # zoe was only on a: everyone on the surviving instances hears she went offline, within the TTL
    # (a's last heartbeat expires, then the next heartbeat of a survivor reaps a).
    survivors = [xavier, yann, wanda]

    async def hears_zoe_offline(peer: Peer) -> None:
        await peer.wait_for(lambda: "offline" in peer.presence_of(zoe.user_id), "offline for zoe", TTL_SECONDS + 5)

    await asyncio.gather(*(hears_zoe_offline(peer) for peer in survivors))
    offline_after = time.monotonic() - killed_at
    assert offline_after < TTL_SECONDS + 2 * HEARTBEAT_SECONDS + 1.5, f"offline only after {offline_after:.1f}s"
    for user_id, status in ((zoe.user_id, "offline"), (xavier.user_id, "online"), (yann.user_id, "online")):
        assert await presence_everywhere(survivors, user_id) == {status}

    # Nothing acknowledged is missing anywhere; nothing is there twice.
    by_cmid = {m.client_msg_id: m for m in acked}
    assert len(by_cmid) == len(acked) == len({m.id for m in acked}), "a retried send stored twice"
    # Surviving instances fill what a's dying broker never published, by themselves.
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in (yann, wanda)))
    await xavier.has_messages(m.id for m in acked)
    for peer in survivors:
        peer.assert_exactly(channel, acked)
    stored = await full_history(yann, channel)
    assert [(m.id, m.seq) for m in stored] == sorted(((m.id, m.seq) for m in acked), key=lambda pair: pair[1])
    await cluster.settle([b, c])


# -- 5. Redis outage -------------------------------------------------------------------


async def test_redis_stopped_and_restarted(private_cluster: Cluster, private_redis: PrivateRedis) -> None:
    cluster = private_cluster
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    carol = await cluster.connect(a, name="carol")
    bob = await cluster.connect(b, name="bob")
    everyone = [alice, carol, bob]
    channel = await create_channel(alice, [carol, bob])
    await cluster.settle()
    acked = [await alice.send(channel, "before-a"), await bob.send(channel, "before-b")]
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in everyone))

    private_redis.stop()
    for instance in (a, b):
        body = await cluster.wait_readyz(instance, "ready, degraded: broker: ")
        assert "redis" in body
    # Sends are stored and acknowledged; delivery on the same instance goes on.
    during_b = [await bob.send(channel, f"outage-b-{i}") for i in range(2)]
    during_a = [await alice.send(channel, f"outage-a-{i}") for i in range(3)]
    acked += during_b + during_a
    await carol.has_messages(m.id for m in during_a)
    await alice.has_messages(m.id for m in during_a)
    await bob.has_messages(m.id for m in during_b)
    for instance in (a, b):
        status, body = await instance.get("/readyz")
        assert status == 200 and body.startswith("ready, degraded: broker: "), body

    await private_redis.start()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready\n", timeout=15) for i in (a, b)))
    # bob receives what was sent on a during the outage, with no new message to reveal the gap:
    # b's broker resyncs from the store after it reconnects.
    await bob.has_messages(m.id for m in during_a)
    # Cross-instance routing works again, both ways.
    await cluster.settle()
    after = [await alice.send(channel, "after-a"), await bob.send(channel, "after-b")]
    acked += after
    await asyncio.gather(*(p.has_messages(m.id for m in acked) for p in everyone))
    for peer in everyone:
        peer.assert_exactly(channel, acked)
        peer.assert_in_order(channel)
        assert not peer.from_history
    # Presence records were lost with Redis; the heartbeats restore them.
    end = time.monotonic() + WAIT
    for peer in everyone:
        while await presence_everywhere(everyone, peer.user_id) != {"online"}:
            assert time.monotonic() < end, f"{peer.name} not online everywhere after the Redis restart"
            await asyncio.sleep(0.05)


async def test_presence_right_after_redis_restart(private_cluster: Cluster, private_redis: PrivateRedis) -> None:
    cluster = private_cluster
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    bob_phone = await cluster.connect(a, peer=bob.device("bob-phone"))
    await create_channel(alice, [bob])
    await cluster.settle()

    private_redis.stop()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready, degraded: broker: ") for i in (a, b)))
    await private_redis.start()
    # bob's device on a closes as soon as Redis is back: bob is still online, on b.
    await bob_phone.client.close()
    await asyncio.gather(*(cluster.wait_readyz(i, "ready\n", timeout=15) for i in (a, b)))
    key = f"{cluster.prefix}:user:{bob.user_id}:instances"
    end = time.monotonic() + WAIT
    while await cluster.redis.smembers(key) != {b.instance_id}:  # a recorded the close, b its records
        assert time.monotonic() < end, f"bob's instances in Redis: {await cluster.redis.smembers(key)}"
        await asyncio.sleep(0.05)
    assert await presence_everywhere([alice, bob], bob.user_id) == {"online"}
    # A marker from a, after a handled the close: an offline event from a would come before it.
    marker = await alice.send((await alice.call("dm.open", user_ids=[bob.user_id])).conversation.id, "marker")
    await alice.has_messages([marker.id])
    assert alice.presence_of(bob.user_id) == [], "bob announced offline while online on b"


# -- 6. subscriptions ----------------------------------------------------------------


async def test_subscriptions_track_local_members(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")

    async def expect_subscribers(cid: int, instances: int) -> None:
        views = await cluster.settle()
        local = sum(cid in v["local"]["conversations"] for v in views)
        assert local == instances
        channel = f"{cluster.prefix}:c:{cid}"
        assert (await cluster.shard_subscribers([channel]))[channel] == instances

    alice = await cluster.connect(a, name="alice")
    bob = await cluster.connect(b, name="bob")
    carol_a = await cluster.connect(a, name="carol")
    carol_b = await cluster.connect(b, peer=carol_a.device("carol-b"))
    views = await cluster.settle()
    assert views[0]["local"]["users"] == sorted([alice.user_id, carol_a.user_id])
    assert views[1]["local"]["users"] == sorted([bob.user_id, carol_a.user_id])
    assert views[2]["local"] == {"conversations": [], "users": []}

    channel = await create_channel(alice, [])
    await expect_subscribers(channel, 1)
    await bob.call("channel.join", channel_id=channel)
    await expect_subscribers(channel, 2)
    await carol_a.call("channel.join", channel_id=channel)  # reaches both of carol's devices
    await expect_subscribers(channel, 2)
    await bob.call("channel.leave", channel_id=channel)  # b keeps it for carol's device
    await expect_subscribers(channel, 2)
    await carol_b.client.close()
    await expect_subscribers(channel, 1)
    views = await cluster.settle()
    assert views[1]["local"]["users"] == [bob.user_id]

    # A user on a third instance joins, then disconnects.
    dave = await cluster.connect(c, name="dave")
    await dave.call("channel.join", channel_id=channel)
    await expect_subscribers(channel, 2)
    dm: int = (await dave.call("dm.open", user_ids=[bob.user_id])).conversation.id
    await expect_subscribers(dm, 2)
    await dave.client.close()
    await expect_subscribers(channel, 1)
    await expect_subscribers(dm, 1)

    await alice.client.close()
    await expect_subscribers(channel, 1)  # carol's device on a
    await carol_a.call("channel.leave", channel_id=channel)
    await expect_subscribers(channel, 0)
    await bob.client.close()
    await carol_a.client.close()
    views = await cluster.settle()
    for view in views:
        assert view["local"] == view["broker"] == {"conversations": [], "users": []}
    assert await cluster.shard_channels() == {f"{cluster.prefix}:i:{i.instance_id}" for i in (a, b, c)}


# -- 7. A stalled pub/sub path is noticed -----------------------------------------


async def test_stalled_redis_shows_degraded_then_recovers(private_cluster: Cluster) -> None:
    """Redis that accepts connections but answers nothing (CLIENT PAUSE) looks
    alive to a naive check; the broker's self-probe notices, /readyz reports
    the instance degraded (still serving), and it recovers by itself."""
    (a,) = await private_cluster.start("a")
    alice = await private_cluster.connect(a, name="alice")
    await private_cluster.redis.client_pause(4000, all=True)
    body = await private_cluster.wait_readyz(a, "ready, degraded: broker: ")
    assert "probe" in body or "subscriber" in body or "publishing" in body, body
    assert (await alice.call("ping")).ts > 0  # still serving its connections
    await private_cluster.wait_readyz(a, "ready\n", timeout=WAIT + 4)
