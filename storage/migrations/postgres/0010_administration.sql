-- Administration (issue 15), self-contained so it can be renumbered: every
-- existing user is active (disabled_at NULL), a workspace member and not
-- deleted; the audit log starts empty. users_disabled serves the servers'
-- poll (Directory.disabled_since), users_workspace_admins the last-admin
-- check. SQLite's is ADMIN_MIGRATION in storage/sqlite.py.
ALTER TABLE users
    ADD COLUMN disabled_at BIGINT,            -- ms; NULL: active
    ADD COLUMN workspace_role TEXT NOT NULL DEFAULT 'member' CHECK (workspace_role IN ('member', 'admin')),
    ADD COLUMN deleted_at BIGINT;             -- ms; set: the row is a deleted account's tombstone

CREATE INDEX users_disabled ON users (disabled_at) WHERE disabled_at IS NOT NULL;
CREATE INDEX users_workspace_admins ON users (id) WHERE workspace_role = 'admin';

-- Every admin action, over the protocol (actor_id: the admin) or from the
-- command line (actor_id NULL). No foreign key: an entry outlives its actor.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    ts BIGINT NOT NULL,
    actor_id BIGINT,
    action TEXT NOT NULL,
    target JSONB NOT NULL
);
