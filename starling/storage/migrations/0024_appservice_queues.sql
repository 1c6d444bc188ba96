-- Application-service transactions (appservice/sender.py).
-- Per service: how far it has read the events stream and the last transaction ID used.
CREATE TABLE appservice_positions (
    as_id TEXT PRIMARY KEY,
    stream_position BIGINT NOT NULL,
    last_txn_id BIGINT NOT NULL
);
-- Transactions built but not yet accepted by the service, sent oldest first; a
-- transaction keeps its ID across retries and restarts, so the service can deduplicate.
CREATE TABLE appservice_txns (
    as_id TEXT NOT NULL,
    txn_id BIGINT NOT NULL,
    body TEXT NOT NULL,                       -- the JSON body of PUT /transactions/{txnId}
    PRIMARY KEY (as_id, txn_id)
);
