-- Appends in one round trip per batch: the server sends one conversation's
-- batch as arrays and this function stores it in order, within the
-- statement's transaction (a batch is all or nothing). A message whose
-- (sender, client_msg_id) is already stored, earlier or earlier in the same
-- batch, comes back as that original with duplicate = true.
CREATE FUNCTION hubbub_append_batch(
    p_conversation_id BIGINT,
    p_ids TEXT[],
    p_sender_ids BIGINT[],
    p_texts TEXT[],
    p_client_msg_ids TEXT[],
    p_ts BIGINT[]
) RETURNS TABLE (
    id TEXT,
    seq BIGINT,
    sender_id BIGINT,
    text TEXT,
    client_msg_id TEXT,
    ts BIGINT,
    duplicate BOOLEAN
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    original messages%ROWTYPE;
    next_seq BIGINT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT * INTO original FROM messages m
         WHERE m.conversation_id = p_conversation_id
           AND m.sender_id = p_sender_ids[i]
           AND m.client_msg_id = p_client_msg_ids[i];
        IF FOUND THEN
            id := original.id;
            seq := original.seq;
            sender_id := original.sender_id;
            text := original.text;
            client_msg_id := original.client_msg_id;
            ts := original.ts;
            duplicate := true;
        ELSE
            INSERT INTO conversation_seq AS c (conversation_id, last_seq) VALUES (p_conversation_id, 1)
                ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq + 1
                RETURNING c.last_seq INTO next_seq;
            INSERT INTO messages (conversation_id, seq, id, sender_id, text, client_msg_id, ts)
                VALUES (p_conversation_id, next_seq, p_ids[i], p_sender_ids[i], p_texts[i], p_client_msg_ids[i], p_ts[i]);
            id := p_ids[i];
            seq := next_seq;
            sender_id := p_sender_ids[i];
            text := p_texts[i];
            client_msg_id := p_client_msg_ids[i];
            ts := p_ts[i];
            duplicate := false;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
