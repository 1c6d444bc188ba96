-- OpenID tokens (client-server-api "OpenID"): what POST /user/{userId}/openid/request_token
-- handed out, for another service to exchange at GET /_matrix/federation/v1/openid/userinfo.
-- Only the SHA-256 of each token is kept; a token is good until expires_ts.
CREATE TABLE openid_tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_ts);
