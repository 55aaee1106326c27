-- Read state and mute (issue 12), self-contained so it can be renumbered.
-- Existing memberships get no read position (NULL): it counts as read up to
-- the conversation's head, and the first listing stores that head
-- (docs/storage.md, read state upgrade). New memberships always get one.
ALTER TABLE memberships
    ADD COLUMN read_seq BIGINT,
    ADD COLUMN muted BOOLEAN NOT NULL DEFAULT false;

-- Unread counts (storage/postgres.py UNREAD_SQL): only the messages a count
-- counts (not deleted, in the main timeline), by seq, with the columns the
-- count reads, so each conversation's count is a range of at most the cap
-- over the unread tail.
CREATE INDEX messages_unread ON messages (conversation_id, seq) INCLUDE (sender_id, mention_all, mentions)
    WHERE NOT deleted AND (thread_root_id IS NULL OR also_in_channel);
