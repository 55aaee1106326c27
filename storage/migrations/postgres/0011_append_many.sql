-- Group commit across conversations (issue 13; docs/storage.md, How seq is
-- assigned): one flush of the PostgreSQL group commit, messages of any number
-- of conversations, stored by one call, set-based (hubbub_append_batch loops
-- per message, which made the statement cost about four times a plain
-- multi-row INSERT). Replies are not stored here: a flush holding one goes
-- through hubbub_append_batch, which also updates the thread's root.
--
-- Same guarantees as hubbub_append_batch: every counter row of the flush is
-- locked (created if missing) before any message is read or written, in
-- ascending conversation id (the lock order across conversations, so two
-- flushes wait for each other and never deadlock); then, with the locks held
-- and a snapshot taken after them, a message already stored under its
-- (conversation, sender, client_msg_id) is returned as a duplicate, a repeat
-- of an earlier message of the same flush as a duplicate of that one, and
-- the others are numbered in the order given, per conversation, gapless (seq
-- and rev each last + 1, + 2, ...). One row per message, in the order given.
CREATE FUNCTION hubbub_append_many(
    p_conversation_ids BIGINT[],
    p_ids TEXT[],
    p_sender_ids BIGINT[],
    p_texts TEXT[],
    p_client_msg_ids TEXT[],
    p_ts BIGINT[],
    p_also_in_channel BOOLEAN[],
    p_mentions TEXT[],
    p_mention_all TEXT[],
    p_search_texts TEXT[],
    p_search_config REGCONFIG
) RETURNS TABLE (
    duplicate BOOLEAN,
    is_root BOOLEAN,
    message messages
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF coalesce(array_length(p_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    -- Lock every counter, ascending; an update that changes nothing but takes
    -- the row lock (FOR NO KEY UPDATE strength), or the insert of a missing one.
    INSERT INTO conversation_seq AS c (conversation_id, last_seq, last_rev)
        SELECT DISTINCT cid, 0, 0 FROM unnest(p_conversation_ids) AS u(cid) ORDER BY cid
        ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq;

    -- The arrays are read once, by unnest (an element of a text array read by
    -- subscript walks the array from its start: quadratic in a flush); a
    -- stored copy is looked up by the idempotency index, one probe per
    -- message (LATERAL ... LIMIT 1: never a scan of the table).
    RETURN QUERY
    WITH input AS (
        SELECT u.*, min(u.k) OVER (PARTITION BY u.cid, u.sender, u.cmid) AS first_k
          FROM unnest(p_conversation_ids, p_ids, p_sender_ids, p_texts, p_client_msg_ids, p_ts, p_also_in_channel,
                      p_mentions, p_mention_all, p_search_texts) WITH ORDINALITY
               AS u(cid, id, sender, text, cmid, ts, also, mentions, mention_all, words, k)
    ), stored AS (
        SELECT x.k, s.message FROM input x
         CROSS JOIN LATERAL (SELECT m AS message FROM messages m
                              WHERE m.conversation_id = x.cid AND m.sender_id = x.sender AND m.client_msg_id = x.cmid
                              LIMIT 1) AS s
    ), numbered AS (
        SELECT x.*, h.last_seq + row_number() OVER w AS seq, h.last_rev + row_number() OVER w AS rev
          FROM input x JOIN conversation_seq h ON h.conversation_id = x.cid
         WHERE x.k = x.first_k AND NOT EXISTS (SELECT 1 FROM stored s WHERE s.k = x.k)
        WINDOW w AS (PARTITION BY x.cid ORDER BY x.k)
    ), inserted AS (
        INSERT INTO messages AS m (conversation_id, seq, id, sender_id, text, client_msg_id, ts, rev,
                                   thread_root_id, also_in_channel, mentions, mention_all, search)
        SELECT n.cid, n.seq, n.id, n.sender, n.text, n.cmid, n.ts, n.rev,
               NULL, n.also, n.mentions, n.mention_all, to_tsvector(p_search_config, n.words)
          FROM numbered n
        RETURNING m.conversation_id, m.seq, m AS message
    ), moved AS (
        UPDATE conversation_seq AS c SET last_seq = t.seq, last_rev = t.rev
          FROM (SELECT cid, max(seq) AS seq, max(rev) AS rev FROM numbered GROUP BY cid) AS t
         WHERE c.conversation_id = t.cid
    )
    -- s.k, not s.message: a row IS NULL only when every column is.
    SELECT s.k IS NOT NULL OR x.k <> x.first_k, false, CASE WHEN s.k IS NOT NULL THEN s.message ELSE i.message END
      FROM input x
      LEFT JOIN stored s ON s.k = x.k
      LEFT JOIN numbered n ON n.k = x.first_k
      LEFT JOIN inserted i ON i.conversation_id = n.cid AND i.seq = n.seq
     ORDER BY x.k;
END
$$;
