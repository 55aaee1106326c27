"""What opening the stores takes: ``StorageConfig``, and the rules between its values.

Its fields are settings of the server and carry the settings' own names
(``HUBBUB_<NAME>``); server/config.py builds it from ``Settings`` and holds
the defaults, the documentation and the per-value validation. The rules that
span several of these values (which backends an empty choice means, what
each backend needs) live here, once: the server checks them at start-up
through ``check`` and names the settings with their environment variables,
and the factory relies on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from msgspec import Struct

AccountsChoice = Literal["", "sqlite", "postgres"]
"""The ``accounts_backend`` setting: empty follows the URLs given."""
MessagesChoice = Literal["", "sqlite", "mongo", "postgres"]
"""The ``messages_backend`` setting: empty follows the URLs given."""
AccountsBackend = Literal["sqlite", "postgres"]
"""Where accounts, channels and memberships live (the ``Directory``)."""
MessagesBackend = Literal["sqlite", "mongo", "postgres"]
"""Where messages live (the ``MessageLog``)."""

SettingNamer = Callable[[str], str]
"""How a caller names a setting, given its field name (``postgres_dsn``)."""


class InvalidStorageConfig(ValueError):
    """A rule between storage settings is broken.

    ``reason`` names the settings as ``{field}`` placeholders, so that each
    caller words them its own way (``explain``): the server with their
    environment variables, anything else with the field names.
    """

    def __init__(self, reason: str, *fields: str) -> None:
        self.reason = reason
        self.fields = fields
        super().__init__(self.explain(lambda field: field))

    def explain(self, name: SettingNamer) -> str:
        return self.reason.format_map({field: name(field) for field in self.fields})


class StorageConfig(Struct, kw_only=True, frozen=True):
    """Every setting the stores use, and nothing else; no defaults (those are the settings')."""

    accounts_backend: AccountsChoice
    messages_backend: MessagesChoice
    data_dir: str
    postgres_dsn: str
    postgres_replica_dsn: str
    postgres_replica_timeout_seconds: float
    postgres_replica_retry_seconds: float
    postgres_pool_min: int
    postgres_pool_max: int
    postgres_lookup_pool_max: int
    """The lookup lane's connections (storage/postgres.py ``PostgresPools``; 0: none, the primary pool's)."""
    auto_migrate: bool
    mongo_url: str
    mongo_database: str
    mongo_write_concern: str
    mongo_change_lease_seconds: float
    """How long a MongoDB change in flight holds back the change feed's horizon (docs/messages.md)."""
    postgres_search_config: str
    """The text search configuration PostgreSQL indexes and searches messages with (docs/storage.md, Search)."""
    sqlite_index_idle_seconds: float
    """SQLite's index transaction runs once no batch was stored this long (storage/sqlite_index.py)."""
    sqlite_index_max_pending: int
    """... or at once when this many messages wait for it."""
    storage_timeout_seconds: float
    lookup_batch_timeout_seconds: float
    """Bounds the batched ``auth`` and disconnect calls of server/lookups.py instead of ``storage_timeout_seconds``."""

    @property
    def resolved_accounts_backend(self) -> AccountsBackend:
        """The accounts backend chosen, or when empty: ``postgres`` with a DSN, else ``sqlite``."""
        if self.accounts_backend:
            return self.accounts_backend
        return "postgres" if self.postgres_dsn else "sqlite"

    @property
    def resolved_messages_backend(self) -> MessagesBackend:
        """The messages backend chosen, or when empty: ``mongo`` with a Mongo URL, else the accounts backend."""
        if self.messages_backend:
            return self.messages_backend
        if self.mongo_url:
            return "mongo"
        return self.resolved_accounts_backend

    @property
    def backends(self) -> tuple[AccountsBackend, MessagesBackend]:
        return self.resolved_accounts_backend, self.resolved_messages_backend

    def check(self) -> None:
        """Raise InvalidStorageConfig for the first rule broken."""
        if "postgres" in self.backends and not self.postgres_dsn:
            raise InvalidStorageConfig("the postgres backend needs {postgres_dsn}", "postgres_dsn")
        if self.resolved_messages_backend == "mongo" and not self.mongo_url:
            raise InvalidStorageConfig("the mongo messages backend needs {mongo_url}", "mongo_url")
        if self.postgres_pool_min > self.postgres_pool_max:
            raise InvalidStorageConfig(
                "{postgres_pool_min} is larger than {postgres_pool_max}", "postgres_pool_min", "postgres_pool_max"
            )
        if self.postgres_replica_dsn and self.postgres_replica_timeout_seconds >= self.storage_timeout_seconds:
            # A read the replica did not answer must leave the primary time to.
            raise InvalidStorageConfig(
                "{postgres_replica_timeout_seconds} must be shorter than {storage_timeout_seconds}",
                "postgres_replica_timeout_seconds",
                "storage_timeout_seconds",
            )
        if self.mongo_change_lease_seconds <= self.storage_timeout_seconds:
            raise InvalidStorageConfig(
                "{mongo_change_lease_seconds} must be longer than {storage_timeout_seconds}",
                "mongo_change_lease_seconds",
                "storage_timeout_seconds",
            )
