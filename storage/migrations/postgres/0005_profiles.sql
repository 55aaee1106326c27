-- Profiles and the directory (issue 12). Existing users get an empty profile,
-- are searchable, and keep their tokens (generation 0 is also what a token
-- without a generation claim carries, server/auth.py).
ALTER TABLE users
    ADD COLUMN status_text TEXT NOT NULL DEFAULT '',
    ADD COLUMN status_emoji TEXT NOT NULL DEFAULT '',
    ADD COLUMN status_expires_at BIGINT,      -- ms; NULL: until changed
    ADD COLUMN time_zone TEXT NOT NULL DEFAULT '',
    ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '',
    ADD COLUMN searchable BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN search_name TEXT NOT NULL DEFAULT '';  -- display_name lowercased (storage.rows.search_key)

UPDATE users SET search_name = lower(display_name);

-- user.search (storage/postgres.py SEARCH_USERS_SQL): a prefix range of the
-- username, and one of the lowercased display name then username, searchable
-- users only, each read in index order so a page stops after its size. In
-- code point order (COLLATE "C"), as SQLite and Python compare, whatever the
-- database's collation.
CREATE INDEX users_search_username ON users ((username COLLATE "C")) WHERE searchable;
CREATE INDEX users_search_name ON users ((search_name COLLATE "C"), (username COLLATE "C")) WHERE searchable;
