-- Messages that change (docs/messages.md): threads, edits, deletes,
-- reactions, mentions, pins, and the revision counter.
--
-- The columns are storage/rows.py MESSAGE_COLUMNS, shared with SQLite:
-- repliers, mentions and reactions are JSON text. Existing data is upgraded
-- by the design's rule: every message gets rev = seq and every conversation
-- last_rev = last_seq, which keeps (conversation_id, rev) unique.
ALTER TABLE messages
    ADD COLUMN rev BIGINT,
    ADD COLUMN thread_root_id TEXT,                          -- the root's id, for a reply
    ADD COLUMN also_in_channel BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0,       -- a root's replies not deleted
    ADD COLUMN last_reply_ts BIGINT,
    ADD COLUMN repliers TEXT NOT NULL DEFAULT '[]',          -- latest distinct repliers, newest first
    ADD COLUMN edited_ts BIGINT,
    ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false,       -- a tombstone
    ADD COLUMN mentions TEXT NOT NULL DEFAULT '[]',
    ADD COLUMN mention_all TEXT CHECK (mention_all IN ('channel', 'here')),
    ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]',         -- [[emoji, [user ids]], ...]
    ADD COLUMN pinned_by BIGINT,
    ADD COLUMN pinned_ts BIGINT;

UPDATE messages SET rev = seq;
ALTER TABLE messages ALTER COLUMN rev SET NOT NULL;

ALTER TABLE conversation_seq ADD COLUMN last_rev BIGINT;
UPDATE conversation_seq SET last_rev = last_seq;
ALTER TABLE conversation_seq ALTER COLUMN last_rev SET NOT NULL;

-- The change feed (changes after a revision, oldest first); unique because
-- no two messages of a conversation share a revision.
CREATE UNIQUE INDEX messages_by_rev ON messages (conversation_id, rev);
-- get_message and change_message find a message by id; ids are global.
CREATE UNIQUE INDEX messages_by_id ON messages (id);
-- thread.history: one thread's replies in seq order.
CREATE INDEX messages_thread_replies ON messages (conversation_id, thread_root_id, seq)
    WHERE thread_root_id IS NOT NULL;
-- pins: few per conversation, most recently pinned first.
CREATE INDEX messages_pins ON messages (conversation_id, pinned_ts) WHERE pinned_ts IS NOT NULL;

-- A thread root's repliers after p_replier replied: p_replier first, then the
-- previous ones without p_replier, the first p_kept of them (the rule of
-- storage/threads.py with_reply; JSON text as storage/rows.py ids_json writes it).
CREATE FUNCTION hubbub_with_replier(p_repliers TEXT, p_replier BIGINT, p_kept INTEGER) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT '[' || string_agg(replier::text, ',' ORDER BY position) || ']'
      FROM (SELECT replier, position
              FROM (SELECT p_replier AS replier, 0::bigint AS position
                    UNION ALL
                    SELECT e.value::bigint, e.position
                      FROM json_array_elements_text(p_repliers::json) WITH ORDINALITY AS e (value, position)
                     WHERE e.value::bigint <> p_replier) AS candidates
             ORDER BY position
             LIMIT p_kept) AS kept
$$;

-- Appends, still one round trip per batch, now with revisions and threads.
-- Every new message takes the next seq and the next rev from the
-- conversation's counter row, which this locks first: that row lock orders
-- every transaction changing the conversation (docs/messages.md), so
-- revisions commit in increasing order. A new reply whose root exists also
-- updates the root as storage/threads.py with_reply says, under the next
-- revision after the reply's; that row comes back right after the reply's,
-- with is_root. A duplicate (same sender and client_msg_id, stored earlier or
-- earlier in this batch) comes back as its original with duplicate = true
-- and uses neither counter.
DROP FUNCTION hubbub_append_batch(BIGINT, TEXT[], BIGINT[], TEXT[], TEXT[], BIGINT[]);

CREATE FUNCTION hubbub_append_batch(
    p_conversation_id BIGINT,
    p_ids TEXT[],
    p_sender_ids BIGINT[],
    p_texts TEXT[],
    p_client_msg_ids TEXT[],
    p_ts BIGINT[],
    p_thread_root_ids TEXT[],
    p_also_in_channel BOOLEAN[],
    p_mentions TEXT[],
    p_mention_all TEXT[],
    p_repliers_kept INTEGER
) RETURNS TABLE (
    duplicate BOOLEAN,
    is_root BOOLEAN,
    message messages
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    stored messages%ROWTYPE;
    next_seq BIGINT;
    next_rev BIGINT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT * INTO stored FROM messages m
         WHERE m.conversation_id = p_conversation_id
           AND m.sender_id = p_sender_ids[i]
           AND m.client_msg_id = p_client_msg_ids[i];
        IF FOUND THEN
            duplicate := true;
            is_root := false;
            message := stored;
            RETURN NEXT;
            CONTINUE;
        END IF;

        INSERT INTO conversation_seq AS c (conversation_id, last_seq, last_rev) VALUES (p_conversation_id, 1, 1)
            ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq + 1, last_rev = c.last_rev + 1
            RETURNING c.last_seq, c.last_rev INTO next_seq, next_rev;
        INSERT INTO messages AS m (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev,
                                   thread_root_id, also_in_channel, mentions, mention_all)
            VALUES (p_conversation_id, next_seq, p_ids[i], p_sender_ids[i], p_texts[i], p_client_msg_ids[i],
                    p_ts[i], next_rev, p_thread_root_ids[i], p_also_in_channel[i], p_mentions[i], p_mention_all[i])
            RETURNING m.* INTO stored;
        duplicate := false;
        is_root := false;
        message := stored;
        RETURN NEXT;

        CONTINUE WHEN stored.thread_root_id IS NULL;
        -- The counter row is locked already; the root's row is locked next (the one lock order).
        UPDATE conversation_seq AS c SET last_rev = c.last_rev + 1
         WHERE c.conversation_id = p_conversation_id
           AND EXISTS (SELECT 1 FROM messages r
                        WHERE r.conversation_id = p_conversation_id AND r.id = stored.thread_root_id)
        RETURNING c.last_rev INTO next_rev;
        CONTINUE WHEN NOT FOUND;  -- no such root: the reply is stored alone
        UPDATE messages AS r
           SET reply_count = r.reply_count + 1,
               last_reply_ts = greatest(r.last_reply_ts, stored.ts),  -- greatest ignores NULL
               repliers = hubbub_with_replier(r.repliers, stored.sender_id, p_repliers_kept),
               rev = next_rev
         WHERE r.conversation_id = p_conversation_id AND r.id = stored.thread_root_id
        RETURNING r.* INTO message;
        duplicate := false;
        is_root := true;
        RETURN NEXT;
    END LOOP;
END
$$;
