-- Delayed events (MSC4140, rooms/delayed.py): events a user scheduled to be sent later
-- (Element Call's "hang up if I vanish"), kept until sent or cancelled, then kept a day
-- as finalised for GET /delayed_events and retried management requests.
CREATE TABLE delayed_events (
    delay_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT,
    txn_key TEXT UNIQUE,                      -- user/device/transaction: retries schedule once
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,                           -- NULL for a message event
    content TEXT NOT NULL,                    -- JSON, as the client sent it
    delay BIGINT NOT NULL,
    running_since BIGINT NOT NULL,
    send_ts BIGINT NOT NULL,                  -- running_since + delay
    status TEXT NOT NULL,                     -- scheduled, sent or cancelled
    event_id TEXT,
    finalised_ts BIGINT,
    error TEXT                                -- JSON Matrix error that cancelled it
);
CREATE INDEX delayed_events_due ON delayed_events (status, send_ts);
CREATE INDEX delayed_events_user ON delayed_events (user_id, status, send_ts);
