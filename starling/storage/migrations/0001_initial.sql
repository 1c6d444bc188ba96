-- The foundation: accounts, devices, access tokens, registration tokens, stream positions.
-- Written for both engines; {blob} becomes BLOB (SQLite) or BYTEA (PostgreSQL).
-- Booleans are BOOLEAN with TRUE/FALSE; SQLite reads them back as 1/0.
-- Rooms and events come in a later migration.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,                        -- NULL: no password login (SSO, appservice, guest)
    created_ts BIGINT NOT NULL,                -- ms since the epoch
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest BOOLEAN NOT NULL DEFAULT FALSE,
    appservice_id TEXT                         -- the application service that registered it
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as sha256(token): a leaked database does not leak live sessions.
-- Deleting a device deletes its tokens (ON DELETE CASCADE); a token with a device needs
-- the device row to exist first.
CREATE TABLE access_tokens (
    token_hash {blob} PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT,
    created_ts BIGINT NOT NULL,
    valid_until_ms BIGINT,                     -- NULL: does not expire
    refresh_token_id BIGINT,                   -- for refresh tokens (a later migration)
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,                      -- NULL: unlimited
    pending INTEGER NOT NULL DEFAULT 0,        -- registrations in progress using it
    completed INTEGER NOT NULL DEFAULT 0,      -- registrations completed with it
    expiry_time BIGINT                         -- ms since the epoch; NULL: never expires
);

-- The last position handed out, per stream (used by StreamIdGenerator on SQLite; on
-- PostgreSQL each stream has a sequence, stream_seq_<name>).
CREATE TABLE stream_positions (
    stream_name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
