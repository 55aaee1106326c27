"""storage.rows.new_message_ids: fresh message ids, many from one read of the random source."""

from __future__ import annotations

import uuid

from hubbub.storage.rows import new_message_id, new_message_ids


def test_ids_are_version_4_uuids_in_hex_as_uuid4_writes_them() -> None:
    ids = [*new_message_ids(2000), new_message_id()]
    for message_id in ids:
        parsed = uuid.UUID(hex=message_id)
        assert parsed.hex == message_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    # Every digit other than the version's varies: no position stuck by the slicing.
    for position in set(range(32)) - {12}:
        assert len({message_id[position] for message_id in ids}) > 1, position


def test_no_ids_for_no_messages() -> None:
    assert new_message_ids(0) == []
