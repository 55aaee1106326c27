-- The PostgreSQL message log (HUBBUB_MESSAGES_BACKEND=postgres).
CREATE TABLE conversation_seq (
    conversation_id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE messages (
    conversation_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    sender_id BIGINT NOT NULL,
    text TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)        -- history pages in either direction
);

-- Idempotent send: one message per (conversation, sender, client_msg_id).
CREATE UNIQUE INDEX messages_idempotency ON messages (conversation_id, sender_id, client_msg_id);
