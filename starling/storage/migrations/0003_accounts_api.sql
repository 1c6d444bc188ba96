-- Accounts API: refresh tokens, user-interactive auth sessions.

-- Rotating refresh tokens (stored as sha256, like access tokens). Refreshing creates the
-- successor and points next_token_id at it; the old row is deleted once the successor's
-- access token or the successor itself is used. Access tokens name their refresh token in
-- access_tokens.refresh_token_id. Deleting the device deletes its refresh tokens.
CREATE TABLE refresh_tokens (
    id {bigint_pk_auto},
    token_hash {blob} NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    next_token_id BIGINT,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_id);
CREATE INDEX refresh_tokens_user_device ON refresh_tokens (user_id, device_id);
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_id);

-- User-interactive auth sessions: which operation (uri, method) and which user (NULL for
-- registration) a session authorises, and the registration token whose use it holds
-- (counted in registration_tokens.pending until the session is finished or expires).
CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    uri TEXT NOT NULL,
    method TEXT NOT NULL,
    user_id TEXT,
    registration_token TEXT
);
CREATE INDEX ui_auth_sessions_created ON ui_auth_sessions (created_ts);

CREATE TABLE ui_auth_stages (
    session_id TEXT NOT NULL REFERENCES ui_auth_sessions (session_id) ON DELETE CASCADE,
    stage_type TEXT NOT NULL,
    PRIMARY KEY (session_id, stage_type)
);
