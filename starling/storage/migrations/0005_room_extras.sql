-- Around the room: receipts, account data (tags live in it as m.tag), presence.

-- The latest receipt of each (room, type, user, thread). thread_id is '' for an
-- unthreaded receipt, 'main' or a thread root's event ID otherwise. stream_id is the
-- position in the "receipts" stream of the last change; event_stream_ordering is the
-- receipted event's position in the events stream (NULL when the event is not in our
-- timeline), used to move receipts only forward and to count unread events.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_stream_ordering BIGINT,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);
CREATE INDEX receipts_user_room ON receipts (user_id, room_id);

-- Account data: room_id is '' for global data. stream_id is the position in the
-- "account_data" stream of the last change.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);

-- Presence of local users: the last state announced in the "presence" stream (stream_id),
-- with last_active_ts refreshed in batches between announcements.
CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    currently_active BOOLEAN NOT NULL DEFAULT FALSE,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);
