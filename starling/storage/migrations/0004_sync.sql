-- Sync: stored filters and sync bookkeeping.

-- Filters uploaded with POST /user/{userId}/filter. IDs count up per user; uploading the
-- same filter again returns its existing ID (matched by the hash of its canonical JSON),
-- so clients that upload a filter at every start don't grow the table.
CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter_hash TEXT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
CREATE UNIQUE INDEX user_filters_hash ON user_filters (user_id, filter_hash);
