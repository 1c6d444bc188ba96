-- Outbound device-list EDUs (m.device_list_update, m.signing_key_update), one row per
-- destination and device-list stream position, kept until the destination accepted a
-- transaction carrying it: an update is never lost to a restart or a long outage (the
-- receiver would otherwise keep an outdated copy of the list until the next change).
CREATE TABLE device_list_outbox (
    destination TEXT NOT NULL,
    stream_id BIGINT NOT NULL,                -- position on the device_lists stream
    edu_type TEXT NOT NULL,
    edu_json TEXT NOT NULL,                   -- the EDU's content
    PRIMARY KEY (destination, stream_id)
);
