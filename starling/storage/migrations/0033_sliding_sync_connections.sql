-- Sliding sync connections (sync/sliding/connections.py): what each connection's client
-- has, per `pos`, so a restart (or another process) answers a known `pos` instead of
-- M_UNKNOWN_POS. A snapshot is immutable once written; `data` is its JSON encoding.
CREATE TABLE sliding_sync_connections (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    nonce BIGINT NOT NULL,                    -- drawn per connection, part of every pos
    next_seq BIGINT NOT NULL,
    last_used_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id)
);
CREATE INDEX sliding_sync_connections_last_used ON sliding_sync_connections (last_used_ts);
CREATE TABLE sliding_sync_snapshots (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id, nonce, seq)
);
