-- Outbound federation (DESIGN §6): the persisted per-destination queues.
--
-- The sender reads the events stream from `federation_stream_position` and, for every event
-- another server must receive, records in `federation_destination_rooms` the newest such
-- event per (destination, room). A destination's queue is then every event after its
-- `last_successful_stream_ordering` in those rooms, so nothing is lost to a crash, a restart
-- or an outage: the sender reads it back from here, never from in-memory callbacks.

CREATE TABLE federation_stream_position (
    stream_name TEXT PRIMARY KEY,             -- 'events'
    position BIGINT NOT NULL                  -- every event up to here has been fanned out
);

CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    -- Every event up to this events-stream position meant for the destination was
    -- delivered (or refused by it for good).
    last_successful_stream_ordering BIGINT NOT NULL,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,   -- 0: not backing off
    retry_until_ts BIGINT NOT NULL DEFAULT 0,      -- no attempt before this time (ms)
    failing_since_ts BIGINT                        -- start of the current outage, if any
);

CREATE TABLE federation_destination_rooms (
    destination TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,               -- the newest event for it in the room
    PRIMARY KEY (destination, room_id)
);
CREATE INDEX federation_destination_rooms_pos
    ON federation_destination_rooms (destination, stream_ordering);

-- Events a remote server sent through this one (send_join, send_leave, send_knock): this
-- server forwards them to the room's other servers on the origin's behalf.
CREATE TABLE federation_relayed_events (
    event_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL
);
