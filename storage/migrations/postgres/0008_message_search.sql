-- Message search (issue 15; docs/storage.md, Search).
--
-- messages.search: the words of a message not deleted, as protocol/search.py
-- cuts and normalises them (the server sends them along, since PostgreSQL's
-- own parser and lowercasing differ from SQLite's), made a tsvector under
-- the configured text search configuration (postgres_search_config); NULL
-- for a tombstone. Rows stored before this migration are indexed by the
-- server right after it (storage.postgres.index_unindexed), in batches, read
-- through messages_unindexed; hubbub reindex redoes every row.
ALTER TABLE messages ADD COLUMN search TSVECTOR;
CREATE INDEX messages_search ON messages USING gin (search);
-- newest first: a search for common words walks this backwards and stops
-- after a page; one for rare words reads the GIN index and sorts the few
-- matches. The planner picks by the words' frequencies (the search is
-- planned for its own query: storage.postgres.search_statement).
CREATE INDEX messages_by_ts ON messages (ts, conversation_id, seq);
CREATE INDEX messages_unindexed ON messages (conversation_id, seq) WHERE search IS NULL AND NOT deleted;

-- The search index of the MongoDB topology (PostgreSQL directory, MongoDB
-- messages): one row per message not deleted, written by the group commit
-- that stores the messages in MongoDB and by every change of their text
-- (storage/search_index.py). edited_ts tells a row that an edit has not
-- reached yet (the search checks it against the message as stored).
CREATE TABLE message_search (
    conversation_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    sender_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    is_reply BOOLEAN NOT NULL,
    edited_ts BIGINT,
    search TSVECTOR NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX message_search_words ON message_search USING gin (search);
CREATE INDEX message_search_by_ts ON message_search (ts, conversation_id, seq);

-- hubbub_append_batch as migration 0004 made it, and each new row's search
-- vector from p_search_texts under p_search_config.
DROP FUNCTION hubbub_append_batch(BIGINT, TEXT[], BIGINT[], TEXT[], TEXT[], BIGINT[], TEXT[], BOOLEAN[], TEXT[], TEXT[], INTEGER);

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
    p_repliers_kept INTEGER,
    p_search_texts TEXT[],
    p_search_config REGCONFIG
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
                                   thread_root_id, also_in_channel, mentions, mention_all, search)
            VALUES (p_conversation_id, last_seq_now + 1, p_ids[i], p_sender_ids[i], p_texts[i],
                    p_client_msg_ids[i], p_ts[i], last_rev_now + 1, p_thread_root_ids[i], p_also_in_channel[i],
                    p_mentions[i], p_mention_all[i], to_tsvector(p_search_config, p_search_texts[i]))
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
