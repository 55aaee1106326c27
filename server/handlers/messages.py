"""message.send, message.history, thread.history, message.edit, message.delete,
message.changes; and what every request naming a message shares: finding
it and changing it (``changed``), used by reactions.py and pins.py too.

The rules of a change are server/message_changes.py; a handler checks
access, resolves what the rule needs (mentions, limits), lets the store
apply the change (``MessageLog.change_message``), and publishes the
event through ``ctx.publisher``. Replies to requests carry the caller's
``my_reactions``; events never do.
"""

from __future__ import annotations

import asyncio

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.protocol.mentions import Mentions, parse
from hubbub.server import message_changes
from hubbub.server.channel_roles import administers
from hubbub.server.clock import now_ms
from hubbub.server.errors import ApiError, not_found
from hubbub.server.guarded import sharing_budget
from hubbub.server.handlers.access import require_member, require_writable, writable_conversation, writable_known
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.send_order import SendTurn
from hubbub.server.views import message_view
from hubbub.storage.base import MessageChange
from hubbub.storage.records import MentionAll, MessageRecord, NewMessage


async def send(ctx: Context, caller: Caller, req: frames.MessageSend) -> frames.SendAck:
    check_text_length(ctx, req.text)
    if req.also_in_channel and req.thread_root_id is None:
        raise ApiError(ErrorCode.BAD_REQUEST, "also_in_channel: only for a thread reply (thread_root_id)")
    # Taken before the first await: pipelined sends reach the log in request order (server/send_order.py).
    turn = caller.send_order.reserve()
    try:
        return await _send_in_turn(ctx, caller, req, turn)
    finally:
        turn.release()


async def _send_in_turn(ctx: Context, caller: Caller, req: frames.MessageSend, turn: SendTurn) -> frames.SendAck:
    cid = req.conversation_id
    # The common send (a routed channel known not archived, no @name, its turn
    # already come) awaits nothing before the append: each check that needs no
    # await is made here, not in a coroutine of its own.
    if not writable_known(ctx, caller, cid):
        await require_writable(ctx, caller, cid)
    root_id = None if req.thread_root_id is None else await thread_root_for_reply(ctx, cid, req.thread_root_id)
    found = parse(req.text)
    mentions, mention_all = (await mentioned_members(ctx, cid, found)) if found.usernames else ((), found.all)
    if not turn.ready():
        await turn.wait()
    turn.release()  # the next send resumes only after this one is handed to the log, below
    message, duplicate = await ctx.publisher.send_message(
        NewMessage(
            conversation_id=cid,
            sender_id=caller.user_id,
            text=req.text,
            client_msg_id=req.client_msg_id,
            ts=now_ms(),
            thread_root_id=root_id,
            also_in_channel=req.also_in_channel,
            mentions=mentions,
            mention_all=mention_all,
        )
    )
    return frames.SendAck(message=message, duplicate=duplicate)


def check_text_length(ctx: Context, text: str) -> None:
    limit = ctx.max_message_chars
    if len(text) > limit:
        raise ApiError(ErrorCode.TOO_LARGE, f"text: longer than {limit} characters")


async def thread_root_for_reply(ctx: Context, conversation_id: int, named_id: str) -> str:
    """The id of the thread a reply to ``named_id`` goes in: the named message's
    own, or its root's when it is itself a reply. A deleted root takes no reply."""
    named = await message_in(ctx, conversation_id, named_id)
    message_changes.refuse_deleted(named)
    if named.thread_root_id is None:
        return named.id
    root = await message_in(ctx, conversation_id, named.thread_root_id)
    message_changes.refuse_deleted(root)
    return root.id


async def resolve_mentions(ctx: Context, conversation_id: int, text: str) -> tuple[tuple[int, ...], MentionAll | None]:
    """The members ``text`` mentions (in order of first mention; a name of no
    member is no mention, so nothing leaks) and its @channel / @here."""
    return await mentioned_members(ctx, conversation_id, parse(text))


async def mentioned_members(
    ctx: Context, conversation_id: int, found: Mentions
) -> tuple[tuple[int, ...], MentionAll | None]:
    """``resolve_mentions`` of text already parsed."""
    if not found.usernames:
        return (), found.all
    members = await ctx.directory.members_by_username(conversation_id, found.usernames)
    return tuple(members[name] for name in found.usernames if name in members), found.all


async def message_in(ctx: Context, conversation_id: int, message_id: str) -> MessageRecord:
    """The message with this id in this conversation (another conversation's is not found)."""
    record = await ctx.messages.get_message(conversation_id, message_id)
    if record is None:
        raise not_found("message")
    return record


async def changed(
    ctx: Context, conversation_id: int, message_id: str, change: MessageChange
) -> tuple[MessageRecord, bool]:
    """Apply ``change`` to the message (the store serialises it with every other
    change of the conversation); its state after, and whether that is new."""
    outcome = await ctx.messages.change_message(conversation_id, message_id, change)
    if outcome is None:
        raise not_found("message")
    return outcome


def result(record: MessageRecord, caller: Caller) -> frames.MessageResult:
    return frames.MessageResult(message=message_view(record, caller.user_id))


async def history(ctx: Context, caller: Caller, req: frames.MessageHistory) -> frames.HistoryPage:
    await require_member(ctx, caller, req.conversation_id)
    # One extra row tells whether another page follows. The head, read beside
    # it, says where retention's purge stopped (oldest_seq). Both within the
    # request's store budget, though each is a task of its own.
    records, heads = await asyncio.gather(
        sharing_budget(
            ctx.messages.history(
                req.conversation_id,
                before=req.before,
                after=req.after,
                limit=req.limit + 1,
                order=req.order,
                include_replies=req.include_replies,
            )
        ),
        sharing_budget(ctx.messages.heads([req.conversation_id])),
    )
    more = len(records) > req.limit
    page = records[: req.limit]
    head = heads.get(req.conversation_id)
    return frames.HistoryPage(
        messages=[message_view(r, caller.user_id) for r in page],
        next_cursor=page[-1].seq if more else None,
        oldest_seq=1 if head is None else head.oldest_seq,
    )


async def thread_history(ctx: Context, caller: Caller, req: frames.ThreadHistory) -> frames.ThreadPage:
    cid = req.conversation_id
    await require_member(ctx, caller, cid)
    root = await message_in(ctx, cid, req.thread_root_id)
    if root.thread_root_id is not None:  # a reply names its thread
        root = await message_in(ctx, cid, root.thread_root_id)
    records = await ctx.messages.history(
        cid, before=req.before, after=req.after, limit=req.limit + 1, order=req.order, thread_root_id=root.id
    )
    more = len(records) > req.limit
    page = records[: req.limit]
    return frames.ThreadPage(
        root=message_view(root, caller.user_id),
        messages=[message_view(r, caller.user_id) for r in page],
        next_cursor=page[-1].seq if more else None,
    )


async def edit(ctx: Context, caller: Caller, req: frames.MessageEdit) -> frames.MessageResult:
    cid = req.conversation_id
    check_text_length(ctx, req.text)
    await writable_conversation(ctx, caller, cid)
    mentions, mention_all = await resolve_mentions(ctx, cid, req.text)
    window_ms = round(ctx.message_limits.edit_window_seconds * 1000)
    change = message_changes.edit(
        by=caller.user_id, text=req.text, mentions=mentions, mention_all=mention_all, now=now_ms(), window_ms=window_ms
    )
    record, stored = await changed(ctx, cid, req.message_id, change)
    if stored:
        ctx.publisher.message_updated(record, "edited", by=caller.user_id)
    return result(record, caller)


async def delete(ctx: Context, caller: Caller, req: frames.MessageDelete) -> frames.MessageResult:
    cid = req.conversation_id
    # A channel's owners and admins may delete any message.
    conversation = await writable_conversation(ctx, caller, cid)
    moderator = conversation.kind == "channel" and administers(
        (await ctx.directory.roles_of(caller.user_id, [cid])).get(cid)
    )
    record, stored = await changed(
        ctx, cid, req.message_id, message_changes.delete(by=caller.user_id, moderator=moderator)
    )
    if stored:
        ctx.publisher.message_deleted(record, by=caller.user_id)
        if record.thread_root_id is not None:
            await lower_reply_count(ctx, cid, record.thread_root_id, by=caller.user_id)
    return result(record, caller)


async def lower_reply_count(ctx: Context, conversation_id: int, root_id: str, *, by: int) -> None:
    """A deleted reply no longer counts in its root (a second change, after the tombstone's)."""
    outcome = await ctx.messages.change_message(conversation_id, root_id, message_changes.reply_removed)
    if outcome is not None and outcome[1]:
        ctx.publisher.message_updated(outcome[0], "thread", by=by)


async def changes(ctx: Context, caller: Caller, req: frames.MessageChanges) -> frames.ChangesPage:
    await require_member(ctx, caller, req.conversation_id)
    # One extra message tells whether another page follows.
    found = await ctx.messages.changes(req.conversation_id, after_rev=req.after_rev, limit=req.limit + 1)
    page = found.messages[: req.limit]
    views = [message_view(r, caller.user_id) for r in page]
    oldest = found.oldest_seq
    if len(found.messages) > req.limit:
        return frames.ChangesPage(messages=views, next_cursor=page[-1].rev, rev=page[-1].rev, oldest_seq=oldest)
    return frames.ChangesPage(messages=views, next_cursor=None, rev=found.horizon, oldest_seq=oldest)
