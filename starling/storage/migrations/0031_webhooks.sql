-- Outgoing webhooks (webhooks/outgoing.py): each hook's position in the events stream, and
-- its deliveries, kept until the receiver accepts them or, after the last attempt, kept as
-- dead letters (dead = TRUE) for the admin to look at.
CREATE TABLE webhook_positions (
    hook_id TEXT PRIMARY KEY,
    stream_position BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    hook_id TEXT NOT NULL,
    delivery_id BIGINT NOT NULL,              -- the event's stream position
    body TEXT NOT NULL,                       -- the JSON POSTed
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (hook_id, delivery_id)
);
