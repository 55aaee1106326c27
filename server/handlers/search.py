"""message.search: full-text search over the caller's conversations.

The query's meaning is protocol/search.py's; the store finds the messages
(``MessageLog.search``: SQLite FTS5, PostgreSQL ``tsvector``, or the
PostgreSQL index of the MongoDB topology, docs/storage.md); this handler
decides which conversations are searched (the caller's, read from the
directory at the time of the search), pages, and marks where the words are
(``highlights``, computed here from the text every store returns).
"""

from __future__ import annotations

from hubbub.protocol import frames
from hubbub.protocol.errors import ErrorCode
from hubbub.protocol.search import QueryError, Term, highlights, parse
from hubbub.server.errors import ApiError
from hubbub.server.handlers.access import require_member
from hubbub.server.handlers.context import Caller, Context
from hubbub.server.views import message_view
from hubbub.storage.records import InvalidPosition, MessageQuery, SearchHit

NEWEST_CURSOR = "n"
RELEVANCE_CURSOR = "r"
"""The first letter of a cursor: the order it pages (the rest is the store's position, or an offset)."""


async def search(ctx: Context, caller: Caller, req: frames.MessageSearch) -> frames.SearchPage:
    try:
        terms = tuple(parse(req.query))
    except QueryError as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if req.after_ts is not None and req.before_ts is not None and req.after_ts >= req.before_ts:
        raise ApiError(ErrorCode.BAD_REQUEST, "after_ts: must be before before_ts")
    window = ctx.message_limits.search_relevance_window
    after, offset = _cursor_position(req, window)
    limit = min(req.limit, ctx.message_limits.search_max_limit)
    if req.conversation_id is not None:
        await require_member(ctx, caller, req.conversation_id)
        conversation_ids: tuple[int, ...] = (req.conversation_id,)
    else:
        # The caller's conversations now, from the directory (not the routing
        # cache): one they left a moment ago is not searched.
        conversation_ids = tuple(c.id for c in await ctx.directory.conversations_of(caller.user_id))
    if not conversation_ids:
        return frames.SearchPage(results=[], next_cursor=None)
    query = MessageQuery(
        terms=terms,
        conversation_ids=conversation_ids,
        sender_id=req.sender_id,
        after_ts=req.after_ts,
        before_ts=req.before_ts,
        threads_only=req.threads_only,
        order=req.order,
        after=after,
        offset=offset,
        window=window,
        limit=limit + 1,  # one more tells whether another page follows
    )
    try:
        found = await ctx.messages.search(query)
    except InvalidPosition:
        raise ApiError(ErrorCode.BAD_REQUEST, "cursor: not a cursor of this search") from None
    page = found[:limit]
    next_cursor = _next_cursor(req, page, offset, window) if len(found) > limit else None
    return frames.SearchPage(results=[_hit(h, terms, caller.user_id) for h in page], next_cursor=next_cursor)


def _cursor_position(req: frames.MessageSearch, window: int) -> tuple[str | None, int]:
    """(the store position to continue after, the relevance offset) of the request's cursor."""
    if req.cursor is None:
        return None, 0
    kind, rest = req.cursor[:1], req.cursor[1:]
    if req.order == "newest" and kind == NEWEST_CURSOR and rest:
        return rest, 0
    if req.order == "relevance" and kind == RELEVANCE_CURSOR and rest.isdigit() and len(rest) <= 9:
        offset = int(rest)
        if offset >= window:
            raise ApiError(ErrorCode.BAD_REQUEST, f"cursor: a search by relevance ranks {window} matches at most")
        return None, offset
    raise ApiError(ErrorCode.BAD_REQUEST, f"cursor: not a cursor of a search by {req.order}")


def _next_cursor(req: frames.MessageSearch, page: list[SearchHit], offset: int, window: int) -> str | None:
    if req.order == "newest":
        return NEWEST_CURSOR + page[-1].position
    next_offset = offset + len(page)
    return RELEVANCE_CURSOR + str(next_offset) if next_offset < window else None


def _hit(hit: SearchHit, terms: tuple[Term, ...], viewer: int) -> frames.SearchHit:
    marked = highlights(hit.record.text, terms)
    return frames.SearchHit(message=message_view(hit.record, viewer), highlights=[[s, e] for s, e in marked])
