"""The contract of the Directory's profile operations (issue 12): profiles,
the user search, contacts and the token generation, on every backend
(tests/storage_contract.py binds the fixtures)."""

from __future__ import annotations

import asyncio

import pytest

from hubbub.storage.base import Directory
from hubbub.storage.records import ProfileUpdate, SearchPosition, Status
from hubbub.storage.rows import search_position
from tests import storage_contract
from tests.storage_contract import NOW, new_channel, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


async def test_a_new_user_has_an_empty_searchable_profile(directory: Directory) -> None:
    alice = await new_user(directory)
    assert (alice.status_text, alice.status_emoji, alice.status_expires_at) == ("", "", None)
    assert (alice.time_zone, alice.avatar_url, alice.searchable, alice.token_generation) == ("", "", True, 0)


async def test_update_profile_changes_only_the_fields_given(directory: Directory) -> None:
    alice = await new_user(directory)
    status = Status(text="in a meeting", emoji="📅", expires_at=NOW + 60_000)
    updated = await directory.update_profile(
        alice.id,
        ProfileUpdate(display_name="Alice Ä.", status=status, time_zone="Europe/Paris", avatar_url="https://a/b.png"),
    )
    assert updated is not None
    assert (updated.display_name, updated.status_text, updated.status_emoji) == ("Alice Ä.", "in a meeting", "📅")
    assert (updated.status_expires_at, updated.time_zone, updated.avatar_url) == (
        NOW + 60_000,
        "Europe/Paris",
        "https://a/b.png",
    )
    assert (updated.username, updated.password_hash, updated.searchable) == (alice.username, alice.password_hash, True)
    assert await directory.get_user(alice.id) == updated

    hidden = await directory.update_profile(alice.id, ProfileUpdate(searchable=False))
    assert hidden is not None and not hidden.searchable
    assert hidden.display_name == "Alice Ä." and hidden.status_text == "in a meeting"

    cleared = await directory.update_profile(alice.id, ProfileUpdate(status=Status(text="", emoji="", expires_at=None)))
    assert cleared is not None and (cleared.status_text, cleared.status_emoji, cleared.status_expires_at) == (
        "",
        "",
        None,
    )
    assert await directory.update_profile(alice.id, ProfileUpdate()) == cleared


async def test_update_profile_of_a_missing_user_is_none(directory: Directory) -> None:
    alice = await new_user(directory)
    assert await directory.update_profile(alice.id + 1000, ProfileUpdate(display_name="Ghost")) is None


async def test_search_matches_a_prefix_of_username_or_display_name(directory: Directory) -> None:
    prefix = storage_contract.name("srch")  # unique per test, so other tests' users never match
    ann = await directory.create_user(f"{prefix}ann", "Zed Zulu", "h", NOW)
    bob = await directory.create_user(f"x{prefix}bob", f"{prefix.upper()} Bob", "h", NOW)
    both = await directory.create_user(f"{prefix}cat", f"{prefix} Cat", "h", NOW)
    await directory.create_user(f"x{prefix}dan", "Nobody", "h", NOW)
    usernames = [u.username for u in await directory.search_users(prefix.upper(), after=None, limit=10)]
    # Once each, by the text matched in code point order: "<prefix> bob" (the display name;
    # a space sorts before letters), "<prefix>ann", "<prefix>cat" (its username matched first).
    assert usernames == [bob.username, ann.username, both.username]
    assert [u.id for u in await directory.search_users(f"{prefix} b", after=None, limit=10)] == [bob.id]
    assert await directory.search_users(f"{prefix}zzz", after=None, limit=10) == []


async def test_search_pages_by_matched_text_then_username(directory: Directory) -> None:
    prefix = storage_contract.name("page")
    created = [await directory.create_user(f"{prefix}-{n:02}", "Someone", "h", NOW) for n in range(4)]
    # Display-name matches sort among username matches by their lowercased display name.
    created.insert(2, await directory.create_user(f"zz{prefix}", f"{prefix}-01b", "h", NOW))
    created.insert(3, await directory.create_user(f"zy{prefix}", f"{prefix}-01b", "h", NOW))  # same name: by username
    created.append(await directory.create_user(f"zx{prefix}", f"{prefix.upper()}-99", "h", NOW))
    pages: list[list[str]] = []
    after: SearchPosition | None = None
    while True:
        page = await directory.search_users(prefix, after=after, limit=3)
        pages.append([u.username for u in page])
        if len(page) < 3:
            break
        after = search_position(page[-1], prefix)
    expected = [u.username for u in created]
    expected[2], expected[3] = expected[3], expected[2]  # "zy..." before "zz..." for the same display name
    assert pages == [expected[0:3], expected[3:6], expected[6:]]


async def test_search_leaves_out_hidden_users_and_reads_them_back_when_shown(directory: Directory) -> None:
    prefix = storage_contract.name("hide")
    shy = await directory.create_user(f"{prefix}shy", "Shy", "h", NOW)
    await directory.update_profile(shy.id, ProfileUpdate(searchable=False))
    assert await directory.search_users(prefix, after=None, limit=10) == []
    assert (await directory.get_users([shy.id]))[0].searchable is False  # still readable by id
    await directory.update_profile(shy.id, ProfileUpdate(searchable=True))
    assert [u.id for u in await directory.search_users(prefix, after=None, limit=10)] == [shy.id]


async def test_search_treats_like_wildcards_as_text(directory: Directory) -> None:
    prefix = storage_contract.name("wild")
    under = await directory.create_user(f"{prefix}_a", "W", "h", NOW)
    await directory.create_user(f"{prefix}xa", "W", "h", NOW)
    assert [u.id for u in await directory.search_users(f"{prefix}_", after=None, limit=10)] == [under.id]
    assert await directory.search_users(f"{prefix}%", after=None, limit=10) == []


async def test_search_finds_a_renamed_user_by_the_new_name_only(directory: Directory) -> None:
    prefix = storage_contract.name("ren")
    user = await directory.create_user(f"z{prefix}", "Old Name", "h", NOW)
    await directory.update_profile(user.id, ProfileUpdate(display_name=f"{prefix} Ünïcode"))
    assert [u.id for u in await directory.search_users(f"{prefix} ü", after=None, limit=10)] == [user.id]


async def test_contacts_of(directory: Directory) -> None:
    alice, bob, carol, dave = [await new_user(directory) for _ in range(4)]
    lonely = await new_user(directory)
    room = await new_channel(directory, alice)
    await directory.add_member(room.id, bob.id, NOW)
    dm, _ = await directory.open_dm([alice.id, carol.id], alice.id, NOW)
    other = await new_channel(directory, dave)
    await directory.add_member(other.id, bob.id, NOW)
    assert await directory.contacts_of(alice.id) == sorted([alice.id, bob.id, carol.id])  # each once
    assert await directory.contacts_of(bob.id) == sorted([alice.id, bob.id, dave.id])
    assert await directory.contacts_of(lonely.id) == [lonely.id]
    assert dm.id


async def test_set_password_raises_the_token_generation(directory: Directory) -> None:
    alice = await new_user(directory)
    changed = await directory.set_password(alice.id, "argon2$new")
    assert changed is not None and (changed.password_hash, changed.token_generation) == ("argon2$new", 1)
    assert await directory.get_user(alice.id) == changed
    assert await directory.set_password(alice.id + 1000, "x") is None


async def test_end_sessions_raises_the_token_generation_each_time(directory: Directory) -> None:
    alice = await new_user(directory)
    first, second = await asyncio.gather(directory.end_sessions(alice.id), directory.end_sessions(alice.id))
    assert first is not None and second is not None
    assert {first.token_generation, second.token_generation} == {1, 2}  # concurrent raises both count
    stored = await directory.get_user(alice.id)
    assert stored is not None and stored.token_generation == 2 and stored.password_hash == alice.password_hash
    assert await directory.end_sessions(alice.id + 1000) is None
