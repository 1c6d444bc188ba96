-- End-to-end encryption: device keys, one-time and fallback keys, to-device messages, cross-signing, key backup, device lists.
--
-- Key objects are stored as the canonical JSON the client uploaded (TEXT), so what
-- /keys/query and /keys/claim hand out is byte-for-byte what was signed.

CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- id orders keys by upload: they are claimed oldest first.
CREATE TABLE e2e_one_time_keys (
    id {bigint_pk_auto},
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm, id);

-- One fallback key per device and algorithm; handed out (and marked used) when the
-- device has no one-time key left, until the device uploads a new one.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- The current master, self-signing and user-signing key of each user.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,                    -- master | self_signing | user_signing
    public_key TEXT NOT NULL,                  -- unpadded base64 ed25519 key
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through /keys/signatures/upload, merged into /keys/query results.
CREATE TABLE e2e_cross_signing_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,               -- a device ID or a master public key
    user_id TEXT NOT NULL,                     -- the signer
    key_id TEXT NOT NULL,                      -- the signing key, "ed25519:<...>"
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, user_id, key_id)
);

-- The device_lists stream: one row per user whose devices or cross-signing keys changed.
-- observer NULL: every user sharing a room with user_id sees it; otherwise only observer
-- (user-signing key changes and signatures of other users' keys are private).
CREATE TABLE device_list_changes (
    stream_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    observer TEXT
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream_id);

-- Room membership transitions into and out of "join", on the device_lists stream: they
-- decide who newly shares a room (changed) and who no longer shares any (left).
CREATE TABLE device_list_memberships (
    stream_id BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    joined BOOLEAN NOT NULL
);
CREATE INDEX device_list_memberships_stream ON device_list_memberships (stream_id);

-- Each device's inbox of to-device messages, in arrival (stream) order, kept until a
-- /sync acknowledges it.
CREATE TABLE to_device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    message_json TEXT NOT NULL,                -- {"sender", "type", "content"}
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- Transaction IDs of /sendToDevice requests already served, for idempotency.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,                   -- '' for a token without a device
    txn_id TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX to_device_txns_added ON to_device_txns (added_ts);

-- A /sync response that could not carry every pending message: the to_device position
-- its token holds, and the last message it actually carried. A later /sync from that
-- token acknowledges only up to delivered_upto.
CREATE TABLE to_device_deliveries (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    token_position BIGINT NOT NULL,
    delivered_upto BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, token_position)
);

-- Server-side key backups. Deleted versions are kept (deleted = TRUE) so a version
-- number is never reused.
CREATE TABLE e2e_room_keys_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
