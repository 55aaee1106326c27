"""The pure parts of the Redis Cluster broker (server/broker_redis_cluster.py)
and its setting: SSUBSCRIBE batches split per hash slot, a probe channel on
every master, the prefix rule. The broker itself is tested on a real cluster
(tests/test_broker_contract_cluster.py, tests/test_redis_cluster.py)."""

from __future__ import annotations

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from hubbub.server.broker_redis_cluster import RedisClusterBroker, _by_slot
from hubbub.server.config import ConfigError, RedisConfig, load_settings
from hubbub.server.metrics import Metrics


def test_a_batch_of_channels_is_split_into_one_group_per_slot_in_order() -> None:
    channels = [f"hubbub:c:{i}" for i in range(200)] + ["{t}:a", "{t}:b"]
    groups = _by_slot(channels)
    assert sorted(c for g in groups for c in g) == sorted(channels)
    for group in groups:
        assert len({key_slot(c.encode()) for c in group}) == 1
    assert len(groups) == len({key_slot(c.encode()) for c in channels})
    assert ["{t}:a", "{t}:b"] in groups  # a hash tag keeps channels in one command


def test_each_master_gets_a_probe_channel_of_its_own_slots() -> None:
    config = RedisConfig(
        redis_url="redis://127.0.0.1:1",
        redis_cluster=True,
        redis_prefix="hubbub",
        redis_pool_max=1,
        broker_probe_seconds=1.0,
        storage_timeout_seconds=1.0,
    )
    broker = RedisClusterBroker(config, "i1", Metrics())
    third = REDIS_CLUSTER_HASH_SLOTS // 3
    masters = ["m1:6379", "m2:6379", "m3:6379"]
    broker._owners = [masters[min(slot // third, 2)] for slot in range(REDIS_CLUSTER_HASH_SLOTS)]
    probes = {m: broker._probe_channel_for(m) for m in masters}
    assert len(set(probes.values())) == 3
    for master, channel in probes.items():
        assert channel.startswith("hubbub:i:i1:")
        assert broker._owner(channel) == master


def test_a_prefix_with_braces_is_refused_on_a_cluster() -> None:
    with pytest.raises(ConfigError, match="--redis-prefix"):
        load_settings({}, {"redis_cluster": "true", "redis_prefix": "{hub}"})
    assert load_settings({}, {"redis_prefix": "{hub}"}).redis.redis_prefix == "{hub}"  # a single Redis: any prefix
