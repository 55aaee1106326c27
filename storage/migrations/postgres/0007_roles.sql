-- Roles and channel administration (issue 12), self-contained so it can be
-- renumbered. Every member becomes a member, then each channel's creator its
-- owner if still a member, else its earliest member (by joined_at, then user
-- id); a channel nobody is left in has no owner. Channels get an empty
-- purpose, are not archived and let anyone invite (today's behaviour); DMs
-- get no name (dm_name: a group DM's name, not unique like channel names).
-- SQLite's is ROLES_MIGRATION in storage/sqlite.py.
ALTER TABLE memberships
    ADD COLUMN role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member'));

ALTER TABLE conversations
    ADD COLUMN purpose TEXT NOT NULL DEFAULT '',
    ADD COLUMN archived BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN invite_policy TEXT NOT NULL DEFAULT 'anyone' CHECK (invite_policy IN ('anyone', 'admins')),
    ADD COLUMN dm_name TEXT;

UPDATE memberships SET role = 'owner' WHERE (conversation_id, user_id) IN (
    SELECT c.id, COALESCE(
        (SELECT m.user_id FROM memberships m WHERE m.conversation_id = c.id AND m.user_id = c.created_by),
        (SELECT m.user_id FROM memberships m WHERE m.conversation_id = c.id ORDER BY m.joined_at, m.user_id LIMIT 1)
    ) FROM conversations c WHERE c.kind = 'channel'
);
