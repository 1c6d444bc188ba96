-- A client's transaction ID is scoped to its device and the request (spec: "Transaction
-- identifiers"): the same ID used in two rooms names two messages.
DROP INDEX events_txn;
CREATE UNIQUE INDEX events_txn ON events (sender, device_id, room_id, txn_id)
    WHERE txn_id IS NOT NULL;
