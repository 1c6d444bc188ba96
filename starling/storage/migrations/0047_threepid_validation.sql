-- Email validation sessions (accounts/email.py; spec: client-server-api "Adding Account
-- Administrative Contact Information" and the */email/requestToken endpoints): the
-- homeserver mails a link with a token; the session is validated when it is followed.
-- uia_session: the registration UIA session whose m.login.email.identity stage used it.
CREATE TABLE threepid_validation_sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    last_send_attempt BIGINT NOT NULL,
    token_hash TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    validated_at BIGINT,
    uia_session TEXT
);
CREATE INDEX threepid_validation_secret ON threepid_validation_sessions (client_secret, medium, address);
CREATE INDEX threepid_validation_created ON threepid_validation_sessions (created_ts);
CREATE INDEX threepid_validation_uia ON threepid_validation_sessions (uia_session);
