"""``hubbub admin conversations export|import``: one conversation as JSON Lines.

The file (format version 1, docs/operations.md, Administration): a header
line (the conversation, its members by username with role and mute, the
message count), then one line per message in seq order with its full
current state. People are named by username, never by id, so a file can be
imported into another workspace that has the same usernames; a thread
reply names its root by the root's seq (``thread_root_seq``), so the
structure survives the new message ids an import gets.

Import recreates the conversation as a new one through the stores'
interfaces: every message appended in the same order (same ts,
client_msg_id, thread, mentions), then each message's state as exported
(edit time, tombstone, reactions, pin, thread counters), then the members
with their roles and mutes (the imported history counts as read), then the
archived flag. It reads and checks the whole file, and that every username
exists, before it writes anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from hubbub.server.admin.common import Admin, AdminError
from hubbub.storage.base import Directory, MessageLog
from hubbub.storage.records import (
    ChannelEdit,
    ConversationRecord,
    InvitePolicy,
    MentionAll,
    MessageRecord,
    NewMessage,
    Reaction,
    Role,
    Standing,
)

FORMAT = "hubbub.conversation"
VERSION = 1
EXPORT_PAGE = 500
"""Messages read per history query while exporting."""


class ExportedMember(msgspec.Struct, kw_only=True, frozen=True):
    username: str
    role: Role = "member"
    muted: bool = False


class ExportedConversation(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    kind: Literal["channel", "dm"]
    name: str | None
    topic: str = ""
    purpose: str = ""
    private: bool = False
    archived: bool = False
    invite_policy: InvitePolicy = "anyone"
    created_by: str
    created_at: int


class Header(msgspec.Struct, kw_only=True, frozen=True):
    format: str
    version: int
    conversation: ExportedConversation
    members: list[ExportedMember]
    messages: int


class ExportedReaction(msgspec.Struct, kw_only=True, frozen=True):
    emoji: str
    users: list[str]


class ExportedMessage(msgspec.Struct, kw_only=True, frozen=True):
    seq: int
    id: str
    sender: str
    ts: int
    client_msg_id: str
    text: str
    edited_ts: int | None = None
    deleted: bool = False
    thread_root_seq: int | None = None
    thread_root_id: str | None = None
    also_in_channel: bool = False
    reply_count: int = 0
    last_reply_ts: int | None = None
    repliers: list[str] = []
    mentions: list[str] = []
    mention_all: MentionAll | None = None
    reactions: list[ExportedReaction] = []
    pinned_by: str | None = None
    pinned_ts: int | None = None


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export",
        parents=[common],
        help="Write a conversation and every message's state as JSON Lines.",
        description="Write CONVERSATION (a channel name or id:<n>) as JSON Lines: a header, then one line per message.",
    )
    export.add_argument("conversation", help="A channel name, or id:<n> (DMs too).")
    export.add_argument("--output", metavar="FILE", help="Write to FILE (replaced when complete) instead of stdout.")
    export.set_defaults(handler=export_conversation)

    importing = commands.add_parser(
        "import",
        parents=[common],
        help="Recreate an exported conversation as a new one.",
        description="Recreate the conversation FILE holds (- for stdin) as a new conversation; members by username.",
    )
    importing.add_argument("file", help="A file written by `export`, or - for stdin.")
    importing.add_argument("--name", help="The new channel's name (default: the exported one; it must be free).")
    importing.set_defaults(handler=import_conversation)


# -- export ---------------------------------------------------------------------


async def export_lines(directory: Directory, messages: MessageLog, conversation: ConversationRecord) -> list[bytes]:
    """The export of ``conversation``: its header line, then one line per message."""
    records: list[MessageRecord] = []
    after = 0
    while True:
        page = await messages.history(conversation.id, before=None, after=after, limit=EXPORT_PAGE, order="asc")
        records.extend(page)
        if len(page) < EXPORT_PAGE:
            break
        after = page[-1].seq
    roles = await directory.member_roles(conversation.id)
    people = {conversation.created_by, *roles}
    for record in records:
        people.update((record.sender_id, *record.mentions, *record.repliers))
        people.update(uid for reaction in record.reactions for uid in reaction.user_ids)
        if record.pinned_by is not None:
            people.add(record.pinned_by)
    usernames = {user.id: user.username for user in await directory.get_users(sorted(people))}

    def name(user_id: int) -> str:
        # A user gone from the directory keeps their id, which no import can map.
        return usernames.get(user_id, f"id:{user_id}")

    members = []
    for user_id, role in roles.items():
        state = await directory.member_state(conversation.id, user_id)
        members.append(ExportedMember(username=name(user_id), role=role, muted=bool(state and state.muted)))
    header = Header(
        format=FORMAT,
        version=VERSION,
        conversation=ExportedConversation(
            id=conversation.id,
            kind=conversation.kind,
            name=conversation.name,
            topic=conversation.topic,
            purpose=conversation.purpose,
            private=conversation.private,
            archived=conversation.archived,
            invite_policy=conversation.invite_policy,
            created_by=name(conversation.created_by),
            created_at=conversation.created_at,
        ),
        members=members,
        messages=len(records),
    )
    seq_of = {r.id: r.seq for r in records}
    lines = [msgspec.json.encode(header)]
    for r in records:
        exported = ExportedMessage(
            seq=r.seq,
            id=r.id,
            sender=name(r.sender_id),
            ts=r.ts,
            client_msg_id=r.client_msg_id,
            text=r.text,
            edited_ts=r.edited_ts,
            deleted=r.deleted,
            thread_root_seq=seq_of.get(r.thread_root_id) if r.thread_root_id else None,
            thread_root_id=r.thread_root_id,
            also_in_channel=r.also_in_channel,
            reply_count=r.reply_count,
            last_reply_ts=r.last_reply_ts,
            repliers=[name(u) for u in r.repliers],
            mentions=[name(u) for u in r.mentions],
            mention_all=r.mention_all,
            reactions=[ExportedReaction(emoji=x.emoji, users=[name(u) for u in x.user_ids]) for x in r.reactions],
            pinned_by=name(r.pinned_by) if r.pinned_by is not None else None,
            pinned_ts=r.pinned_ts,
        )
        lines.append(msgspec.json.encode(exported))
    return lines


async def export_conversation(admin: Admin, args: argparse.Namespace) -> None:
    conversation = await admin.conversation(args.conversation)
    lines = await export_lines(admin.stores.directory, admin.stores.messages, conversation)
    if args.output is None:
        _write(sys.stdout.buffer, lines)
        sys.stdout.flush()
    else:
        _write_file(Path(args.output), lines)
    await admin.record(
        "conversation.export", conversation_id=conversation.id, messages=len(lines) - 1, output=args.output or "-"
    )
    if args.output is not None:
        admin.document(
            {"conversation_id": conversation.id, "messages": len(lines) - 1, "output": args.output},
            f"exported {len(lines) - 1} messages of conversation {conversation.id} to {args.output}",
        )


def _write(out: Any, lines: Iterable[bytes]) -> None:
    for line in lines:
        out.write(line + b"\n")


def _write_file(path: Path, lines: Sequence[bytes]) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise AdminError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            _write(out, lines)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- import ---------------------------------------------------------------------


class Parsed(msgspec.Struct, kw_only=True, frozen=True):
    header: Header
    messages: list[ExportedMessage]


def parse_export(lines: Iterator[str]) -> Parsed:
    """The export ``lines`` hold, checked whole; AdminError naming the first bad line."""
    number = 0
    header: Header | None = None
    messages: list[ExportedMessage] = []
    seen: dict[int, ExportedMessage] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if header is None:
                header = msgspec.json.decode(line, type=Header)
                if header.format != FORMAT or header.version != VERSION:
                    raise AdminError(f"line 1: not a {FORMAT} version {VERSION} export")
                continue
            message = msgspec.json.decode(line, type=ExportedMessage)
        except msgspec.ValidationError as exc:
            raise AdminError(f"line {number}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise AdminError(f"line {number}: not JSON ({exc})") from None
        if messages and message.seq <= messages[-1].seq:
            raise AdminError(f"line {number}: seq {message.seq} does not follow {messages[-1].seq}")
        if message.thread_root_seq is not None:
            root = seen.get(message.thread_root_seq)
            if root is None or root.thread_root_seq is not None:
                raise AdminError(f"line {number}: thread_root_seq {message.thread_root_seq} is no earlier root")
        seen[message.seq] = message
        messages.append(message)
    if header is None:
        raise AdminError("the file is empty: no header line")
    if header.messages != len(messages):
        raise AdminError(f"the header counts {header.messages} messages, the file holds {len(messages)}: truncated?")
    return Parsed(header=header, messages=messages)


def _usernames(parsed: Parsed) -> set[str]:
    names = {parsed.header.conversation.created_by, *(m.username for m in parsed.header.members)}
    for m in parsed.messages:
        names.update((m.sender, *m.repliers, *m.mentions))
        names.update(u for reaction in m.reactions for u in reaction.users)
        if m.pinned_by is not None:
            names.add(m.pinned_by)
    return names


def _operator(channel: ConversationRecord, standing: Standing) -> None:
    """The operator administers every channel: no rule of channel roles applies to them."""


async def import_conversation(admin: Admin, args: argparse.Namespace) -> None:
    parsed = _read(args.file)
    directory, log = admin.stores.directory, admin.stores.messages
    ids: dict[str, int] = {}
    unknown = []
    for username in sorted(_usernames(parsed)):
        user = await directory.get_user_by_username(username)
        if user is None:
            unknown.append(username)
        else:
            ids[username] = user.id
    if unknown:
        raise AdminError(f"no such users here: {', '.join(unknown)} (members are mapped by username)")
    exported = parsed.header.conversation
    member_ids = [ids[m.username] for m in parsed.header.members]
    creator = ids[exported.created_by]
    if exported.kind == "channel":
        name = args.name or exported.name or ""
        if await directory.channel_by_name(name) is not None:
            raise AdminError(f"a channel named {name!r} exists: pass --name for the imported one")
        conversation = await directory.create_channel(
            name, exported.topic, exported.private, creator, exported.created_at
        )
        await directory.update_channel(
            conversation.id,
            creator,
            ChannelEdit(purpose=exported.purpose, invite_policy=exported.invite_policy),
            _operator,
        )
    else:
        if args.name:
            raise AdminError("--name is for channels: a DM is named by its members")
        conversation, _ = await directory.open_dm(member_ids, creator, exported.created_at)
        if await log.heads([conversation.id]):
            raise AdminError(f"the DM of these members exists (id {conversation.id}) and has messages")
        if exported.name:
            await directory.rename_dm(conversation.id, exported.name)
    count = await _import_messages(log, conversation.id, parsed.messages, ids)
    heads = await log.heads([conversation.id])
    head = heads[conversation.id].last_seq if heads else 0
    for member in parsed.header.members:
        user_id = ids[member.username]
        # Everything imported counts as read: it is history, not news.
        if not await directory.add_member(conversation.id, user_id, exported.created_at, read_seq=head):
            await directory.mark_read(conversation.id, user_id, head, unset_as=head)
        if exported.kind == "channel":
            await directory.set_role(conversation.id, creator, user_id, member.role, _operator)
        if member.muted:
            await directory.set_muted(conversation.id, user_id, True)
    if exported.kind == "channel" and creator not in member_ids:  # the creator had left
        await directory.remove_member(conversation.id, creator)
    if exported.archived:
        await directory.update_channel(conversation.id, creator, ChannelEdit(archived=True), _operator)
    await admin.record("conversation.import", conversation_id=conversation.id, messages=count, source=args.file)
    admin.document(
        {"conversation_id": conversation.id, "kind": conversation.kind, "name": conversation.name, "messages": count},
        f"imported {count} messages into conversation {conversation.id}"
        + (f" (#{conversation.name})" if conversation.kind == "channel" else ""),
    )


def _read(file: str) -> Parsed:
    if file == "-":
        return parse_export(iter(sys.stdin))
    try:
        with open(file, encoding="utf-8") as source:
            return parse_export(iter(source))
    except OSError as exc:
        raise AdminError(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AdminError(f"{file} is not UTF-8 text") from None


async def _import_messages(
    log: MessageLog, conversation_id: int, messages: list[ExportedMessage], ids: dict[str, int]
) -> int:
    """Append every message in order, then give each its exported state: how many."""
    new_ids: dict[int, str] = {}  # exported seq -> the new message's id
    for m in messages:
        appended = await log.append(
            NewMessage(
                conversation_id=conversation_id,
                sender_id=ids[m.sender],
                text=m.text,
                client_msg_id=m.client_msg_id,
                ts=m.ts,
                thread_root_id=new_ids[m.thread_root_seq] if m.thread_root_seq is not None else None,
                also_in_channel=m.also_in_channel,
                mentions=tuple(ids[u] for u in m.mentions),
                mention_all=m.mention_all,
            )
        )
        new_ids[m.seq] = appended.record.id
    # After every append: a root's counters are as its replies left them, and are now set as exported.
    for m in messages:
        await log.change_message(conversation_id, new_ids[m.seq], _state_of(m, ids))
    return len(messages)


def _state_of(m: ExportedMessage, ids: dict[str, int]) -> Any:
    reactions = tuple(Reaction(emoji=r.emoji, user_ids=tuple(ids[u] for u in r.users)) for r in m.reactions)
    state = {
        "edited_ts": m.edited_ts,
        "deleted": m.deleted,
        "reply_count": m.reply_count,
        "last_reply_ts": m.last_reply_ts,
        "repliers": tuple(ids[u] for u in m.repliers),
        "reactions": reactions,
        "pinned_by": ids[m.pinned_by] if m.pinned_by is not None else None,
        "pinned_ts": m.pinned_ts,
    }

    def change(current: MessageRecord) -> MessageRecord | None:
        if all(getattr(current, k) == v for k, v in state.items()):
            return None  # appended as it was exported: no revision spent
        return msgspec.structs.replace(current, **state)

    return change
