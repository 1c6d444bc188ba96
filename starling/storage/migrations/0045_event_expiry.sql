-- Ephemeral messages (MSC2228, Synapse's enable_ephemeral_messages; rooms/ephemeral.py): a
-- message whose content sets org.matrix.self_destruct_after (a time in ms) is censored
-- (its stored JSON replaced by the redacted form) at that time.
CREATE TABLE event_expiry (
    event_id TEXT NOT NULL PRIMARY KEY,
    expiry_ts BIGINT NOT NULL
);
CREATE INDEX event_expiry_ts ON event_expiry (expiry_ts);
