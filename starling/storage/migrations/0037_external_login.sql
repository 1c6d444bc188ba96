-- External login (accounts/external.py, accounts/oidc.py) and the module API's own data.
-- user_external_ids: which local account an identity of an external provider (LDAP, an
-- SQL user table, an OpenID Connect provider) is; the link is made once, on first login,
-- and is the only way back to that account (never a display name or an e-mail address).
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);
-- m.login.token: one-use tokens minted by the SSO callback, kept only as their SHA-256.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    auth_provider TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
-- An SSO redirect in flight: state → the PKCE verifier, nonce, client redirect URL and the
-- hash of the browser cookie that must come back with it (login CSRF).
CREATE TABLE sso_sessions (
    state TEXT PRIMARY KEY,
    idp_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    client_redirect_url TEXT NOT NULL,
    cookie_hash TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
-- Modules' own key-value data (modules/api.py: api.put_data / get_data).
CREATE TABLE module_data (
    module TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (module, key)
);
