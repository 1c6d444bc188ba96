-- Key responses are kept per key they list, so the notary (/_matrix/key/v2/query) can
-- still answer for a key with a response that lists it after its server stopped listing
-- it (a later response never overwrites an earlier one's keys). They replace the one
-- response per (server, source) of 0012; those were a cache (the keys themselves stay in
-- server_signing_keys) and are fetched again when asked for.
CREATE TABLE server_key_responses_per_key (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    from_server TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id, from_server)
);

DROP TABLE server_key_responses;
