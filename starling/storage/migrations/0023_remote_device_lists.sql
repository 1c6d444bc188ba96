-- Device lists across servers (Server-Server API > Device Management).
--
-- Inbound: a cache of other servers' users' devices and cross-signing keys, kept for the
-- users who share a room with one of ours. A user is tracked while they have a row in
-- remote_device_list_users; `stream_id` is the last m.device_list_update applied (or the
-- stream_id of the last /user/devices snapshot), `stale` says the cache may be behind (a
-- gap in the prev_id chain, a deleted device, a failed resync) and must not be used
-- until a resync through /user/devices succeeds.
CREATE TABLE remote_device_list_users (
    user_id TEXT NOT NULL PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    stale BOOLEAN NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    key_json TEXT,                             -- NULL: the device has uploaded no keys
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE remote_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,                    -- master | self_signing
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Outbound: the stream_id of the last m.device_list_update sent for each local user, the
-- prev_id of the next one (so the chain survives restarts) and the stream_id that
-- /user/devices answers with.
CREATE TABLE device_list_outbound_heads (
    user_id TEXT NOT NULL PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
