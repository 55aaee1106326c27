"""Profiles across server instances: a profile change reaches the users who
share a conversation with its author on every instance, and a password
change or "log out everywhere" made on one instance closes the user's
connections on the other (CloseCode.SESSION_ENDED), whose old token then
no longer authenticates anywhere.

Real `hubbub serve` processes on PostgreSQL, routed through Redis (tests/cluster.py).
"""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.client import open_client
from hubbub.protocol.errors import CloseCode, ErrorCode
from tests.cluster import Cluster
from tests.helpers import assert_serving, closed_with, expect_error

pytest_plugins = ["tests.cluster"]  # its fixtures: cluster, stores (both stores on PostgreSQL)


async def test_user_updated_reaches_contacts_and_devices_on_the_other_instance(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    phone = await cluster.connect(b, peer=alice.device("alice-phone"))
    bob = await cluster.connect(b, name="bob")
    await alice.call("dm.open", user_ids=[bob.user_id])
    await cluster.settle()

    result: frames.UserResult = await alice.call("user.update", display_name="Alice on A", time_zone="UTC")
    for peer in (bob, phone):
        event = await peer.expect(frames.UserUpdated, lambda e: e.user.id == alice.user_id)
        assert event.user == result.user
    assert len(bob.find(frames.UserUpdated, lambda e: e.user.id == alice.user_id)) == 1


async def test_password_change_on_one_instance_closes_the_other_instances_sessions(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    alice = await cluster.connect(a, name="alice")
    phone = await cluster.connect(b, peer=alice.device("alice-phone"))
    old_token = alice.token
    await cluster.settle()

    session: frames.Session = await alice.call(
        "password.change", old_password="correct horse", new_password="a new horse"
    )
    assert await closed_with(phone.client) == CloseCode.SESSION_ENDED
    await assert_serving(alice.client)

    for instance in (a, b):
        async with open_client(instance.url) as client:
            await client.next_event()  # hello
            await expect_error(client, ErrorCode.UNAUTHORIZED, "auth", token=old_token)
            await client.auth(session.token)


async def test_log_out_everywhere_closes_every_connection_on_every_instance(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    bob = await cluster.connect(b, name="bob")
    laptop = await cluster.connect(a, peer=bob.device("bob-laptop"))
    await cluster.settle()
    assert await bob.call("session.end_all") == frames.Empty()
    assert await closed_with(laptop.client) == CloseCode.SESSION_ENDED
    assert await closed_with(bob.client) == CloseCode.SESSION_ENDED
