"""Every frame of the Hubbub protocol, declared once as a typed msgspec schema.

Client requests are a tagged union on ``type``; each request gets exactly one
reply frame, ``result`` or ``error``, echoing the request ``id``. Every other
server frame is an event, whose ``type`` names it. The schemas here are the
single source of truth: the server validates with them, the client decodes
with them, ``protocol/schema.json`` is generated from them and the tests
check every example in PROTOCOL.md against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

PROTOCOL_VERSION = "hubbub.v1"
"""The WebSocket subprotocol this module speaks."""

# ---------------------------------------------------------------------------
# Field types with their schema-level limits. Limits that operators can tune
# (message length, frame size) are checked by the server, not here.

RequestId = str | int
"""A client-chosen request id, echoed in the reply. Strings up to 64 chars."""

# Patterns are matched whole, and mean the same to msgspec (Python's
# re.search) and to JSON Schema validators (ECMA-262): `^` is the start in
# both, but `$` also matches before a final newline in Python, and `\A`/`\Z`
# do not exist in ECMA-262. `(?![\s\S])`, "no character follows", is the end
# of the string in both. tests/test_text_validation.py checks every pattern.
END = r"(?![\s\S])"
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*" + END
CHANNEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*" + END
SINGLE_LINE_PATTERN = r"^[^\x00-\x1f]*" + END
"""No C0 control character (U+0000-U+001F): names, topics, ids, tokens. PostgreSQL
text cannot hold U+0000, and the others only garble a display."""
MESSAGE_TEXT_PATTERN = r"^[^\x00-\x08\x0b-\x1f]*" + END
"""Like SINGLE_LINE_PATTERN, but tab (U+0009) and line feed (U+000A) are allowed."""
PASSWORD_PATTERN = r"^[^\x00]*" + END
"""Only U+0000 is refused: passwords are hashed, never stored or shown as text."""

Username = Annotated[str, Meta(min_length=3, max_length=32, pattern=USERNAME_PATTERN)]
Password = Annotated[str, Meta(min_length=8, max_length=256, pattern=PASSWORD_PATTERN)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE_PATTERN)]
ChannelName = Annotated[str, Meta(min_length=1, max_length=80, pattern=CHANNEL_NAME_PATTERN)]
Topic = Annotated[str, Meta(max_length=250, pattern=SINGLE_LINE_PATTERN)]
Token = Annotated[str, Meta(min_length=1, max_length=4096, pattern=SINGLE_LINE_PATTERN)]
ObjectId = Annotated[int, Meta(ge=1, le=2**53)]
Seq = Annotated[int, Meta(ge=0, le=2**53)]
# No msgspec pattern on these two: message.send is the hot path, and a regex
# over every text costs ~3 ns a character (12 us for 4000). protocol.codec
# checks them only when the frame holds an escape, the one way a control
# character gets into a JSON string; protocol.schema adds the patterns to the
# JSON Schema (CODEC_CHECKED_PATTERNS).
ClientMsgId = Annotated[str, Meta(min_length=1, max_length=64)]
MessageText = Annotated[str, Meta(min_length=1)]
EditedText = Annotated[str, Meta(min_length=1, pattern=MESSAGE_TEXT_PATTERN)]
"""An edit's text: checked by msgspec itself (edits are not the hot path)."""
HistoryLimit = Annotated[int, Meta(ge=1, le=100)]
MessageId = Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE_PATTERN)]
"""A message id in a request: opaque, so only its shape is checked (1-64 characters, no control characters)."""
MAX_DM_OTHERS = 8
MAX_NESTING_DEPTH = 32
"""Deepest nesting of arrays and objects in a request (the frame's own object is level 1).

No valid request nests deeper than 2 today; the margin leaves room for new
fields. protocol.codec refuses deeper frames with bad_request."""
MAX_PRESENCE_QUERY = 100
DmOthers = Annotated[list[ObjectId], Meta(min_length=1, max_length=MAX_DM_OTHERS)]
PresenceUsers = Annotated[list[ObjectId], Meta(min_length=1, max_length=MAX_PRESENCE_QUERY)]
Timestamp = int
"""Milliseconds since the Unix epoch, UTC."""
ConversationKind = Literal["channel", "dm"]
PresenceStatus = Literal["online", "offline"]
HistoryOrder = Literal["desc", "asc"]
MentionAll = Literal["channel", "here"]
MessageChangeKind = Literal["edited", "reaction", "thread", "pinned", "unpinned"]
Rev = Annotated[int, Meta(ge=0, le=2**53)]
MAX_EMOJI_CHARS = 64
"""Longest ``emoji`` of a reaction request (a ``:short_name:`` or a Unicode sequence)."""
Emoji = Annotated[str, Meta(min_length=1, max_length=MAX_EMOJI_CHARS, pattern=SINGLE_LINE_PATTERN)]
"""A Unicode emoji or a ``:short_name:``; which ones exist is checked by protocol.emoji."""
REACTION_USERS_SHOWN = 20
"""How many of an emoji's reacting users a message shows (``Reaction.users``)."""
ChangesLimit = Annotated[int, Meta(ge=1, le=100)]
MAX_STATUS_CHARS = 256
"""Longest status text any server accepts; ``max_status_chars`` may lower it."""
MAX_AVATAR_URL_CHARS = 2048
"""Longest avatar URL any server accepts; ``max_avatar_url_chars`` may lower it."""
MAX_USER_IDS = 100
"""Most users one ``user.get`` reads."""
StatusText = Annotated[str, Meta(max_length=MAX_STATUS_CHARS, pattern=SINGLE_LINE_PATTERN)]
StatusEmoji = Annotated[str, Meta(max_length=MAX_EMOJI_CHARS, pattern=SINGLE_LINE_PATTERN)]
"""A status's emoji: empty for none, else one emoji or ``:short_name:`` (checked by protocol.emoji)."""
AVATAR_URL_PATTERN = r"^(https?://[^\x00-\x20\x7f]+)?" + END
"""Empty (no avatar) or an http(s) URL without spaces or control characters; the server also checks it has a host."""
AvatarUrl = Annotated[str, Meta(max_length=MAX_AVATAR_URL_CHARS, pattern=AVATAR_URL_PATTERN)]
TimeZone = Annotated[str, Meta(max_length=64, pattern=SINGLE_LINE_PATTERN)]
"""Empty (not set) or an IANA time zone name, e.g. ``Europe/Paris`` (checked against the tz database)."""
SearchQuery = Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE_PATTERN)]
SearchCursor = Annotated[str, Meta(min_length=1, max_length=300, pattern=SINGLE_LINE_PATTERN)]
"""A ``user.search`` page's ``next_cursor``, opaque: where the page before ended."""
UserSearchLimit = Annotated[int, Meta(ge=1, le=100)]
UserIds = Annotated[list[ObjectId], Meta(min_length=1, max_length=MAX_USER_IDS)]
OldPassword = Annotated[str, Meta(min_length=1, max_length=256, pattern=PASSWORD_PATTERN)]
"""The current password, as it was set (any length a password could have)."""
Role = Literal["owner", "admin", "member"]
"""A channel member's role; DMs have none."""
WorkspaceRole = Literal["member", "admin"]
"""A user's role in the workspace: admins administer every channel and the accounts (issue 15)."""
InvitePolicy = Literal["anyone", "admins"]
"""Who may invite to a channel: any member, or only its owners and admins."""
Purpose = Annotated[str, Meta(max_length=250, pattern=SINGLE_LINE_PATTERN)]
RetentionValue = Annotated[int, Meta(ge=0, le=2**31 - 1)]
"""A channel's retention override (days or messages); 0 removes it. The server's bounds apply (PROTOCOL.md)."""
DmName = Annotated[str, Meta(min_length=1, max_length=80, pattern=SINGLE_LINE_PATTERN)]
MAX_MESSAGE_SEARCH_QUERY_CHARS = 256
"""Longest ``message.search`` query."""
MessageSearchQuery = Annotated[
    str, Meta(min_length=1, max_length=MAX_MESSAGE_SEARCH_QUERY_CHARS, pattern=SINGLE_LINE_PATTERN)
]
MessageSearchCursor = Annotated[str, Meta(min_length=1, max_length=100, pattern=SINGLE_LINE_PATTERN)]
"""A ``message.search`` page's ``next_cursor``, opaque: where the page before ended."""
MessageSearchLimit = Annotated[int, Meta(ge=1, le=100)]
SearchOrder = Literal["newest", "relevance"]
SearchTimestamp = Annotated[int, Meta(ge=0, le=2**53)]
"""A date-range bound of ``message.search``: milliseconds since the Unix epoch."""
Highlight = Annotated[list[int], Meta(min_length=2, max_length=2)]
"""``[start, end)``: code point offsets of a matched word in a message's ``text``."""

PATTERN_RULES = {
    USERNAME_PATTERN: "of lowercase letters, digits, '_', '.' and '-', starting with a letter or digit",
    CHANNEL_NAME_PATTERN: "of lowercase letters, digits, '_' and '-', starting with a letter or digit",
    SINGLE_LINE_PATTERN: "without control characters (U+0000-U+001F)",
    MESSAGE_TEXT_PATTERN: "without control characters (U+0000-U+001F) other than tab and line feed",
    PASSWORD_PATTERN: "without U+0000",
    AVATAR_URL_PATTERN: "empty, or an http:// or https:// URL without spaces or control characters",
}
"""What each pattern allows, in words: error messages say this instead of the regex."""

CODEC_CHECKED_PATTERNS = {
    ("MessageSend", "text"): MESSAGE_TEXT_PATTERN,
    ("MessageSend", "client_msg_id"): SINGLE_LINE_PATTERN,
}
"""Patterns protocol.codec enforces after decoding, by (request struct, field)."""

# ---------------------------------------------------------------------------
# Objects that appear inside results and events.


class User(Struct, kw_only=True, omit_defaults=True):
    """A user. The profile fields (after ``created_at``) are left out while at
    their defaults: a user who set nothing looks as before profiles existed."""

    id: int
    username: str
    display_name: str
    created_at: Timestamp
    status_text: str = ""
    status_emoji: str = ""
    status_expires_at: Timestamp | None = None
    """When the status stops showing; an expired status is never sent (the three are left out)."""
    time_zone: str = ""
    avatar_url: str = ""
    searchable: bool = True
    """False: the user is left out of ``user.search`` (still readable with ``user.get``)."""
    workspace_role: WorkspaceRole = "member"
    """``admin``: a workspace admin (issue 15); left out for members."""


class Retention(Struct, kw_only=True, omit_defaults=True):
    """Which messages of a conversation the server keeps (PROTOCOL.md, Retention); a field left out: no limit."""

    max_age_days: int | None = None
    """The channel's own override of the age limit; null: it follows the server's."""
    max_messages: int | None = None
    """The channel's own override of the message count; null: it follows the server's."""
    effective_max_age_days: int | None = None
    """What applies: messages older than this many days are purged; null: kept whatever their age."""
    effective_max_messages: int | None = None
    """What applies: only the newest this many messages are kept; null: however many."""


class Conversation(Struct, kw_only=True):
    """A channel or a direct-message conversation."""

    id: int
    kind: ConversationKind
    name: str | None
    """Channel name; null for DMs."""
    topic: str
    private: bool
    """True for private channels and every DM."""
    created_by: int
    created_at: Timestamp
    last_seq: Seq
    """Seq of the newest message (0 when empty): compare with the last seq seen."""
    last_rev: Rev = 0
    """Revision of the newest change (0 when empty): compare with the last revision synced (§9)."""
    member: bool
    """Whether the caller is a member."""
    member_ids: list[int] | None = None
    """For DMs: every participant, the caller included. Null for channels."""
    read_seq: Seq = 0
    """The caller's read position: the seq of the newest message they have read (PROTOCOL.md §16). 0 for non-members."""
    unread_count: int = 0
    """Messages after ``read_seq`` that count as unread (§16); saturates at the server's ``unread_count_cap``."""
    mention_count: int = 0
    """Those of them that mention the caller (``@username``, ``@channel``, ``@here``)."""
    muted: bool = False
    """The caller muted the conversation: still delivered, no badge."""
    # Channel administration (issue 12).
    purpose: str = ""
    archived: bool = False
    """Read-only, hidden from browsing (channel.list ``include_archived``)."""
    invite_policy: InvitePolicy = "anyone"
    role: Role | None = None
    """The caller's role in a channel they are a member of, in replies; null
    for DMs, non-members and in events to every member (``channel.updated``)."""
    # Retention (issue 15).
    oldest_seq: Seq = 1
    """The oldest seq retention kept: every message below it was purged (1 when none was); do not fetch below it."""
    retention: Retention | None = None
    """The conversation's retention, its override and what applies."""


class Member(User, kw_only=True, omit_defaults=True):
    """A channel member: the User and their role in the channel (``channel.members``)."""

    role: Role


class Reaction(Struct, kw_only=True):
    emoji: str
    """A Unicode emoji (short names are stored as the emoji they name)."""
    count: int
    users: list[int]
    """The first users who reacted with it, in order, up to REACTION_USERS_SHOWN."""


class Message(Struct, kw_only=True, omit_defaults=True):
    """A message and its current state. Fields still at their default are
    left out of the JSON (a plain message has only the first eight)."""

    id: str
    conversation_id: int
    seq: Seq
    sender_id: int
    text: str
    """Empty for a deleted message."""
    client_msg_id: str
    ts: Timestamp
    rev: Rev
    """Revision of the latest change to this message (its send included)."""
    thread_root_id: str | None = None
    """For a thread reply: the id of the thread's root message."""
    also_in_channel: bool = False
    """A thread reply that is also shown in the main timeline."""
    reply_count: int = 0
    """For a thread root: how many replies it has (deleted ones not counted)."""
    last_reply_ts: Timestamp | None = None
    repliers: list[int] = []
    """For a thread root: the latest distinct repliers, newest first (at most 5)."""
    edited_ts: Timestamp | None = None
    deleted: bool = False
    """A tombstone: the message was deleted; text, mentions, reactions and pin are gone."""
    mentions: list[int] = []
    """Members mentioned with ``@username``."""
    mention_all: MentionAll | None = None
    """``channel`` or ``here`` when the text says ``@channel`` or ``@here``."""
    reactions: list[Reaction] = []
    pinned_by: int | None = None
    pinned_ts: Timestamp | None = None
    my_reactions: list[str] | None = None
    """The caller's own reactions (emojis) on the message; only in replies to a
    request, never in events (which every member shares)."""


class Presence(Struct, kw_only=True):
    user_id: int
    status: PresenceStatus
    last_seen: Timestamp | None
    """When the user was last connected; null if never."""


class ErrorBody(Struct, kw_only=True):
    code: str
    message: str


class Limits(Struct, kw_only=True):
    """The limits of this server, announced in ``hello``."""

    max_frame_bytes: int
    max_message_chars: int
    requests_per_second: float
    request_burst: int
    auth_timeout_ms: int


# ---------------------------------------------------------------------------
# Requests (client -> server).


class Request(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    id: RequestId


class Ping(Request, tag="ping"):
    pass


class Register(Request, tag="register"):
    username: Username
    password: Password
    display_name: DisplayName


class Login(Request, tag="login"):
    username: Username
    password: Password


class Auth(Request, tag="auth"):
    token: Token


class Me(Request, tag="me"):
    pass


class ChannelCreate(Request, tag="channel.create"):
    name: ChannelName
    topic: Topic = ""
    private: bool = False


class ChannelList(Request, tag="channel.list"):
    include_archived: bool = False
    """Also list archived public channels the caller is not a member of."""
    pass


class ChannelJoin(Request, tag="channel.join"):
    channel_id: ObjectId


class ChannelInvite(Request, tag="channel.invite"):
    channel_id: ObjectId
    user_id: ObjectId


class ChannelLeave(Request, tag="channel.leave"):
    channel_id: ObjectId


class ChannelMembers(Request, tag="channel.members"):
    channel_id: ObjectId


class ChannelUpdate(Request, tag="channel.update"):
    """Owners and admins change a channel: any of the fields, the others as they are."""

    channel_id: ObjectId
    name: ChannelName | None = None
    topic: Topic | None = None
    purpose: Purpose | None = None
    archived: bool | None = None
    invite_policy: InvitePolicy | None = None
    retention_max_age_days: RetentionValue | None = None
    """Purge messages older than this many days (0: follow the server's again), within the server's bounds."""
    retention_max_messages: RetentionValue | None = None
    """Keep only the newest this many messages (0: follow the server's again), within the server's bounds."""


class ChannelKick(Request, tag="channel.kick"):
    """Owners and admins remove a member from a channel."""

    channel_id: ObjectId
    user_id: ObjectId


class ChannelSetRole(Request, tag="channel.set_role"):
    """Owners and admins promote and demote members."""

    channel_id: ObjectId
    user_id: ObjectId
    role: Role


class DmOpen(Request, tag="dm.open"):
    user_ids: DmOthers


class DmRename(Request, tag="dm.rename"):
    """Any participant names a group DM (three or more people); null removes the name."""

    conversation_id: ObjectId
    name: DmName | None


class DmList(Request, tag="dm.list"):
    pass


class MessageSend(Request, tag="message.send"):
    conversation_id: ObjectId
    text: MessageText
    client_msg_id: ClientMsgId
    thread_root_id: MessageId | None = None
    """Reply in the thread of this message (a reply to a reply joins the same thread)."""
    also_in_channel: bool = False
    """For a reply: show it in the main timeline too."""


class MessageHistory(Request, tag="message.history"):
    conversation_id: ObjectId
    before: Seq | None = None
    """Only messages with seq < before."""
    after: Seq | None = None
    """Only messages with seq > after."""
    limit: HistoryLimit = 50
    order: HistoryOrder = "desc"
    include_replies: bool = True
    """False for the main timeline only: thread replies are left out unless also_in_channel."""


class ThreadHistory(Request, tag="thread.history"):
    conversation_id: ObjectId
    thread_root_id: MessageId
    before: Seq | None = None
    after: Seq | None = None
    limit: HistoryLimit = 50
    order: HistoryOrder = "asc"


class MessageEdit(Request, tag="message.edit"):
    conversation_id: ObjectId
    message_id: MessageId
    text: EditedText


class MessageDelete(Request, tag="message.delete"):
    conversation_id: ObjectId
    message_id: MessageId


class ReactionAdd(Request, tag="reaction.add"):
    conversation_id: ObjectId
    message_id: MessageId
    emoji: Emoji


class ReactionRemove(Request, tag="reaction.remove"):
    conversation_id: ObjectId
    message_id: MessageId
    emoji: Emoji


class MessagePin(Request, tag="message.pin"):
    conversation_id: ObjectId
    message_id: MessageId


class MessageUnpin(Request, tag="message.unpin"):
    conversation_id: ObjectId
    message_id: MessageId


class ConversationPins(Request, tag="conversation.pins"):
    conversation_id: ObjectId


class MessageChanges(Request, tag="message.changes"):
    conversation_id: ObjectId
    after_rev: Rev
    """Messages whose latest change is after this revision."""
    limit: ChangesLimit = 100


class MessageSearch(Request, tag="message.search"):
    """Full-text search over the messages of the caller's conversations (PROTOCOL.md, ``message.search``)."""

    query: MessageSearchQuery
    """Words (all must match), ``"quoted phrases"``, ``word*`` for a prefix."""
    conversation_id: ObjectId | None = None
    sender_id: ObjectId | None = None
    after_ts: SearchTimestamp | None = None
    """Only messages sent at or after this time (ms)."""
    before_ts: SearchTimestamp | None = None
    """Only messages sent before this time (ms)."""
    threads_only: bool = False
    """Only thread replies."""
    order: SearchOrder = "newest"
    cursor: MessageSearchCursor | None = None
    limit: MessageSearchLimit = 20


class PresenceQuery(Request, tag="presence.query"):
    user_ids: PresenceUsers


class Typing(Request, tag="typing"):
    """The caller is typing in a conversation (optionally in a thread); renewed while they type."""

    conversation_id: ObjectId
    thread_root_id: MessageId | None = None
    """The thread's root message; carried, not looked up."""


class UserUpdate(Request, tag="user.update"):
    """Change the caller's profile; a field left out (or null) stays as it is."""

    display_name: DisplayName | None = None
    status_text: StatusText | None = None
    """With ``status_emoji``, the status, set whole: either given (``""``: none) sets both and
    ``status_expires_at`` (left out: until changed); ``""`` and ``""`` clear it."""
    status_emoji: StatusEmoji | None = None
    status_expires_at: Timestamp | None = None
    """When the status stops showing (ms, in the future); only with ``status_text`` or ``status_emoji``."""
    time_zone: TimeZone | None = None
    avatar_url: AvatarUrl | None = None
    searchable: bool | None = None


class UserGet(Request, tag="user.get"):
    user_ids: UserIds


class UserSearch(Request, tag="user.search"):
    """Users whose username or display name starts with ``query`` (case-insensitive),
    by the text that matched, then username."""

    query: SearchQuery
    cursor: SearchCursor | None = None
    limit: UserSearchLimit = 20


class PasswordChange(Request, tag="password.change"):
    old_password: OldPassword
    new_password: Password


class SessionEndAll(Request, tag="session.end_all"):
    """Log out everywhere: every token of the caller stops working and every connection closes."""


class AdminDisableUser(Request, tag="admin.disable_user"):
    """Workspace admins disable an account: its connections close (4004) on every instance, logins are refused."""

    user_id: ObjectId


class AdminEnableUser(Request, tag="admin.enable_user"):
    """Workspace admins re-enable a disabled account: its user may log in again."""

    user_id: ObjectId


class AdminSetWorkspaceRole(Request, tag="admin.set_workspace_role"):
    """Workspace admins make a user a workspace admin or a member again (never the last active admin)."""

    user_id: ObjectId
    role: WorkspaceRole


class ConversationMarkRead(Request, tag="conversation.mark_read"):
    """The caller has read the conversation up to ``seq``: the read position only moves forward."""

    conversation_id: ObjectId
    seq: Seq
    """Above the conversation's newest seq it is taken as that seq."""


class ConversationMute(Request, tag="conversation.mute"):
    """Mute (no unread badge; messages are still delivered) or unmute a conversation for the caller."""

    conversation_id: ObjectId
    muted: bool


AnyRequest = (
    Ping
    | Register
    | Login
    | Auth
    | Me
    | ChannelCreate
    | ChannelList
    | ChannelJoin
    | ChannelInvite
    | ChannelLeave
    | ChannelMembers
    | ChannelUpdate
    | ChannelKick
    | ChannelSetRole
    | DmOpen
    | DmRename
    | DmList
    | MessageSend
    | MessageHistory
    | ThreadHistory
    | MessageEdit
    | MessageDelete
    | ReactionAdd
    | ReactionRemove
    | MessagePin
    | MessageUnpin
    | ConversationPins
    | MessageChanges
    | MessageSearch
    | PresenceQuery
    | Typing
    | UserUpdate
    | UserGet
    | UserSearch
    | PasswordChange
    | SessionEndAll
    | ConversationMarkRead
    | ConversationMute
    | AdminDisableUser
    | AdminEnableUser
    | AdminSetWorkspaceRole
)

# ---------------------------------------------------------------------------
# Results: the ``result`` object of a reply, one type per request.


class Pong(Struct, kw_only=True):
    ts: Timestamp


class Session(Struct, kw_only=True):
    """Result of register, login and auth: the connection is now authenticated."""

    user: User
    token: str
    """A fresh JWT for ``auth`` on the next connection."""
    expires_at: Timestamp


class UserResult(Struct, kw_only=True):
    user: User


class ConversationResult(Struct, kw_only=True):
    conversation: Conversation


class ConversationList(Struct, kw_only=True):
    conversations: list[Conversation]


class Empty(Struct, kw_only=True):
    pass


class Members(Struct, kw_only=True):
    members: list[Member]


class SendAck(Struct, kw_only=True):
    """The message is durably stored: it will be in history from now on."""

    message: Message
    duplicate: bool
    """True when this client_msg_id was already stored; the original is returned."""


class HistoryPage(Struct, kw_only=True):
    messages: list[Message]
    next_cursor: Seq | None
    """Pass as ``before`` (order desc) or ``after`` (order asc) for the next page;
    null when this page reached the end of the requested range."""
    oldest_seq: Seq = 1
    """Every message below this seq was purged by retention (1 when none was): not a gap to fill."""


class ThreadPage(Struct, kw_only=True):
    root: Message
    messages: list[Message]
    """The thread's replies."""
    next_cursor: Seq | None
    """As in HistoryPage."""


class MessageResult(Struct, kw_only=True):
    message: Message
    """The message's state after the request."""


class MessageList(Struct, kw_only=True):
    messages: list[Message]


class ChangesPage(Struct, kw_only=True):
    messages: list[Message]
    """Each changed message's current state, oldest change first."""
    next_cursor: Rev | None
    """Pass as ``after_rev`` for the next page; null on the last page."""
    rev: Rev
    """On the last page: the revision you are now synced to; store it (§9)."""
    oldest_seq: Seq = 1
    """Every message below this seq was purged by retention (1 when none was): drop your copies of them."""


class SearchHit(Struct, kw_only=True):
    message: Message
    highlights: list[Highlight]
    """Where the query's words are in ``message.text``: ``[start, end)`` code point offsets, in text order."""


class SearchPage(Struct, kw_only=True):
    results: list[SearchHit]
    next_cursor: str | None
    """Pass as ``cursor`` (with the same query, filters and order) for the next page; null on the last page."""


class PresenceList(Struct, kw_only=True):
    presence: list[Presence]


class UserList(Struct, kw_only=True):
    users: list[User]


class UserPage(Struct, kw_only=True):
    users: list[User]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last page."""


class ReadState(Struct, kw_only=True):
    """The caller's read position in a conversation and what is unread after it."""

    conversation_id: int
    read_seq: Seq
    unread_count: int
    mention_count: int


class MuteState(Struct, kw_only=True):
    conversation_id: int
    muted: bool


class Account(Struct, kw_only=True):
    """A user's account as a workspace admin sees it (the admin.* results)."""

    user_id: int
    disabled_at: Timestamp | None
    """When it was disabled; null: active."""
    workspace_role: WorkspaceRole


class AccountResult(Struct, kw_only=True):
    account: Account


RESULT_TYPES: dict[str, type[Struct]] = {
    "ping": Pong,
    "register": Session,
    "login": Session,
    "auth": Session,
    "me": UserResult,
    "channel.create": ConversationResult,
    "channel.list": ConversationList,
    "channel.join": ConversationResult,
    "channel.invite": Empty,
    "channel.leave": Empty,
    "channel.members": Members,
    "channel.update": ConversationResult,
    "channel.kick": Empty,
    "channel.set_role": Empty,
    "dm.open": ConversationResult,
    "dm.rename": ConversationResult,
    "dm.list": ConversationList,
    "message.send": SendAck,
    "message.history": HistoryPage,
    "thread.history": ThreadPage,
    "message.edit": MessageResult,
    "message.delete": MessageResult,
    "reaction.add": MessageResult,
    "reaction.remove": MessageResult,
    "message.pin": MessageResult,
    "message.unpin": MessageResult,
    "conversation.pins": MessageList,
    "message.changes": ChangesPage,
    "message.search": SearchPage,
    "presence.query": PresenceList,
    "typing": Empty,
    "user.update": UserResult,
    "user.get": UserList,
    "user.search": UserPage,
    "password.change": Session,
    "session.end_all": Empty,
    "conversation.mark_read": ReadState,
    "conversation.mute": MuteState,
    "admin.disable_user": AccountResult,
    "admin.enable_user": AccountResult,
    "admin.set_workspace_role": AccountResult,
}
"""The result type of every request type."""

PRE_AUTH_TYPES = frozenset({"ping", "register", "login", "auth"})
"""Request types allowed before the connection is authenticated."""

# ---------------------------------------------------------------------------
# Server frames: replies and events.


class ServerFrame(Struct, tag_field="type", kw_only=True):
    pass


class ResultFrame(ServerFrame, tag="result"):
    id: RequestId
    result: Any


class ErrorFrame(ServerFrame, tag="error"):
    id: RequestId | None
    """Null when the request id could not be read."""
    error: ErrorBody


class Hello(ServerFrame, tag="hello"):
    """First frame on every connection."""

    protocol: str
    server: str
    limits: Limits


class MessageNew(ServerFrame, tag="message.new"):
    message: Message


class ReactionChange(Struct, kw_only=True):
    emoji: str
    user_id: int
    added: bool
    """True when added, false when removed."""


class MessageUpdated(ServerFrame, tag="message.updated"):
    """A message changed: replace your copy with ``message`` if its ``rev`` is newer."""

    message: Message
    change: str
    """What changed: ``edited`` (text), ``reaction``, ``thread`` (reply count), ``pinned``, ``unpinned``
    (MessageChangeKind). A plain string, not an enum, so that a client written
    today accepts a kind added later: apply ``message`` whatever the kind."""
    by: int
    """Who made the change (for ``thread``: who replied, or who deleted the reply)."""
    reaction: ReactionChange | None = None
    """For ``reaction``: which emoji, whose, and whether added or removed."""


class MessageDeleted(ServerFrame, tag="message.deleted"):
    """A message was deleted: ``message`` is its tombstone."""

    message: Message
    by: int


class MemberJoined(ServerFrame, tag="member.joined"):
    conversation_id: int
    user: User
    by: int | None
    """Who invited them; null when they joined by themselves."""


class MemberLeft(ServerFrame, tag="member.left"):
    conversation_id: int
    user_id: int


class MemberRemoved(ServerFrame, tag="member.removed"):
    """An owner or admin (``by``) removed a member from the channel."""

    conversation_id: int
    user_id: int
    by: int


class MemberRoleChanged(ServerFrame, tag="member.role_changed"):
    conversation_id: int
    user_id: int
    role: Role
    by: int


class ChannelUpdated(ServerFrame, tag="channel.updated"):
    """A channel's name, topic, purpose, invite policy or archived state changed (``role`` is null)."""

    conversation: Conversation
    by: int


class DmUpdated(ServerFrame, tag="dm.updated"):
    """A participant renamed a group DM."""

    conversation: Conversation
    by: int


class ConversationAdded(ServerFrame, tag="conversation.added"):
    """You were added to a conversation: created, joined or invited, a DM opened.

    Sent to every connection of the user, the one that made the request included."""

    conversation: Conversation
    by: int


class ConversationRemoved(ServerFrame, tag="conversation.removed"):
    """You left a conversation (on this or another device), or were removed from it."""

    conversation_id: int


class PresenceChanged(ServerFrame, tag="presence"):
    """One user's change as it travels between instances (the broker's payload);
    clients receive it inside a ``presence.batch``, never alone."""

    presence: Presence


class PresenceBatch(ServerFrame, tag="presence.batch"):
    """Presence changes of users who share a conversation with you, coalesced
    over ``presence_batch_seconds``: in the order they happened, each once."""

    presence: list[Presence]


class UserTyping(ServerFrame, tag="typing"):
    """Another member is typing; show it until ``expires_in_ms`` passes, a renewal
    comes, or their ``message.new`` in the conversation arrives."""

    conversation_id: int
    user_id: int
    thread_root_id: str | None
    expires_in_ms: int
    """How long to show it from receipt, unless renewed."""


class UserUpdated(ServerFrame, tag="user.updated"):
    """Someone you share a conversation with (or you, on another device) changed their profile."""

    user: User


class ConversationRead(ServerFrame, tag="conversation.read"):
    """You (on this or another device) read a conversation further: its new read position and unread counts."""

    conversation_id: int
    read_seq: Seq
    unread_count: int
    mention_count: int


class ConversationMuted(ServerFrame, tag="conversation.muted"):
    """You (on this or another device) muted or unmuted a conversation."""

    conversation_id: int
    muted: bool


AnyEvent = (
    Hello
    | MessageNew
    | MessageUpdated
    | MessageDeleted
    | MemberJoined
    | MemberLeft
    | MemberRemoved
    | MemberRoleChanged
    | ChannelUpdated
    | DmUpdated
    | ConversationAdded
    | ConversationRemoved
    | PresenceBatch
    | UserTyping
    | UserUpdated
    | ConversationRead
    | ConversationMuted
)
AnyServerFrame = ResultFrame | ErrorFrame | AnyEvent

EVENT_TYPES: tuple[type[ServerFrame], ...] = (
    Hello,
    MessageNew,
    MessageUpdated,
    MessageDeleted,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    MemberRoleChanged,
    ChannelUpdated,
    DmUpdated,
    ConversationAdded,
    ConversationRemoved,
    PresenceBatch,
    UserTyping,
    UserUpdated,
    ConversationRead,
    ConversationMuted,
)


def tag_of(struct_type: type[Struct]) -> str:
    """The ``type`` tag of a request or server frame class."""
    tag = struct_type.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{struct_type.__name__} is not tagged with its frame type")
    return tag


REQUEST_TYPES: tuple[type[Request], ...] = tuple(
    t for t in Request.__subclasses__() if isinstance(t.__struct_config__.tag, str)
)
