"""Stable error codes and WebSocket close codes of the Hubbub protocol.

These strings and numbers are part of the wire contract: clients switch on
them, so they never change meaning once released.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an error reply."""

    BAD_REQUEST = "bad_request"
    """The frame is not valid JSON, not an object, or does not match its schema."""
    UNAUTHORIZED = "unauthorized"
    """Not authenticated yet, or wrong credentials, or a bad/expired token."""
    FORBIDDEN = "forbidden"
    """Authenticated, and the target is visible, but the action is not allowed."""
    NOT_FOUND = "not_found"
    """The target does not exist or is not visible to the caller."""
    CONFLICT = "conflict"
    """The request clashes with existing state (for example a taken username)."""
    RATE_LIMITED = "rate_limited"
    """Too many requests, failed logins or connections; retry later."""
    TOO_LARGE = "too_large"
    """The frame or a field in it is over its documented limit."""
    ACCOUNT_DISABLED = "account_disabled"
    """The account is disabled by a workspace admin: no login or token authenticates until it is re-enabled."""
    ARCHIVED = "archived"
    """The channel is archived, so read-only: unarchive it first (``channel.update``)."""
    UNAVAILABLE = "unavailable"
    """A backing store is unreachable or timed out; retry later. A message.send
    may still have been stored: resend it with the same client_msg_id."""
    INTERNAL = "internal"
    """An unexpected server fault; the request may be retried."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    """The client or server closed the connection normally."""
    GOING_AWAY = 1001
    """The server is shutting down; reconnect (to another instance)."""
    PROTOCOL_ERROR = 1002
    """A frame broke the WebSocket protocol (RFC 6455), e.g. an unmasked client frame."""
    INVALID_DATA = 1007
    """A text frame was not valid UTF-8."""
    MESSAGE_TOO_BIG = 1009
    """A frame exceeded the hard frame size cap; the connection is dropped."""
    INTERNAL_ERROR = 1011
    """An unexpected server fault on this connection."""
    SERVICE_RESTART = 1012
    """The server is restarting; reconnect after a short backoff."""
    AUTH_TIMEOUT = 4001
    """The connection did not authenticate within the auth timeout."""
    SESSION_ENDED = 4003
    """The user changed their password or logged out everywhere: authenticate again (login)."""
    ACCOUNT_DISABLED = 4004
    """A workspace admin disabled the account: do not reconnect; logins answer ``account_disabled``."""
    SLOW_CONSUMER = 4008
    """The client read too slowly and its outbound buffer overflowed."""
