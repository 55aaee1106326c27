"""server.config: the flat settings surface, the per-component groups built
from it, and the rules between settings, each in one place."""

from __future__ import annotations

import typing

import msgspec
import pytest

from hubbub.server.config import GROUPS, SETTING_NAMES, ConfigError, Settings, env_name, load_settings
from hubbub.storage.config import InvalidStorageConfig, StorageConfig
from hubbub.storage.factory import open_stores


def test_every_setting_belongs_to_a_group() -> None:
    grouped = {field for group in GROUPS.values() for field in group.__struct_fields__}
    assert sorted(set(SETTING_NAMES) - grouped) == []


def test_a_groups_fields_are_settings_of_the_same_name_and_type_without_defaults_of_their_own() -> None:
    setting_types = typing.get_type_hints(Settings)  # Annotated (docs, bounds) stripped
    for name, group in GROUPS.items():
        assert name not in SETTING_NAMES  # settings.<group> never shadows a setting
        for field, field_type in typing.get_type_hints(group).items():
            assert field in setting_types, f"{group.__name__}.{field} is not a setting"
            assert field_type == setting_types[field], f"{group.__name__}.{field}"
        info = msgspec.inspect.type_info(group)
        assert isinstance(info, msgspec.inspect.StructType)
        assert all(f.required for f in info.fields), f"{group.__name__} has a default: the setting's is the one"


def test_each_group_carries_the_settings_values_and_is_built_once() -> None:
    settings = load_settings(
        {
            "HUBBUB_RATE_BURST": "7",
            "HUBBUB_REDIS_URL": "redis://127.0.0.1:6379/0",
            "HUBBUB_STORAGE_TIMEOUT_SECONDS": "2.5",
            "HUBBUB_POSTGRES_DSN": "postgresql://db/hubbub",
        },
        {"port": "9000"},
    )
    assert settings.limits.rate_burst == 7
    assert settings.http.port == 9000
    assert settings.redis.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redis.storage_timeout_seconds == settings.storage.storage_timeout_seconds == 2.5
    assert settings.limits is settings.limits
    for name, group in GROUPS.items():
        built = getattr(settings, name)
        assert isinstance(built, group)
        assert all(getattr(built, f) == getattr(settings, f) for f in group.__struct_fields__)


def test_empty_backends_follow_the_urls_given() -> None:
    def backends(**values: str) -> tuple[str, str]:
        return msgspec.convert(values, Settings).storage.backends

    assert backends() == ("sqlite", "sqlite")
    assert backends(postgres_dsn="postgresql://db/x") == ("postgres", "postgres")
    assert backends(postgres_dsn="postgresql://db/x", mongo_url="mongodb://m") == ("postgres", "mongo")
    assert backends(mongo_url="mongodb://m") == ("sqlite", "mongo")
    assert backends(accounts_backend="sqlite", postgres_dsn="postgresql://db/x") == ("sqlite", "sqlite")
    assert backends(messages_backend="postgres", postgres_dsn="postgresql://db/x") == ("postgres", "postgres")


def test_a_storage_rule_is_worded_by_its_caller() -> None:
    config = msgspec.convert({"accounts_backend": "postgres"}, Settings).storage
    with pytest.raises(InvalidStorageConfig) as caught:
        config.check()
    assert str(caught.value) == "the postgres backend needs postgres_dsn"  # the factory's wording
    assert caught.value.explain(env_name) == "the postgres backend needs HUBBUB_POSTGRES_DSN"  # the server's


@pytest.mark.parametrize(
    ("flags", "mention"),
    [
        (
            {"postgres_pool_min": "3", "postgres_pool_max": "2", "postgres_dsn": "postgresql://db/x"},
            "--postgres-pool-min",
        ),
        ({"presence_ttl_seconds": "1", "presence_heartbeat_seconds": "2"}, "--presence-ttl-seconds"),
        ({"trusted_proxies": "not-an-address"}, "--trusted-proxies"),
    ],
)
def test_a_rule_names_settings_as_the_operator_gave_them(flags: dict[str, str | None], mention: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, flags)
    assert mention in str(caught.value)


async def test_the_factory_refuses_a_config_that_breaks_a_rule() -> None:
    config = msgspec.structs.replace(Settings().storage, messages_backend="mongo")
    assert isinstance(config, StorageConfig)
    with pytest.raises(InvalidStorageConfig, match="mongo_url"):
        await open_stores(config)
