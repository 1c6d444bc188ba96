-- Inbound federation transactions already answered (PUT /_matrix/federation/v1/send):
-- a retried transaction gets the same answer without its PDUs being processed again.
CREATE TABLE federation_inbound_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,                   -- the JSON answer sent for it
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_transactions_ts ON federation_inbound_transactions (received_ts);
