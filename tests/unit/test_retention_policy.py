"""The pure rules of retention (server/retention_policy.py) and of the
purge's prefix (storage/rows.py), without stores or sockets."""

from __future__ import annotations

import msgspec
import pytest

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.config import ConfigError, Settings, load_settings
from hubbub.server.errors import ApiError
from hubbub.server.retention_policy import DAY_MS, PurgeRule, RetentionPolicy
from hubbub.storage.records import ChannelEdit, ConversationRecord
from hubbub.storage.rows import count_below, expired_prefix

NOW = 1_700_000_000_000


def policy(**settings: int) -> RetentionPolicy:
    return RetentionPolicy(msgspec.convert(settings, Settings).retention)


def channel(age: int = 0, count: int = 0) -> ConversationRecord:
    return ConversationRecord(
        id=1,
        kind="channel",
        name="c",
        topic="",
        private=False,
        created_by=1,
        created_at=0,
        retention_max_age_days=age,
        retention_max_messages=count,
    )


def test_by_default_nothing_expires() -> None:
    p = policy()
    assert not p.global_active
    assert p.rule(channel(), NOW) is None
    assert p.view(channel()) == frames.Retention()


def test_an_override_replaces_only_the_servers_value_it_names() -> None:
    p = policy(retention_max_age_days=90, retention_max_messages=1000)
    assert p.global_active
    assert p.effective(channel()) == (90, 1000)
    assert p.effective(channel(age=7)) == (7, 1000)
    assert p.rule(channel(age=7), NOW) == PurgeRule(before_ts=NOW - 7 * DAY_MS, keep_last=1000)
    assert p.view(channel(count=200)) == frames.Retention(
        max_messages=200, effective_max_age_days=90, effective_max_messages=200
    )
    assert policy().rule(channel(count=200), NOW) == PurgeRule(before_ts=None, keep_last=200)


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        (ChannelEdit(retention_max_age_days=0), False),
        (ChannelEdit(retention_max_age_days=1), False),
        (ChannelEdit(retention_max_age_days=3650), False),
        (ChannelEdit(retention_max_age_days=3651), True),
        (ChannelEdit(retention_max_messages=99), True),
        (ChannelEdit(retention_max_messages=100), False),
        (ChannelEdit(retention_max_messages=0, retention_max_age_days=4000), True),
        (ChannelEdit(topic="no retention field"), False),
    ],
)
def test_overrides_stay_within_the_operators_bounds(edit: ChannelEdit, refused: bool) -> None:
    if refused:
        with pytest.raises(ApiError) as caught:
            policy().check_override(edit)
        assert caught.value.code == ErrorCode.BAD_REQUEST
        assert "between" in caught.value.message
    else:
        policy().check_override(edit)


def test_crossed_bounds_stop_start_up() -> None:
    with pytest.raises(ConfigError, match="HUBBUB_RETENTION_OVERRIDE_MIN_MESSAGES must be at most"):
        load_settings({"HUBBUB_RETENTION_OVERRIDE_MIN_MESSAGES": "50", "HUBBUB_RETENTION_OVERRIDE_MAX_MESSAGES": "10"})


def test_the_purge_removes_a_prefix() -> None:
    assert count_below(10, None) == 0
    assert count_below(10, 3) == 8  # keep seqs 8, 9, 10
    assert count_below(2, 5) == 0
    rows = [(1, 10), (2, 30), (3, 5), (4, 40)]
    assert expired_prefix(rows, below_seq=0, before_ts=25) == 1  # seq 3's ts is old too, but seq 2 stops it
    assert expired_prefix(rows, below_seq=0, before_ts=35) == 3
    assert expired_prefix(rows, below_seq=0, before_ts=None) == 0
    assert expired_prefix(rows, below_seq=4, before_ts=None) == 3
    assert expired_prefix(rows, below_seq=3, before_ts=35) == 3  # either rule
