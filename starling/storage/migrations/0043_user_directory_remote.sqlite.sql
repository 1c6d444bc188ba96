-- The user directory's other servers' users (user_directory/service.py): each remote user
-- seen joining a room with us, with the display name and avatar of their member event in
-- a public room (Synapse does not take profiles from private rooms: a per-room nickname
-- there is not for everyone to search). Who may find them is decided per search, as
-- for local users, from room_memberships. Word-indexed like profiles (migration 0010).
CREATE TABLE user_directory_remote (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);
CREATE VIRTUAL TABLE user_directory_remote_fts USING fts5(words, tokenize='unicode61');
CREATE TRIGGER user_directory_remote_ai AFTER INSERT ON user_directory_remote BEGIN
    INSERT INTO user_directory_remote_fts (rowid, words)
        VALUES (new.rowid, new.user_id || ' ' || COALESCE(new.displayname, ''));
END;
CREATE TRIGGER user_directory_remote_au AFTER UPDATE ON user_directory_remote BEGIN
    DELETE FROM user_directory_remote_fts WHERE rowid = old.rowid;
    INSERT INTO user_directory_remote_fts (rowid, words)
        VALUES (new.rowid, new.user_id || ' ' || COALESCE(new.displayname, ''));
END;
CREATE TRIGGER user_directory_remote_ad AFTER DELETE ON user_directory_remote BEGIN
    DELETE FROM user_directory_remote_fts WHERE rowid = old.rowid;
END;
