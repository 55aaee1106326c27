-- Retention (issue 15), self-contained so it can be renumbered.
--
-- A channel's own retention override: 0 follows the server's settings
-- (HUBBUB_RETENTION_MAX_AGE_DAYS, HUBBUB_RETENTION_MAX_MESSAGES), which is
-- what every existing conversation gets. The partial index lists the
-- channels with an override, which the purge reads when the server's own
-- retention is off.
ALTER TABLE conversations
    ADD COLUMN retention_max_age_days INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN retention_max_messages INTEGER NOT NULL DEFAULT 0;
CREATE INDEX conversations_retention ON conversations (id)
    WHERE retention_max_age_days > 0 OR retention_max_messages > 0;

-- The highest seq the purge removed (0: none): the oldest retained seq is
-- purged_seq + 1, read with the head (history, changes, listings). Kept on
-- the counter row, which every write to a conversation locks first, for the
-- PostgreSQL and the MongoDB topologies' message logs alike (MongoDB keeps it
-- in its counters document; this column then stays 0).
ALTER TABLE conversation_seq ADD COLUMN purged_seq BIGINT NOT NULL DEFAULT 0;
-- SQLite's is RETENTION_MIGRATION in storage/sqlite.py.
