"""reaction.add, reaction.remove."""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.emoji import normalize
from hubbub.protocol.errors import ErrorCode
from hubbub.server import message_changes
from hubbub.server.errors import ApiError
from hubbub.server.handlers.access import writable_conversation
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.handlers.messages import changed, result


async def add(ctx: Context, caller: Caller, req: frames.ReactionAdd) -> frames.MessageResult:
    emoji = known_emoji(req.emoji)
    await writable_conversation(ctx, caller, req.conversation_id)
    limits = ctx.message_limits
    change = message_changes.add_reaction(
        user=caller.user_id,
        emoji=emoji,
        max_emojis=limits.max_reaction_emojis,
        max_per_user=limits.max_reactions_per_user,
    )
    record, stored = await changed(ctx, req.conversation_id, req.message_id, change)
    if stored:
        reaction = frames.ReactionChange(emoji=emoji, user_id=caller.user_id, added=True)
        ctx.publisher.message_updated(record, "reaction", by=caller.user_id, reaction=reaction)
    return result(record, caller)


async def remove(ctx: Context, caller: Caller, req: frames.ReactionRemove) -> frames.MessageResult:
    emoji = known_emoji(req.emoji)
    await writable_conversation(ctx, caller, req.conversation_id)
    change = message_changes.remove_reaction(user=caller.user_id, emoji=emoji)
    record, stored = await changed(ctx, req.conversation_id, req.message_id, change)
    if stored:
        reaction = frames.ReactionChange(emoji=emoji, user_id=caller.user_id, added=False)
        ctx.publisher.message_updated(record, "reaction", by=caller.user_id, reaction=reaction)
    return result(record, caller)


def known_emoji(text: str) -> str:
    """The Unicode emoji a reaction names (``:+1:`` and 👍 are one), or bad_request."""
    emoji = normalize(text)
    if emoji is None:
        raise ApiError(ErrorCode.BAD_REQUEST, "unknown emoji")
    return emoji
