"""Settings: every tunable of the server, its default, and where it comes from.

Each field of ``Settings`` is one setting, read from the environment
variable ``HUBBUB_<NAME>`` or the CLI flag ``--<name-with-dashes>`` (the
flag wins): the operators' surface is flat, one name per setting. Values are
validated by msgspec against the annotations below; an invalid value stops
start-up with one clear line. README.md's settings table is generated from
this class and checked against it by tests/test_docs.py.

Components do not take the whole of it: each gets its own small config
(centrifuge's ``RedisBrokerConfig``), ``settings.limits``,
``settings.redis``, ``settings.storage`` ... Every group's fields are
settings under their own names, with no defaults of their own (the defaults,
documentation and validation of a value are the ``Settings`` field's); all
groups are built from a ``Settings`` in one place (``_group``), once each.
A setting may belong to several groups (``storage_timeout_seconds`` bounds
the stores, Redis commands and a request's whole wait alike); tests/unit/test_config.py checks that every
setting is in one. The rules that span settings live with the group they
concern (``check``), or, for the ``cloud`` profile's rules across groups,
in ``_check_profile``.
"""

from __future__ import annotations

import argparse
import functools
import re
import typing
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from hubbub.storage.config import (
    AccountsChoice,
    InvalidStorageConfig,
    MessagesChoice,
    SettingNamer,
    StorageConfig,
)
from hubbub.storage.sqlite_index import INDEX_IDLE_SECONDS, INDEX_MAX_PENDING

ENV_PREFIX = "HUBBUB_"

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


def _doc(text: str) -> Meta:
    return Meta(description=text)


LogLevel = Literal["debug", "info", "warning", "error"]
Profile = Literal["local", "cloud"]


class ConfigError(Exception):
    """An invalid setting, described in one line."""


class HttpConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The listener and its HTTP side: where it listens, whom it admits, what it reports."""

    host: str
    port: int
    listen_backlog: int
    max_connections: int
    allowed_origins: str
    trusted_proxies: str
    readyz_timeout_seconds: float
    debug_endpoints: bool

    @property
    def origins(self) -> list[re.Pattern[str] | None] | None:
        """Allowed origins for websockets' ``origins=``; None allows any.

        Each is a case-insensitive pattern of the normalised origin (RFC 6454
        compares scheme and host without case; browsers send them lower-case,
        other clients may not). The list includes None (no Origin header):
        the check protects browsers, which always send one, and must not lock
        out bots.
        """
        items: list[re.Pattern[str] | None] = [
            re.compile(re.escape(origin), re.IGNORECASE) for origin in parse_origins(self.allowed_origins)
        ]
        return [*items, None] if items else None

    @property
    def proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        return [ip_network(p.strip(), strict=False) for p in self.trusted_proxies.split(",") if p.strip()]

    def check(self, name: SettingNamer) -> None:
        """Parse the lists here, so that a typo stops start-up."""
        try:
            parse_origins(self.allowed_origins)
        except ValueError as exc:
            raise ConfigError(f"invalid setting {name('allowed_origins')}: {exc}") from None
        try:
            self.proxy_networks  # noqa: B018
        except ValueError as exc:
            raise ConfigError(f"invalid setting {name('trusted_proxies')}: {exc}") from None


class ConnectionConfig(msgspec.Struct, kw_only=True, frozen=True):
    """One WebSocket connection's socket, timers and buffers."""

    auth_timeout_seconds: float
    handshake_timeout_seconds: float
    close_timeout_seconds: float
    outbound_buffer_bytes: int
    socket_send_buffer_bytes: int
    refused_handshake_log_seconds: float
    ping_interval_seconds: float
    ping_timeout_seconds: float


class LimitsConfig(msgspec.Struct, kw_only=True, frozen=True):
    """What one client may send, how fast, how much may wait unserved, how long
    a request may wait on the stores, and how often it may fail to log in:
    everything admission and dispatch need."""

    max_frame_bytes: int
    max_message_chars: int
    rate_per_second: float
    rate_burst: int
    catchup_burst: int
    catchup_window_seconds: float
    auth_first_threshold: int
    auth_first_hold_seconds: float
    max_inflight_sends: int
    read_ahead_bytes: int
    storage_timeout_seconds: float
    """A request's budget on the stores, all its calls together (their waiting only, server/guarded.py)."""
    max_connections_per_user: int
    login_failures_per_username: int
    login_failures_per_address: int
    login_failure_window_seconds: float

    @property
    def hard_frame_bytes(self) -> int:
        """Frames larger than this are refused by the WebSocket layer (close 1009)."""
        return 4 * self.max_frame_bytes


class TokenConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The JWTs issued and accepted."""

    jwt_secret: str
    jwt_ttl_seconds: int
    jwt_issuer: str
    jwt_audience: str

    def check(self, name: SettingNamer) -> None:
        if self.jwt_secret.lower().startswith(PLACEHOLDER_SECRET_PREFIX):
            raise ConfigError(
                f"invalid setting {name('jwt_secret')}: this is the placeholder from .env.example, not a secret;"
                f" make a real one with: {MAKE_A_SECRET}"
            )
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise ConfigError(
                f"invalid setting {name('jwt_secret')}: must be at least 32 bytes; make one with: {MAKE_A_SECRET}"
            )


class PasswordConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Argon2id's cost per password hash."""

    argon2_time_cost: int
    argon2_memory_kib: int
    argon2_parallelism: int


class RedisConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Routing between instances (and the Redis client presence shares)."""

    redis_url: str
    redis_cluster: bool
    """``redis_url`` is one node of a Redis Cluster (server/broker_redis_cluster.py)."""
    redis_prefix: str
    redis_pool_max: int
    broker_probe_seconds: float
    storage_timeout_seconds: float
    """Bounds each Redis command as it bounds a store call."""

    def check(self, name: SettingNamer) -> None:
        if self.redis_cluster and ("{" in self.redis_prefix or "}" in self.redis_prefix):
            # The cluster layout puts the prefix inside a hash tag (presence keys) and
            # must not let it become one (channels): braces in it would break both.
            raise ConfigError(f"invalid setting {name('redis_prefix')}: no braces with {name('redis_cluster')}")


class PresenceConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Who is online, and how an instance says it is alive."""

    presence_max_members: int
    presence_heartbeat_seconds: float
    presence_ttl_seconds: float
    presence_batch_seconds: float

    def check(self, name: SettingNamer) -> None:
        if self.presence_ttl_seconds <= self.presence_heartbeat_seconds:
            raise ConfigError(
                f"{name('presence_ttl_seconds')} must be longer than {name('presence_heartbeat_seconds')}"
            )


class TypingConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Typing indicators: how long one lasts, how often a connection may send one, where they go."""

    typing_ttl_seconds: float
    typing_per_second: float
    typing_burst: int
    typing_max_members: int


class MessagesConfig(msgspec.Struct, kw_only=True, frozen=True):
    """What may be done to a message after it is sent: edit window, reaction and pin limits;
    and how long a send trusts what it knows of a channel's archived state."""

    edit_window_seconds: float
    archived_known_seconds: float
    max_reaction_emojis: int
    max_reactions_per_user: int
    max_pins: int
    unread_count_cap: int
    """Unread and mention counts stop here (a listing's cost per conversation is bounded by it)."""
    search_max_limit: int
    search_relevance_window: int


class RetentionConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Retention (issue 15): the server's own, the bounds of a channel's override, and the purge's pace."""

    retention_max_age_days: int
    retention_max_messages: int
    retention_override_min_age_days: int
    retention_override_max_age_days: int
    retention_override_min_messages: int
    retention_override_max_messages: int
    retention_interval_seconds: float
    retention_batch_size: int
    retention_lock_seconds: float

    def check(self, name: SettingNamer) -> None:
        pairs = (
            ("retention_override_min_age_days", "retention_override_max_age_days"),
            ("retention_override_min_messages", "retention_override_max_messages"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(f"{name(low)} must be at most {name(high)}")


class ProfilesConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Profiles and the directory: field lengths below the schema's caps, the largest search page."""

    max_status_chars: int
    max_avatar_url_chars: int
    user_search_max_limit: int


class AdminConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Administration (issue 15): how soon a server notices an account disabled elsewhere."""

    account_check_seconds: float
    account_check_lookback_seconds: float


class ProcessConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The process as a whole: its files, logs, profile and shutdown."""

    data_dir: str
    log_level: LogLevel
    profile: Profile
    shutdown_grace_seconds: float


Group = TypeVar("Group", bound=msgspec.Struct)

GROUPS: dict[str, type[msgspec.Struct]] = {
    "http": HttpConfig,
    "connection": ConnectionConfig,
    "limits": LimitsConfig,
    "tokens": TokenConfig,
    "passwords": PasswordConfig,
    "storage": StorageConfig,
    "redis": RedisConfig,
    "presence": PresenceConfig,
    "typing": TypingConfig,
    "messages": MessagesConfig,
    "profiles": ProfilesConfig,
    "retention": RetentionConfig,
    "admin": AdminConfig,
    "process": ProcessConfig,
}
"""Each ``Settings`` attribute that is a component's config, and its type."""


def _group(settings: Settings, group: type[Group]) -> Group:
    """The one place a component's config is built: its fields, by name, from ``settings``."""
    return group(**{field: getattr(settings, field) for field in group.__struct_fields__})


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    host: Annotated[str, _doc("Interface to listen on.")] = "127.0.0.1"
    port: Annotated[Port, _doc("TCP port for WebSocket and HTTP (0 picks a free port).")] = 8765
    data_dir: Annotated[str, _doc("Directory of the embedded SQLite store and the dev JWT secret.")] = "./data"
    jwt_secret: Annotated[
        str, _doc("HS256 signing key, at least 32 bytes. Empty: a random dev secret kept in data_dir.")
    ] = ""
    jwt_ttl_seconds: Annotated[Positive, _doc("Lifetime of issued tokens.")] = 86400
    jwt_issuer: Annotated[str, _doc("`iss` claim issued and required.")] = "hubbub"
    jwt_audience: Annotated[str, _doc("`aud` claim issued and required.")] = "hubbub"
    argon2_time_cost: Annotated[Positive, _doc("Argon2id iterations.")] = 3
    argon2_memory_kib: Annotated[Annotated[int, Meta(ge=8)], _doc("Argon2id memory per hash, KiB.")] = 65536
    argon2_parallelism: Annotated[Positive, _doc("Argon2id lanes.")] = 4
    max_frame_bytes: Annotated[
        Annotated[int, Meta(ge=1024)],
        _doc("Largest client frame served; larger gets `too_large`, over 4x this the connection closes 1009."),
    ] = 65536
    max_message_chars: Annotated[Positive, _doc("Longest message text, in characters (`too_large` beyond).")] = 4000
    rate_per_second: Annotated[PositiveFloat, _doc("Sustained requests per second per connection.")] = 20.0
    rate_burst: Annotated[Positive, _doc("Requests a connection may send at once before `rate_limited`.")] = 40
    catchup_burst: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc("Requests beyond `rate_burst` a connection may send after it first authenticates (catching up)."),
    ] = 200
    catchup_window_seconds: Annotated[
        PositiveFloat, _doc("How long after a connection first authenticates its `catchup_burst` may be used.")
    ] = 30.0
    auth_first_threshold: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc(
            "While this many authentications are being served (a reconnect storm), authenticated connections' "
            "requests wait for them (server/auth_first.py); 0: never (the default; 100 is a storm's)."
        ),
    ] = 0
    auth_first_hold_seconds: Annotated[
        PositiveFloat, _doc("Longest an authenticated connection's request waits behind a storm's authentications.")
    ] = 1.0
    max_inflight_sends: Annotated[
        Positive,
        _doc("message.send requests of one connection stored together (pipelined) when the store keeps their order."),
    ] = 32
    max_connections: Annotated[Positive, _doc("Open WebSocket connections per process (HTTP 503 beyond).")] = 50000
    listen_backlog: Annotated[
        Positive, _doc("Pending TCP connections the kernel queues for accept (capped by net.core.somaxconn).")
    ] = 4096
    max_connections_per_user: Annotated[Positive, _doc("Authenticated connections per user per process.")] = 10
    login_failures_per_username: Annotated[
        Positive, _doc("Failed logins per username per window before `rate_limited`.")
    ] = 5
    login_failures_per_address: Annotated[
        Positive, _doc("Failed logins per client address per window before `rate_limited`.")
    ] = 20
    login_failure_window_seconds: Annotated[PositiveFloat, _doc("Window of the failed-login limits.")] = 300.0
    auth_timeout_seconds: Annotated[PositiveFloat, _doc("Unauthenticated connections close (4001) after this.")] = 10.0
    handshake_timeout_seconds: Annotated[
        PositiveFloat,
        _doc("A TCP connection that has not finished its HTTP request or handshake is dropped after this."),
    ] = 10.0
    close_timeout_seconds: Annotated[
        PositiveFloat, _doc("After a close frame, the TCP connection is aborted if the peer has not closed it by then.")
    ] = 5.0
    allowed_origins: Annotated[
        str,
        _doc(
            "Comma-separated allowed browser `Origin`s, `scheme://host[:port]` (scheme and host match in any case;"
            " 403 for others); `null` allows pages without an origin (file://, sandboxed frames);"
            " no `Origin` header is always allowed; empty: any."
        ),
    ] = ""
    trusted_proxies: Annotated[
        str,
        _doc("Comma-separated proxy IPs/CIDRs whose `X-Forwarded-For` gives the client address (login limits)."),
    ] = ""
    outbound_buffer_bytes: Annotated[
        Annotated[int, Meta(ge=4096)],
        _doc(
            "Unread backlog a connection may hold before it is closed as a slow consumer (4008); "
            "one frame is never refused for its size."
        ),
    ] = 1048576
    socket_send_buffer_bytes: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc("SO_SNDBUF of each connection (Linux doubles it): the kernel's share of a slow reader. 0: autotuned."),
    ] = 65536
    read_ahead_bytes: Annotated[
        Annotated[int, Meta(ge=4096)],
        _doc("Received, unserved request bytes (at least 256 per frame) before a connection's socket is not read."),
    ] = 262144
    refused_handshake_log_seconds: Annotated[
        PositiveFloat, _doc("At most one `handshake_refused` log line per reason this often (with a suppressed count).")
    ] = 10.0
    ping_interval_seconds: Annotated[PositiveFloat, _doc("WebSocket keepalive ping interval.")] = 20.0
    ping_timeout_seconds: Annotated[PositiveFloat, _doc("A peer not answering a ping this long is dropped.")] = 20.0
    storage_timeout_seconds: Annotated[
        PositiveFloat,
        _doc(
            "Longest a request waits on the stores, all its calls and retries together, before `unavailable`"
            " (only the waiting: the server's own work between the calls is not counted)."
        ),
    ] = 5.0
    lookup_batch_timeout_seconds: Annotated[
        PositiveFloat,
        _doc(
            "Longest a batch of `auth` lookups, catch-up reads (memberships, unread counts, public channels,"
            " history pages, heads)"
            " or disconnect writes (one store call for hundreds of connections) waits on the store before all"
            " in it fail `unavailable`; a refused connection fails it at once."
        ),
    ] = 20.0
    readyz_timeout_seconds: Annotated[
        PositiveFloat, _doc("Longest wait of `/readyz` on the stores; one silent that long is reported failing (503).")
    ] = 1.0
    shutdown_grace_seconds: Annotated[
        PositiveFloat,
        _doc("On SIGTERM/SIGINT, time allowed for in-flight requests and writes, then for each store to close."),
    ] = 10.0
    log_level: Annotated[LogLevel, _doc("Lowest level logged.")] = "info"
    profile: Annotated[
        Profile,
        _doc("`cloud` refuses the dev JWT secret and plaintext database URLs that lack TLS options."),
    ] = "local"
    accounts_backend: Annotated[
        AccountsChoice,
        _doc("Store of accounts, channels, memberships. Empty: `postgres` when a DSN is set, else `sqlite`."),
    ] = ""
    messages_backend: Annotated[
        MessagesChoice,
        _doc("Store of messages. Empty: `mongo` when a Mongo URL is set, else like the accounts backend."),
    ] = ""
    postgres_dsn: Annotated[str, _doc("PostgreSQL DSN, e.g. `postgresql://hubbub@db:5432/hubbub`.")] = ""
    postgres_replica_dsn: Annotated[
        str,
        _doc(
            "Optional read replica for the reads that tolerate lag: public channels of `channel.list`, `user.search`."
        ),
    ] = ""
    postgres_replica_timeout_seconds: Annotated[
        PositiveFloat,
        _doc("A replica read unanswered this long goes to the primary (shorter than the storage timeout)."),
    ] = 1.0
    postgres_replica_retry_seconds: Annotated[
        PositiveFloat, _doc("After a failed replica read, its reads go to the primary this long before it is retried.")
    ] = 5.0
    postgres_pool_min: Annotated[Annotated[int, Meta(ge=0)], _doc("Connections kept open per pool.")] = 1
    postgres_pool_max: Annotated[Positive, _doc("Most connections per pool.")] = 10
    postgres_lookup_pool_max: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc(
            "Connections of the lookup lane: a pool of its own for the batched reads of `auth` and of the"
            " catch-up (listings, history pages) and disconnects' batched writes, so they never queue behind requests"
            " (0: they use the primary pool)."
        ),
    ] = 2
    auto_migrate: Annotated[
        bool, _doc("Apply pending PostgreSQL migrations at start-up (safe with many instances).")
    ] = True
    mongo_url: Annotated[str, _doc("MongoDB URL, e.g. `mongodb://mongo:27017/?replicaSet=rs0`.")] = ""
    mongo_database: Annotated[str, _doc("MongoDB database name.")] = "hubbub"
    mongo_write_concern: Annotated[
        str, _doc("Write concern `w` of message inserts (`majority` or a node count); journaled.")
    ] = "majority"
    mongo_change_lease_seconds: Annotated[
        PositiveFloat,
        _doc(
            "A MongoDB message change in flight holds back `message.changes` this long at most"
            " (a process that died mid-change; longer than the storage timeout)."
        ),
    ] = 30.0

    redis_url: Annotated[
        str, _doc("Redis URL for routing and presence across instances; empty runs a single instance.")
    ] = ""
    redis_cluster: Annotated[
        bool,
        _doc("`HUBBUB_REDIS_URL` is a node of a Redis Cluster: routing on each channel's shard, presence in one slot."),
    ] = False
    redis_prefix: Annotated[str, _doc("Prefix of every Redis key and channel (several clusters on one Redis).")] = (
        "hubbub"
    )
    redis_pool_max: Annotated[
        Positive,
        _doc("Redis connections for presence; more concurrent commands wait (up to the storage timeout)."),
    ] = 32
    broker_probe_seconds: Annotated[
        PositiveFloat, _doc("Interval of the Redis subscriber self-check (a round trip through pub/sub).")
    ] = 5.0
    presence_max_members: Annotated[
        Positive,
        _doc("Presence events go through conversations of at most this many members (larger: presence.query)."),
    ] = 200
    presence_heartbeat_seconds: Annotated[PositiveFloat, _doc("How often an instance renews its presence.")] = 10.0
    presence_batch_seconds: Annotated[
        Annotated[float, Meta(ge=0, le=5)],
        _doc("Presence changes heard by a connection within this window go out as one `presence.batch` (0: at once)."),
    ] = 0.1
    account_check_seconds: Annotated[
        PositiveFloat,
        _doc("How often each server looks for accounts disabled elsewhere (`hubbub admin`) to close their sockets."),
    ] = 2.0
    account_check_lookback_seconds: Annotated[
        PositiveFloat,
        _doc("How far before its last check each check looks back: covers clocks apart and slow commits."),
    ] = 60.0
    presence_ttl_seconds: Annotated[
        PositiveFloat, _doc("An instance silent this long is dead: its users go offline everywhere.")
    ] = 30.0
    typing_ttl_seconds: Annotated[
        PositiveFloat,
        _doc("A typing indicator shows this long unless renewed (the event's `expires_in_ms`); clients renew sooner."),
    ] = 5.0
    typing_per_second: Annotated[
        PositiveFloat, _doc("Sustained `typing` requests per second per connection announced; more are dropped.")
    ] = 1.0
    typing_burst: Annotated[
        Positive, _doc("`typing` requests a connection may send at once before further ones are dropped.")
    ] = 5
    typing_max_members: Annotated[
        Positive,
        _doc("Typing events go through conversations of at most this many members (larger: answered, not announced)."),
    ] = 100
    edit_window_seconds: Annotated[
        Annotated[float, Meta(ge=0)],
        _doc("How long after sending its author may edit a message (`forbidden` after); 0: no limit."),
    ] = 0.0
    archived_known_seconds: Annotated[
        PositiveFloat,
        _doc(
            "How long message.send trusts a channel's archived state once read, without another store read"
            " (a channel.updated through this instance drops it at once)."
        ),
    ] = 1.0
    max_reaction_emojis: Annotated[
        Positive, _doc("Distinct emojis one message may carry (`too_large` for one more).")
    ] = 50
    max_reactions_per_user: Annotated[
        Positive, _doc("Distinct emojis one user may put on one message (`too_large` for one more).")
    ] = 20
    max_pins: Annotated[Positive, _doc("Pinned messages per conversation (`too_large` for one more).")] = 100
    unread_count_cap: Annotated[
        Annotated[int, Meta(ge=1, le=10000)],
        _doc(
            "Largest unread and mention count of a conversation in listings; counts saturate here"
            " (a listing reads at most this many messages per conversation)."
        ),
    ] = 100
    search_max_limit: Annotated[
        Annotated[int, Meta(ge=1, le=100)],
        _doc("Most results one `message.search` page returns, whatever its `limit`."),
    ] = 50
    search_relevance_window: Annotated[
        Annotated[int, Meta(ge=100, le=1_000_000)],
        _doc("A `message.search` by relevance ranks the newest this many matches (bounds its work); 100-1000000."),
    ] = 1000
    postgres_search_config: Annotated[
        Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]*(?![\s\S])", max_length=63)],
        _doc(
            "PostgreSQL text search configuration of message search (`simple`: every language, no stemming;"
            " `english`, `french`, ...: stemming and stop words). Run `hubbub reindex` after changing it."
        ),
    ] = "simple"
    sqlite_index_idle_seconds: Annotated[
        Annotated[float, Meta(gt=0, le=60)],
        _doc(
            "SQLite: a sent message's search entry is written once no send was stored this long"
            " (many sends in one index transaction, off the acknowledgement; a search sees every"
            " acknowledged message at once)."
        ),
    ] = INDEX_IDLE_SECONDS
    sqlite_index_max_pending: Annotated[
        Annotated[int, Meta(ge=1, le=1_000_000)],
        _doc(
            "SQLite: the search entries are written at once, idle or not, when this many sent messages wait for them."
        ),
    ] = INDEX_MAX_PENDING
    retention_max_age_days: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc("Messages older than this many days are purged, in every conversation without an override; 0: kept."),
    ] = 0
    retention_max_messages: Annotated[
        Annotated[int, Meta(ge=0)],
        _doc("Only the newest this many messages of each conversation without an override are kept; 0: all."),
    ] = 0
    retention_override_min_age_days: Annotated[
        Positive, _doc("Shortest `retention_max_age_days` a channel admin may set on a channel (`bad_request` below).")
    ] = 1
    retention_override_max_age_days: Annotated[
        Positive, _doc("Longest `retention_max_age_days` a channel admin may set on a channel (`bad_request` above).")
    ] = 3650
    retention_override_min_messages: Annotated[
        Positive, _doc("Fewest `retention_max_messages` a channel admin may set on a channel (`bad_request` below).")
    ] = 100
    retention_override_max_messages: Annotated[
        Positive, _doc("Most `retention_max_messages` a channel admin may set on a channel (`bad_request` above).")
    ] = 10_000_000
    retention_interval_seconds: Annotated[
        PositiveFloat, _doc("How often the retention purge runs (one instance of a cluster at a time).")
    ] = 300.0
    retention_batch_size: Annotated[
        Annotated[int, Meta(ge=1, le=10_000)],
        _doc("Most messages one purge step removes (one short store transaction); 1-10000."),
    ] = 500
    retention_lock_seconds: Annotated[
        PositiveFloat,
        _doc(
            "Lifetime of the Redis purge lock (`SET NX PX`); a purge pass stops after half of it"
            " and the next interval goes on."
        ),
    ] = 60.0
    max_status_chars: Annotated[
        Annotated[int, Meta(ge=1, le=256)], _doc("Longest profile status text (`too_large` beyond); at most 256.")
    ] = 100
    max_avatar_url_chars: Annotated[
        Annotated[int, Meta(ge=16, le=2048)], _doc("Longest profile avatar URL (`too_large` beyond); at most 2048.")
    ] = 1024
    user_search_max_limit: Annotated[
        Annotated[int, Meta(ge=1, le=100)], _doc("Most users one `user.search` page returns, whatever its `limit`.")
    ] = 50
    debug_endpoints: Annotated[
        bool, _doc("Serve GET /debug/subscriptions (this instance's routing topics); off in production.")
    ] = False

    # -- each component's own config (built once, on first use) ----------------

    @functools.cached_property
    def http(self) -> HttpConfig:
        return _group(self, HttpConfig)

    @functools.cached_property
    def connection(self) -> ConnectionConfig:
        return _group(self, ConnectionConfig)

    @functools.cached_property
    def limits(self) -> LimitsConfig:
        return _group(self, LimitsConfig)

    @functools.cached_property
    def tokens(self) -> TokenConfig:
        return _group(self, TokenConfig)

    @functools.cached_property
    def passwords(self) -> PasswordConfig:
        return _group(self, PasswordConfig)

    @functools.cached_property
    def storage(self) -> StorageConfig:
        return _group(self, StorageConfig)

    @functools.cached_property
    def redis(self) -> RedisConfig:
        return _group(self, RedisConfig)

    @functools.cached_property
    def presence(self) -> PresenceConfig:
        return _group(self, PresenceConfig)

    @functools.cached_property
    def typing(self) -> TypingConfig:
        return _group(self, TypingConfig)

    @functools.cached_property
    def messages(self) -> MessagesConfig:
        return _group(self, MessagesConfig)

    @functools.cached_property
    def profiles(self) -> ProfilesConfig:
        return _group(self, ProfilesConfig)

    @functools.cached_property
    def retention(self) -> RetentionConfig:
        return _group(self, RetentionConfig)

    @functools.cached_property
    def admin(self) -> AdminConfig:
        return _group(self, AdminConfig)

    @functools.cached_property
    def process(self) -> ProcessConfig:
        return _group(self, ProcessConfig)


# .env.example's value: a copied .env that still has it must not sign tokens.
PLACEHOLDER_SECRET_PREFIX = "change-me"
MAKE_A_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(value: str) -> str:
    """``value`` as a browser serialises an origin (RFC 6454: lower-case
    scheme and host, no default port, IDNA host), or ValueError saying why
    no browser's ``Origin`` header could ever equal it."""
    if value.lower() == "null":
        return "null"  # what browsers send for file:// pages and sandboxed frames
    if value == "*":
        raise ValueError("'*' is not an origin; leave the setting empty to allow any")
    scheme, sep, _ = value.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"{value!r} has no scheme; write it as the browser sends it, e.g. 'https://{value}'")
    parts = urlsplit(value)
    if parts.path == "/" and not parts.query and not parts.fragment:
        raise ValueError(f"{value!r} ends in a trailing slash, which an Origin never has; write {value[:-1]!r}")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"{value!r} has a path; an Origin is only scheme://host[:port]")
    if parts.username is not None or not parts.hostname:
        raise ValueError(f"{value!r} must be scheme://host[:port], without user info")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    host = parts.hostname  # lower-cased by urlsplit
    if ":" in host:
        host = f"[{host}]"  # IPv6
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} has an invalid host name") from None
    scheme = scheme.lower()
    shown_port = "" if port is None or _DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def parse_origins(value: str) -> list[str]:
    """The normalised origins of a comma-separated ``allowed_origins``."""
    return [normalise_origin(item.strip()) for item in value.split(",") if item.strip()]


SETTING_NAMES: tuple[str, ...] = Settings.__struct_fields__


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_settings() -> list[tuple[str, str, Any, str]]:
    """(env var, flag, default, description) of every setting."""
    info = msgspec.inspect.type_info(Settings)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"msgspec describes Settings as a {type(info).__name__}, not as a struct")
    rows = []
    for field in info.fields:
        description = ""
        ftype = field.type
        while isinstance(ftype, msgspec.inspect.Metadata):
            description = description or (ftype.extra_json_schema or {}).get("description", "")
            ftype = ftype.type
        choices = setting_choices(field.name)
        if choices is not None:
            description = f"{description} One of {', '.join('(empty)' if c == '' else f'`{c}`' for c in choices)}."
        rows.append((env_name(field.name), flag_name(field.name), field.default, description))
    return rows


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per setting; values are validated with the environment's."""
    for env, flag, default, description in describe_settings():
        parser.add_argument(
            flag, dest=flag[2:].replace("-", "_"), default=None, help=f"{description} [{env}={default}]"
        )


def load_settings(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Settings:
    """Settings from ``HUBBUB_*`` variables, overridden by CLI flags."""
    raw: dict[str, str] = {}
    source: dict[str, str] = {}
    for field in SETTING_NAMES:
        name = env_name(field)
        if name in environ:
            raw[field] = environ[name]
            source[field] = name
        value = flags.get(field) if flags else None
        if value is not None:
            raw[field] = value
            source[field] = flag_name(field)
    # A misspelt variable would silently fall back to a default: refuse it.
    # HUBBUB_TEST_* belong to the test suite, not the server.
    unknown = sorted(
        k
        for k in environ
        if k.startswith(ENV_PREFIX)
        and not k.startswith(ENV_PREFIX + "TEST_")
        and k[len(ENV_PREFIX) :].lower() not in SETTING_NAMES
    )
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]}")
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, raw, source)) from None

    def named(field: str) -> str:
        """A setting as the operator gave it: the flag or the variable."""
        return source.get(field, env_name(field))

    # Each group's own rules, then the profile's, which span groups.
    for group in (settings.tokens, settings.http, settings.presence, settings.redis, settings.retention):
        group.check(named)
    try:
        settings.storage.check()
    except InvalidStorageConfig as exc:
        raise ConfigError(exc.explain(named)) from None
    _check_profile(settings, source)
    return settings


def _check_profile(s: Settings, source: Mapping[str, str]) -> None:
    """What the ``cloud`` profile refuses, across groups."""
    if s.profile != "cloud":
        return
    if source.get("jwt_secret", "").startswith("--"):
        raise ConfigError("profile cloud takes secrets from the environment only, not from flags")
    if not s.tokens.jwt_secret:
        raise ConfigError("profile cloud needs HUBBUB_JWT_SECRET (the dev secret is not allowed)")
    storage = s.storage
    if storage.resolved_accounts_backend == "sqlite":
        raise ConfigError("profile cloud needs HUBBUB_POSTGRES_DSN (no embedded store in the cloud)")
    if storage.resolved_messages_backend == "sqlite":
        raise ConfigError("profile cloud needs a shared message store (mongo or postgres), not sqlite")
    for field in ("postgres_dsn", "postgres_replica_dsn"):
        dsn = getattr(storage, field)
        if dsn and not any(f"sslmode={mode}" in dsn for mode in ("require", "verify-ca", "verify-full")):
            raise ConfigError(
                f"profile cloud needs TLS to PostgreSQL: add sslmode=require (or verify-full) to {env_name(field)}"
            )
    if storage.mongo_url and "tls=true" not in storage.mongo_url and not storage.mongo_url.startswith("mongodb+srv://"):
        raise ConfigError("profile cloud needs TLS to MongoDB: use mongodb+srv:// or add tls=true")


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, str], source: Mapping[str, str]) -> str:
    message = str(exc)
    for field, origin in source.items():
        if message.endswith(f"`$.{field}`"):
            choices = setting_choices(field)
            if choices is not None:
                return f"invalid setting {origin}={raw[field]!r}: must be one of {', '.join(map(_shown, choices))}"
            reason = message.rsplit(" - at ", 1)[0]
            return f"invalid setting {origin}={raw[field]!r}: {reason}"
    return f"invalid settings: {message}"


def _shown(choice: object) -> str:
    return "(empty)" if choice == "" else str(choice)


@functools.cache
def _setting_hints() -> dict[str, Any]:
    """Every setting's annotation, evaluated once: evaluating them all per setting made
    ``hubbub serve``'s flags (``add_flags``) quadratic in the number of settings."""
    return typing.get_type_hints(Settings, include_extras=True)


def setting_choices(field: str) -> tuple[object, ...] | None:
    """The valid values of an enum (Literal) setting, in declaration order; None for the others."""
    hint = _setting_hints()[field]
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def settings_markdown() -> str:
    """The README's settings table, generated so the two cannot drift."""
    lines = ["| Environment variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for env, flag, default, description in describe_settings():
        shown = f"`{default}`" if default != "" else "(empty)"
        lines.append(f"| `{env}` | `{flag}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"
