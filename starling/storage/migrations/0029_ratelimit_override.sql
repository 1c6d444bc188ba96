-- Per-user message rate limits an admin set (Synapse's override_ratelimit; 0/0: none).
CREATE TABLE ratelimit_override (
    user_id TEXT PRIMARY KEY,
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);
