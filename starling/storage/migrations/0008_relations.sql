-- Relations between events (spec: "Forming relationships between events") and threads.

-- One row per event whose content carries a well-formed m.relates_to (rel_type and
-- event_id). The row is deleted when the child event is redacted, which breaks the
-- relationship. type/sender/stream_ordering are copied from the child event so that
-- aggregations and /relations pages need no join to read them.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    thread_id TEXT,                      -- the thread root, for m.thread
    aggregation_key TEXT,                -- the key, for m.annotation
    -- For m.replace: whether the child itself can be an edit (not a state event, and
    -- m.new_content present, or encrypted). The checks against the original (same
    -- sender, same type, not a state event) are made when reading.
    is_valid_edit BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, rel_type, stream_ordering);
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type, stream_ordering);

-- Each thread of a room with its latest reply, for /threads (ordered by latest reply).
CREATE TABLE threads (
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,             -- the thread root's event ID
    latest_event_id TEXT NOT NULL,
    latest_stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (room_id, thread_id)
);
CREATE INDEX threads_latest ON threads (room_id, latest_stream_ordering);
