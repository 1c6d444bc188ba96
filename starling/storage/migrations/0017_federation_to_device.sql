-- To-device messages across servers (e2ee/federated_to_device.py).
-- Outbound: one m.direct_to_device EDU per (request, destination server), kept until the
-- destination acknowledges the transaction that carried it; sent in stream order.
CREATE TABLE federation_to_device_outbox (
    destination TEXT NOT NULL,
    stream_id BIGINT NOT NULL,                -- position on the to_device stream
    edu_json TEXT NOT NULL,                   -- the EDU's content
    PRIMARY KEY (destination, stream_id)
);
-- Inbound: the message_ids already delivered, so a resent EDU is not delivered twice.
CREATE TABLE federation_to_device_received (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX federation_to_device_received_ts ON federation_to_device_received (received_ts);
