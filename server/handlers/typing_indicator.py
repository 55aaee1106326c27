"""typing: "X is typing" to the other members of a conversation.

Nothing is stored and the server keeps no per-typist state or timer: the
event carries ``expires_in_ms`` (``typing_ttl_seconds``) and clients hide
the indicator when it runs out, when a renewal restarts it, or when the
typist's ``message.new`` in that conversation arrives (a sent message ends
it; no event of its own, so a message costs nothing more).

The event goes to the members' connections on every instance like any other
event (Publisher -> Broker -> Catchup -> Registry), but not to the typist's
own connections (``except_user``): nobody needs to see their own typing.

Three rules, in this order:

1. membership and writability, as for message.send (server/handlers/access.py):
   ``not_found`` for a conversation that does not exist or is private and
   not the caller's, ``forbidden`` for a public channel they have not joined,
   ``archived`` for an archived channel (nobody can send there, so nobody
   is shown typing there either);
2. the connection's own token bucket (``typing_per_second``,
   ``typing_burst``): a request beyond it is answered like any other and
   announced to nobody. It is a UI hint that the next renewal repeats, so
   an error would only make clients handle a failure that means nothing;
3. the size cap (``typing_max_members``): each announcement costs one event
   per connection of the other members, renewed every few seconds while the
   user types, so in larger conversations it is answered and not announced.
"""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.server.handlers.access import require_writable
from hubbub.server.handlers.context import Caller, Context

_DONE = frames.Empty()


async def typing(ctx: Context, caller: Caller, req: frames.Typing) -> frames.Empty:
    cid = req.conversation_id
    await require_writable(ctx, caller, cid)
    if not caller.typing_limit.take():
        return _DONE  # too often on this connection: dropped, see the module's rule 2
    counts = await ctx.directory.member_counts([cid])
    if counts.get(cid, 0) > ctx.typing_max_members:
        return _DONE  # too many members to tell them all, see rule 3
    event = frames.UserTyping(
        conversation_id=cid,
        user_id=caller.user_id,
        thread_root_id=req.thread_root_id,
        expires_in_ms=ctx.typing_ttl_ms,
    )
    ctx.publisher.publish(event, conversations=(cid,), except_user=caller.user_id)
    return _DONE
