"""Settings: every tunable of the server, its default, and where it comes from.

Each field is one setting, read from the environment variable
``HUBBUB_<NAME>`` or the CLI flag ``--<name-with-dashes>`` (the flag wins).
Values are validated by msgspec against the annotations below; an invalid
value stops start-up with one clear line. README.md's settings table is
checked against this class by tests/test_docs.py.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from storage.config import AccountsBackend, InvalidStorageConfig, MessagesBackend, StorageConfig

ENV_PREFIX = "HUBBUB_"

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


def _doc(text: str) -> Meta:
    return Meta(description=text)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
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
        _doc("Unsent bytes a connection may hold before it is closed as a slow consumer (4008)."),
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
        _doc("Longest a request waits on the stores, all its calls and retries together, before `unavailable`."),
    ] = 5.0
    readyz_timeout_seconds: Annotated[
        PositiveFloat, _doc("Longest wait of `/readyz` on the stores; one silent that long is reported failing (503).")
    ] = 1.0
    shutdown_grace_seconds: Annotated[
        PositiveFloat, _doc("On SIGTERM/SIGINT, time allowed for in-flight requests and writes.")
    ] = 10.0
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _doc("Lowest level logged.")] = "info"
    profile: Annotated[
        Literal["local", "cloud"],
        _doc("`cloud` refuses the dev JWT secret and plaintext database URLs that lack TLS options."),
    ] = "local"
    accounts_backend: Annotated[
        Literal["", "sqlite", "postgres"],
        _doc("Store of accounts, channels, memberships. Empty: `postgres` when a DSN is set, else `sqlite`."),
    ] = ""
    messages_backend: Annotated[
        Literal["", "sqlite", "mongo", "postgres"],
        _doc("Store of messages. Empty: `mongo` when a Mongo URL is set, else like the accounts backend."),
    ] = ""
    postgres_dsn: Annotated[str, _doc("PostgreSQL DSN, e.g. `postgresql://hubbub@db:5432/hubbub`.")] = ""
    postgres_replica_dsn: Annotated[
        str, _doc("Optional read replica for listings (public channels, users, DM members).")
    ] = ""
    postgres_pool_min: Annotated[Annotated[int, Meta(ge=0)], _doc("Connections kept open per pool.")] = 1
    postgres_pool_max: Annotated[Positive, _doc("Most connections per pool.")] = 10
    auto_migrate: Annotated[
        bool, _doc("Apply pending PostgreSQL migrations at start-up (safe with many instances).")
    ] = True
    mongo_url: Annotated[str, _doc("MongoDB URL, e.g. `mongodb://mongo:27017/?replicaSet=rs0`.")] = ""
    mongo_database: Annotated[str, _doc("MongoDB database name.")] = "hubbub"
    mongo_write_concern: Annotated[
        str, _doc("Write concern `w` of message inserts (`majority` or a node count); journaled.")
    ] = "majority"

    redis_url: Annotated[
        str, _doc("Redis URL for routing and presence across instances; empty runs a single instance.")
    ] = ""
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
    presence_ttl_seconds: Annotated[
        PositiveFloat, _doc("An instance silent this long is dead: its users go offline everywhere.")
    ] = 30.0
    debug_endpoints: Annotated[
        bool, _doc("Serve GET /debug/subscriptions (this instance's routing topics); off in production.")
    ] = False

    @property
    def resolved_accounts_backend(self) -> AccountsBackend:
        return storage_config(self).resolved_accounts_backend

    @property
    def resolved_messages_backend(self) -> MessagesBackend:
        return storage_config(self).resolved_messages_backend

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

    @property
    def hard_frame_bytes(self) -> int:
        """Frames larger than this are refused by the WebSocket layer (close 1009)."""
        return 4 * self.max_frame_bytes


class ConfigError(Exception):
    """An invalid setting, described in one line."""


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
    assert isinstance(info, msgspec.inspect.StructType)
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
        if flags and flags.get(field) is not None:
            value = flags[field]
            assert value is not None
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
    secret_source = source.get("jwt_secret", "HUBBUB_JWT_SECRET")
    if settings.jwt_secret.lower().startswith(PLACEHOLDER_SECRET_PREFIX):
        raise ConfigError(
            f"invalid setting {secret_source}: this is the placeholder from .env.example, not a secret;"
            f" make a real one with: {MAKE_A_SECRET}"
        )
    if settings.jwt_secret and len(settings.jwt_secret.encode()) < 32:
        raise ConfigError(f"invalid setting {secret_source}: must be at least 32 bytes; make one with: {MAKE_A_SECRET}")
    try:
        parse_origins(settings.allowed_origins)
    except ValueError as exc:
        raise ConfigError(f"invalid setting {source.get('allowed_origins', 'HUBBUB_ALLOWED_ORIGINS')}: {exc}") from None
    try:
        settings.proxy_networks  # noqa: B018 - parsed here so a typo stops start-up
    except ValueError as exc:
        raise ConfigError(f"invalid setting HUBBUB_TRUSTED_PROXIES: {exc}") from None
    _check_consistency(settings)
    if settings.profile == "cloud" and source.get("jwt_secret", "").startswith("--"):
        raise ConfigError("profile cloud takes secrets from the environment only, not from flags")
    return settings


def _check_consistency(s: Settings) -> None:
    """Rules that span several settings."""
    try:
        storage_config(s).check()  # the storage rules live with StorageConfig
    except InvalidStorageConfig as exc:
        raise ConfigError(exc.explain(env_name)) from None
    if s.presence_ttl_seconds <= s.presence_heartbeat_seconds:
        raise ConfigError("HUBBUB_PRESENCE_TTL_SECONDS must be longer than HUBBUB_PRESENCE_HEARTBEAT_SECONDS")
    if s.profile == "cloud":
        if not s.jwt_secret:
            raise ConfigError("profile cloud needs HUBBUB_JWT_SECRET (the dev secret is not allowed)")
        if s.resolved_accounts_backend == "sqlite":
            raise ConfigError("profile cloud needs HUBBUB_POSTGRES_DSN (no embedded store in the cloud)")
        if s.resolved_messages_backend == "sqlite":
            raise ConfigError("profile cloud needs a shared message store (mongo or postgres), not sqlite")
        for name, dsn in (
            ("HUBBUB_POSTGRES_DSN", s.postgres_dsn),
            ("HUBBUB_POSTGRES_REPLICA_DSN", s.postgres_replica_dsn),
        ):
            if dsn and not any(f"sslmode={mode}" in dsn for mode in ("require", "verify-ca", "verify-full")):
                raise ConfigError(
                    f"profile cloud needs TLS to PostgreSQL: add sslmode=require (or verify-full) to {name}"
                )
        if s.mongo_url and "tls=true" not in s.mongo_url and not s.mongo_url.startswith("mongodb+srv://"):
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


def setting_choices(field: str) -> tuple[object, ...] | None:
    """The valid values of an enum (Literal) setting, in declaration order; None for the others."""
    hint = typing.get_type_hints(Settings, include_extras=True)[field]
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


def storage_config(s: Settings) -> StorageConfig:
    """The settings of the stores, under their own names."""
    return StorageConfig(**{field: getattr(s, field) for field in StorageConfig.__struct_fields__})
