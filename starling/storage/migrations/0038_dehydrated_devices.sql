-- Dehydrated devices (MSC3814, e2ee/dehydrated.py): at most one per user, a device
-- without an access token whose private keys the client stored here encrypted
-- (`device_data`, opaque JSON); its to-device messages wait in the usual inbox.
CREATE TABLE dehydrated_devices (
    user_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
