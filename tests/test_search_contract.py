"""The contract of ``MessageLog.search`` (storage/base.py) on every store:
matching, membership by conversation ids, tombstones and edits, filters,
both orders and paging by position; and ``hubbub reindex`` rebuilding the
index from the message store.

Runs once per backend in BACKENDS with the fixtures of tests/storage_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hubbub.protocol.search import parse
from hubbub.server.config import Settings
from hubbub.server.reindex import reindex
from hubbub.storage.base import MessageLog
from hubbub.storage.factory import Stores, open_stores
from hubbub.storage.records import InvalidPosition, MessageQuery, MessageRecord, SearchHit
from tests import storage_contract
from tests.conftest import TEST_SETTINGS, settings_for_backend
from tests.storage_contract import NOW, new_channel, new_message, new_user

pytestmark = pytest.mark.all_backends

stores, directory, messages = storage_contract.stores, storage_contract.directory, storage_contract.messages


def query(text: str, conversation_ids: tuple[int, ...], **fields: object) -> MessageQuery:
    return MessageQuery(terms=tuple(parse(text)), conversation_ids=conversation_ids, **fields)  # type: ignore[arg-type]


async def texts(log: MessageLog, text: str, conversation_ids: tuple[int, ...], **fields: object) -> list[str]:
    return [hit.record.text for hit in await log.search(query(text, conversation_ids, **fields))]


async def test_matches_every_term_in_the_given_conversations_only(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    one, two = await new_channel(directory, alice), await new_channel(directory, alice)
    await log.append(new_message(one, alice, "a", "the Quick brown fox", ts=NOW + 1))
    await log.append(new_message(one, alice, "b", "a quick reply", ts=NOW + 2))
    await log.append(new_message(two, alice, "c", "quick in another room", ts=NOW + 3))
    assert await texts(log, "quick", (one.id,)) == ["a quick reply", "the Quick brown fox"]
    assert await texts(log, "quick", (one.id, two.id)) == [
        "quick in another room",
        "a quick reply",
        "the Quick brown fox",
    ]
    assert await texts(log, "quick fox", (one.id, two.id)) == ["the Quick brown fox"]
    assert await texts(log, '"brown fox"', (one.id,)) == ["the Quick brown fox"]
    assert await texts(log, '"fox brown"', (one.id,)) == []
    assert await texts(log, "qui*", (two.id,)) == ["quick in another room"]
    assert await texts(log, "ROOM", (two.id,)) == ["quick in another room"]
    assert await texts(log, "quick", (10**9,)) == []


async def test_tombstones_are_never_found_and_edits_only_by_their_new_text(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    kept = (await log.append(new_message(room, alice, "a", "original wording", ts=NOW + 1))).record
    gone = (await log.append(new_message(room, alice, "b", "doomed wording", ts=NOW + 2))).record

    def edit(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, text="changed phrasing", edited_ts=NOW + 10)

    def tombstone(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, text="", deleted=True)

    def react(current: MessageRecord) -> MessageRecord:
        return msgspec.structs.replace(current, pinned_by=alice.id, pinned_ts=NOW + 20)

    await log.change_message(room.id, kept.id, edit)
    await log.change_message(room.id, gone.id, tombstone)
    assert await texts(log, "wording", (room.id,)) == []
    assert await texts(log, "original", (room.id,)) == []
    assert await texts(log, "doomed", (room.id,)) == []
    assert await texts(log, "phrasing", (room.id,)) == ["changed phrasing"]
    await log.change_message(room.id, kept.id, react)  # a change that keeps the text
    (hit,) = await log.search(query("phrasing", (room.id,)))
    assert (hit.record.id, hit.record.pinned_by) == (kept.id, alice.id)


async def test_filters_sender_dates_and_threads(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice, bob = await new_user(directory), await new_user(directory)
    room = await new_channel(directory, alice)
    root = (await log.append(new_message(room, alice, "a", "plan one", ts=NOW + 100))).record
    await log.append(new_message(room, bob, "b", "plan two", ts=NOW + 200))
    await log.append(new_message(room, bob, "c", "plan three", ts=NOW + 300, thread_root_id=root.id))
    ids = (room.id,)
    assert await texts(log, "plan", ids, sender_id=bob.id) == ["plan three", "plan two"]
    assert await texts(log, "plan", ids, threads_only=True) == ["plan three"]
    assert await texts(log, "plan", ids, after_ts=NOW + 200) == ["plan three", "plan two"]
    assert await texts(log, "plan", ids, before_ts=NOW + 200) == ["plan one"]
    assert await texts(log, "plan", ids, after_ts=NOW + 150, before_ts=NOW + 250) == ["plan two"]


async def test_newest_pages_by_position_and_relevance_by_offset(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    sent = [
        (await log.append(new_message(room, alice, f"m{n}", f"page item {n}", ts=NOW + n // 2))).record
        for n in range(9)
    ]
    seen: list[SearchHit] = []
    after: str | None = None
    while True:
        page = await log.search(query("item", (room.id,), limit=4, after=after))
        seen += page
        if len(page) < 4:
            break
        after = page[-1].position
    assert [h.record.seq for h in seen] == [m.seq for m in reversed(sent)], "ts descending, each once"
    ranked = [
        h.record.id
        for offset in (0, 4, 8)
        for h in await log.search(query("item", (room.id,), order="relevance", limit=4, offset=offset))
    ]
    assert sorted(ranked) == sorted(m.id for m in sent)
    with pytest.raises(InvalidPosition):
        await log.search(query("item", (room.id,), after="not a position"))


async def test_relevance_ranks_the_closer_match_first(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    await log.append(new_message(room, alice, "a", "zebra " + " ".join(f"filler{n}" for n in range(30)), ts=NOW + 2))
    await log.append(new_message(room, alice, "b", "zebra zebra crossing", ts=NOW + 1))
    ranked = await texts(log, "zebra", (room.id,), order="relevance")
    assert ranked[0] == "zebra zebra crossing"


async def test_reindex_rebuilds_the_index_from_the_messages(
    stores: Stores, backend_settings: dict[str, object], tmp_path: Path
) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    kept = (await log.append(new_message(room, alice, "a", "rebuild me", ts=NOW + 1))).record
    gone = (await log.append(new_message(room, alice, "b", "rebuild gone", ts=NOW + 2))).record
    await log.change_message(room.id, gone.id, lambda m: msgspec.structs.replace(m, text="", deleted=True))
    settings = msgspec.convert({**TEST_SETTINGS, **backend_settings, "data_dir": str(tmp_path / "data")}, Settings)
    assert await reindex(settings) == 0  # with the stores open: a running server's own
    (hit,) = await log.search(query("rebuild", (room.id,)))
    assert hit.record.id == kept.id


async def test_the_sqlite_directory_with_mongo_messages_searches_by_scanning(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """No PostgreSQL for an index there: MongoMessageLog.search reads newest first and matches each text."""
    async with settings_for_backend("sqlite+mongo", request) as values:
        settings = msgspec.convert({**TEST_SETTINGS, **values, "data_dir": str(tmp_path / "data")}, Settings)
        opened = await open_stores(settings.storage)
        try:
            directory, log = opened.directory, opened.messages
            alice = await new_user(directory)
            room = await new_channel(directory, alice)
            old = (await log.append(new_message(room, alice, "a", "Éclair recipe", ts=NOW + 1))).record
            await log.append(new_message(room, alice, "b", "eclairs are not eclair", ts=NOW + 2))
            await log.append(new_message(room, alice, "c", "recipe only", ts=NOW + 3))
            assert await texts(log, "eclair", (room.id,)) == ["eclairs are not eclair", "Éclair recipe"]
            assert await texts(log, '"eclair recipe"', (room.id,)) == ["Éclair recipe"]
            page = await log.search(query("recipe", (room.id,), limit=1))
            assert [h.record.text for h in page] == ["recipe only"]
            assert await texts(log, "recipe", (room.id,), after=page[0].position) == ["Éclair recipe"]
            await log.change_message(room.id, old.id, lambda m: msgspec.structs.replace(m, text="", deleted=True))
            assert await texts(log, "recipe", (room.id,)) == ["recipe only"]
            assert await reindex(settings) == 0
        finally:
            await opened.close()


async def test_relevance_ranks_only_the_newest_window_of_matches(stores: Stores) -> None:
    directory, log = stores.directory, stores.messages
    alice = await new_user(directory)
    room = await new_channel(directory, alice)
    # The best match is the oldest: outside a window of the 3 newest, it is not ranked.
    await log.append(new_message(room, alice, "best", "window window window", ts=NOW + 1))
    for n in range(4):
        await log.append(new_message(room, alice, f"m{n}", f"window and other words {n}", ts=NOW + 10 + n))
    everything = await texts(log, "window", (room.id,), order="relevance", window=100)
    assert everything[0] == "window window window" and len(everything) == 5
    windowed = await texts(log, "window", (room.id,), order="relevance", window=3)
    assert sorted(windowed) == [f"window and other words {n}" for n in (1, 2, 3)]
