-- Other servers' signing keys (the keyring's cache), and the signed key responses they
-- came in (served again, counter-signed, by the notary endpoint /_matrix/key/v2/query).

-- One row per (server, key ID): the key, and until when it may verify signatures: for a
-- current key the lesser of the response's valid_until_ts and 7 days after fetching it,
-- for an old key its expired_ts. A key's validity only ever grows.
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,            -- unpadded base64
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The latest /_matrix/key/v2/server response of each server, as received from it or
-- from a notary (from_server), signatures included.
CREATE TABLE server_key_responses (
    server_name TEXT NOT NULL,
    from_server TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL,
    PRIMARY KEY (server_name, from_server)
);
