-- Who sent each pending to-device message, so that one sender flooding a device is
-- refused without shutting out everyone else (e2ee/to_device.py). Rows from before this
-- migration count as nobody's.
ALTER TABLE to_device_inbox ADD COLUMN sender TEXT NOT NULL DEFAULT '';
CREATE INDEX to_device_inbox_sender ON to_device_inbox (sender, user_id, device_id);
