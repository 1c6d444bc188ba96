-- Full-text search (PostgreSQL: tsvector with GIN indexes): message search (/search)
-- and the user directory.

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
    value TEXT NOT NULL,
    vector TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', value)) STORED
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);

-- Messages already stored before this migration.
INSERT INTO event_search
    (event_id, room_id, sender, type, key, stream_ordering, origin_server_ts, value)
SELECT event_id, room_id, sender, type, 'content.body', stream_ordering, origin_server_ts,
       json::jsonb #>> '{content,body}'
FROM events
WHERE type = 'm.room.message' AND stream_ordering IS NOT NULL AND NOT outlier
  AND NOT soft_failed AND rejected_reason IS NULL AND redacted_by IS NULL
  -- (PostgreSQL text cannot hold the NUL character: skip the rare event that has one.)
  AND CASE WHEN strpos(json, '\u0000') = 0
      THEN jsonb_typeof(json::jsonb #> '{content,body}') = 'string' ELSE FALSE END;

-- The user directory: local profiles' user IDs and display names, word-indexed. The
-- expression must match starling.storage.user_directory's query exactly; punctuation
-- becomes spaces so '@alice:example.org' gives the words alice, example, org.
CREATE INDEX profiles_directory ON profiles USING GIN (
    to_tsvector('simple', regexp_replace(user_id || ' ' || COALESCE(displayname, ''),
                                         '[[:punct:]]', ' ', 'g'))
);
