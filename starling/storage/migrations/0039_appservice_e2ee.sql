-- Application services' positions in the to_device and device_lists streams (MSC2409
-- to-device messages, MSC3202 device lists), moved with the transaction that carries what
-- was read (appservice/sender.py), so nothing is sent twice or lost.
CREATE TABLE appservice_stream_positions (
    as_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (as_id, stream)
);
