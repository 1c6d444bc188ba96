-- Push actions (push/evaluator.py): for each local user, the events their push rules
-- said `notify` for, written by a background evaluator that reads the events stream from
-- its stored position, so events persisted while the server was down are evaluated when
-- it starts. GET /notifications reads them; each HTTP pusher delivers them from its own
-- stored position (pushers.last_stream_ordering), as Synapse's pushers do.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,           -- the event's position in the events stream
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    actions TEXT NOT NULL,                     -- JSON list, as the rules gave them
    highlight BOOLEAN NOT NULL,
    ts BIGINT NOT NULL,                        -- when the notification was made (ms)
    PRIMARY KEY (user_id, stream_ordering)
);
CREATE INDEX event_push_actions_highlight ON event_push_actions (user_id, stream_ordering)
    WHERE highlight;
CREATE INDEX event_push_actions_ts ON event_push_actions (ts);
-- How far the evaluator has read the events stream (a single row, id 1).
CREATE TABLE push_evaluator_position (
    id SMALLINT PRIMARY KEY,
    stream_position BIGINT NOT NULL
);
-- Each pusher's delivery position: notifications up to it were sent (or given up on).
ALTER TABLE pushers ADD COLUMN last_stream_ordering BIGINT NOT NULL DEFAULT 0;
