-- Pushers: where each user's notifications go (POST /pushers/set). The same app_id and
-- pushkey may be registered by several users; `append: false` removes the others.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    access_token_hash {blob},                 -- the token that registered it (logout removes it)
    data TEXT NOT NULL,                        -- the pusher as listed by GET /pushers (JSON)
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
