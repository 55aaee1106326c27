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
-- The conversation's counter row is locked first (created when missing):
-- that row lock orders every transaction changing the conversation
-- (docs/messages.md), so revisions commit in increasing order. Every new
-- message takes the next seq and the next rev; the counters are written
-- back once, at the end. A new reply whose root exists also updates the root
-- as storage/threads.py with_reply says, under the next revision after the
-- reply's; that row comes back right after the reply's, with is_root. A
-- duplicate (same sender and client_msg_id, stored earlier or earlier in
-- this batch) comes back as its original with duplicate = true and uses
-- neither counter. It is found by the insert's ON CONFLICT on the
-- idempotency index, named explicitly: a lookup by those columns could be
-- planned on another (conversation_id, ...) index while the table is small,
-- and that plan, cached for the session, would scan whole conversations.
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
    last_seq_now BIGINT;
    last_rev_now BIGINT;
    counters_moved BOOLEAN := false;
BEGIN
    IF coalesce(array_length(p_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    SELECT c.last_seq, c.last_rev INTO last_seq_now, last_rev_now
      FROM conversation_seq c WHERE c.conversation_id = p_conversation_id
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        -- The conversation's first batch; a racing first batch of another
        -- session makes this wait for it and take its (locked) row.
        INSERT INTO conversation_seq AS c (conversation_id, last_seq, last_rev) VALUES (p_conversation_id, 0, 0)
            ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq
            RETURNING c.last_seq, c.last_rev INTO last_seq_now, last_rev_now;
    END IF;

    FOR i IN 1 .. array_length(p_ids, 1) LOOP
        INSERT INTO messages AS m (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev,
                                   thread_root_id, also_in_channel, mentions, mention_all)
            VALUES (p_conversation_id, last_seq_now + 1, p_ids[i], p_sender_ids[i], p_texts[i],
                    p_client_msg_ids[i], p_ts[i], last_rev_now + 1, p_thread_root_ids[i], p_also_in_channel[i],
                    p_mentions[i], p_mention_all[i])
            ON CONFLICT (conversation_id, sender_id, client_msg_id) DO NOTHING
            RETURNING m.* INTO stored;
        IF NOT FOUND THEN
            SELECT * INTO STRICT stored FROM messages m
             WHERE m.conversation_id = p_conversation_id
               AND m.sender_id = p_sender_ids[i]
               AND m.client_msg_id = p_client_msg_ids[i];
            duplicate := true;
            is_root := false;
            message := stored;
            RETURN NEXT;
            CONTINUE;
        END IF;
        last_seq_now := last_seq_now + 1;
        last_rev_now := last_rev_now + 1;
        counters_moved := true;
        duplicate := false;
        is_root := false;
        message := stored;
        RETURN NEXT;

        CONTINUE WHEN stored.thread_root_id IS NULL;
        -- The root's row is locked after the counter row (the one lock order).
        UPDATE messages AS r
           SET reply_count = r.reply_count + 1,
               last_reply_ts = greatest(r.last_reply_ts, stored.ts),  -- greatest ignores NULL
               repliers = hubbub_with_replier(r.repliers, stored.sender_id, p_repliers_kept),
               rev = last_rev_now + 1
         WHERE r.id = stored.thread_root_id AND r.conversation_id = p_conversation_id
        RETURNING r.* INTO message;
        CONTINUE WHEN NOT FOUND;  -- no such root in this conversation: the reply is stored alone
        last_rev_now := last_rev_now + 1;
        duplicate := false;
        is_root := true;
        RETURN NEXT;
    END LOOP;

    IF counters_moved THEN
        UPDATE conversation_seq AS c SET last_seq = last_seq_now, last_rev = last_rev_now
         WHERE c.conversation_id = p_conversation_id;
    END IF;
END
$$;
