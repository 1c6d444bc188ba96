-- The event graph for federation (DESIGN §6 "One persister for every event").
-- Shared with 0015_event_graph.sqlite.sql except for reading auth_events out of the JSON.

-- Prev events of accepted timeline events that this server does not have: where
-- backfill starts and where the graph has gaps.
CREATE TABLE backward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Auth edges (an event and each of its auth_events), so an auth chain is one recursive query.
CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

-- Every change of a room's current state, at the events-stream position of the event whose
-- persisting caused it (which may differ from the event now in the state: a membership
-- flipped by state resolution). /sync reads membership changes from here.
CREATE TABLE current_state_delta_stream (
    stream_id BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,                             -- NULL: the key left the state
    prev_event_id TEXT                         -- NULL: the key was not in the state
);
CREATE INDEX current_state_delta_stream_pos ON current_state_delta_stream (stream_id);
CREATE INDEX current_state_delta_stream_members ON current_state_delta_stream
    (state_key, stream_id) WHERE type = 'm.room.member';

-- History order (/messages, /context): topological, depth then stream position.
CREATE INDEX events_room_topological ON events (room_id, depth, stream_ordering);

INSERT INTO event_auth (event_id, auth_event_id)
SELECT event_id, auth_event_id FROM (
    SELECT e.event_id AS event_id,
           CASE WHEN jsonb_typeof(a.value) = 'array' THEN a.value ->> 0
                WHEN jsonb_typeof(a.value) = 'string' THEN a.value #>> '{}' END AS auth_event_id
    FROM events e
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(e.json::jsonb -> 'auth_events') = 'array'
             THEN e.json::jsonb -> 'auth_events' ELSE '[]'::jsonb END
    ) AS a(value)
) a WHERE auth_event_id IS NOT NULL
ON CONFLICT DO NOTHING;

-- Until now current state was "state before + this event": each accepted state event was a
-- change of current state at its own position.
INSERT INTO current_state_delta_stream
    (stream_id, room_id, type, state_key, event_id, prev_event_id)
SELECT stream_ordering, room_id, type, state_key, event_id, replaces_state FROM events
WHERE state_key IS NOT NULL AND stream_ordering IS NOT NULL AND NOT outlier
    AND NOT soft_failed AND rejected_reason IS NULL;
