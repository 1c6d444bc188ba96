-- Full-text search (SQLite: FTS5): message search (/search) and the user directory.

-- One row per searchable event: the text of content.body (m.room.message),
-- content.name (m.room.name) or content.topic (m.room.topic, with the text/plain
-- body of m.topic). Written in the transaction that persists the event; deleted when
-- the event is redacted. room_id/sender/type/stream_ordering are copied so that
-- result pages need no join with events.
CREATE TABLE event_search (
    search_id {bigint_pk_auto},
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);

-- The full-text index over event_search.value (external content: the text is stored
-- once, in event_search). Porter stemming, like PostgreSQL's 'english' configuration.
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    value, content='event_search', content_rowid='search_id', tokenize='porter unicode61'
);
CREATE TRIGGER event_search_ai AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, value) VALUES (new.search_id, new.value);
END;
CREATE TRIGGER event_search_ad AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, value)
        VALUES ('delete', old.search_id, old.value);
END;

-- Messages already stored before this migration.
INSERT INTO event_search
    (event_id, room_id, sender, type, key, stream_ordering, origin_server_ts, value)
SELECT event_id, room_id, sender, type, 'content.body', stream_ordering, origin_server_ts,
       json_extract(json, '$.content.body')
FROM events
WHERE type = 'm.room.message' AND stream_ordering IS NOT NULL AND NOT outlier
  AND NOT soft_failed AND rejected_reason IS NULL AND redacted_by IS NULL
  AND json_type(json, '$.content.body') = 'text';

-- The user directory: each local profile's user ID and display name, word-indexed
-- (unicode61 splits '@alice:example.org' into alice, example, org). The FTS rowid is
-- the profile row's rowid; triggers keep it current as profiles change.
CREATE VIRTUAL TABLE user_directory_fts USING fts5(words, tokenize='unicode61');
CREATE TRIGGER profiles_directory_ai AFTER INSERT ON profiles BEGIN
    INSERT INTO user_directory_fts (rowid, words)
        VALUES (new.rowid, new.user_id || ' ' || COALESCE(new.displayname, ''));
END;
CREATE TRIGGER profiles_directory_au AFTER UPDATE ON profiles BEGIN
    DELETE FROM user_directory_fts WHERE rowid = old.rowid;
    INSERT INTO user_directory_fts (rowid, words)
        VALUES (new.rowid, new.user_id || ' ' || COALESCE(new.displayname, ''));
END;
CREATE TRIGGER profiles_directory_ad AFTER DELETE ON profiles BEGIN
    DELETE FROM user_directory_fts WHERE rowid = old.rowid;
END;
INSERT INTO user_directory_fts (rowid, words)
    SELECT rowid, user_id || ' ' || COALESCE(displayname, '') FROM profiles;
