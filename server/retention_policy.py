"""The rules of retention (issue 15), pure: which retention applies to a
conversation, what a channel admin may set, and what a purge removes.

The server's own retention (``HUBBUB_RETENTION_MAX_AGE_DAYS``,
``HUBBUB_RETENTION_MAX_MESSAGES``; 0: off) applies to every conversation; a
channel's owners and admins may override either value for their channel
(``channel.update``), within the operator's bounds. An override replaces the
server's value of that rule only (a channel that overrides the age still
follows the server's message count); 0 removes it. DMs have no override:
only the server's retention applies to them. A message is expired when
either rule that applies says so. No clock, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.server.config import RetentionConfig, Settings
from hubbub.server.errors import ApiError
from hubbub.storage.records import ChannelEdit, ConversationRecord

DAY_MS = 86_400_000


class PurgeRule(NamedTuple):
    """What ``MessageLog.purge`` is asked to remove from one conversation."""

    before_ts: int | None
    keep_last: int | None


class RetentionPolicy:
    def __init__(self, config: RetentionConfig) -> None:
        self.config = config

    @property
    def global_active(self) -> bool:
        """Whether the server's own retention applies to every conversation (else only overrides do)."""
        return self.config.retention_max_age_days > 0 or self.config.retention_max_messages > 0

    def effective(self, record: ConversationRecord) -> tuple[int, int]:
        """(max age in days, max messages) that apply to the conversation; 0: that rule is off."""
        age = record.retention_max_age_days or self.config.retention_max_age_days
        count = record.retention_max_messages or self.config.retention_max_messages
        return age, count

    def rule(self, record: ConversationRecord, now: int) -> PurgeRule | None:
        """The purge of the conversation at ``now`` (ms); None when nothing expires in it."""
        age, count = self.effective(record)
        if not age and not count:
            return None
        return PurgeRule(before_ts=now - age * DAY_MS if age else None, keep_last=count or None)

    def view(self, record: ConversationRecord) -> frames.Retention:
        """The conversation's retention as clients see it."""
        age, count = self.effective(record)
        return frames.Retention(
            max_age_days=record.retention_max_age_days or None,
            max_messages=record.retention_max_messages or None,
            effective_max_age_days=age or None,
            effective_max_messages=count or None,
        )

    def check_override(self, edit: ChannelEdit) -> None:
        """Refuse (``bad_request``) an override outside the operator's bounds; 0 (remove it) always passes."""
        c = self.config
        bounds = (
            ("retention_max_age_days", edit.retention_max_age_days, c.retention_override_min_age_days,
             c.retention_override_max_age_days, "days"),
            ("retention_max_messages", edit.retention_max_messages, c.retention_override_min_messages,
             c.retention_override_max_messages, "messages"),
        )  # fmt: skip
        for field, value, low, high, unit in bounds:
            if value is None or value == 0:
                continue
            if not low <= value <= high:
                raise ApiError(
                    ErrorCode.BAD_REQUEST,
                    f"{field} must be between {low} and {high} {unit} on this server (or 0 to follow the server's)",
                )


def default_policy() -> RetentionPolicy:
    """The policy of the default settings (retention off), for components built without settings."""
    return RetentionPolicy(Settings().retention)
