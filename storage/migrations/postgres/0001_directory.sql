-- Accounts, conversations (channels and DMs) and memberships.
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,            -- login lookup
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT                       -- the presence snapshot
);

CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('channel', 'dm')),
    name TEXT UNIQUE,                         -- channel names are unique; NULL for DMs
    topic TEXT NOT NULL DEFAULT '',
    private BOOLEAN NOT NULL,
    created_by BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    dm_key TEXT UNIQUE                        -- sorted participant ids: one DM per set of people
);

-- channel.list browses public channels by name.
CREATE INDEX conversations_public_by_name ON conversations (name) WHERE kind = 'channel' AND NOT private;

CREATE TABLE memberships (
    conversation_id BIGINT NOT NULL REFERENCES conversations (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)   -- members by conversation, membership checks
);

-- conversations_of(user): everything a user belongs to, at connect time.
CREATE INDEX memberships_by_user ON memberships (user_id, conversation_id);
