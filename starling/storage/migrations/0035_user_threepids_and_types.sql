-- Third-party IDs an admin attached to an account (Synapse's user_threepids: an address
-- belongs to one account at most) and the account's user type (Synapse's: NULL for
-- ordinary users, 'support' or 'bot').
CREATE TABLE user_threepids (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

ALTER TABLE users ADD COLUMN user_type TEXT;
