-- The user directory's other servers' users (user_directory/service.py): each remote user
-- seen joining a room with us, with the display name and avatar of their member event in
-- a public room (Synapse does not take profiles from private rooms: a per-room nickname
-- there is not for everyone to search). Who may find them is decided per search, as
-- for local users, from room_memberships. Word-indexed like profiles (migration 0010);
-- the expression must match starling.storage.dialect's user_directory_source.
CREATE TABLE user_directory_remote (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);
CREATE INDEX user_directory_remote_words ON user_directory_remote USING GIN (
    to_tsvector('simple', regexp_replace(user_id || ' ' || COALESCE(displayname, ''),
                                         '[[:punct:]]', ' ', 'g'))
);
