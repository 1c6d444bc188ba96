-- Registration sessions remember what the client first asked for (so later requests of
-- the same session need only `auth`) and, once used, who they registered (so a retried
-- request gets that account again instead of an error), as Synapse does.
-- params: JSON of username, password_hash, device_id, initial_device_display_name,
-- inhibit_login (never the password itself).
ALTER TABLE ui_auth_sessions ADD COLUMN params TEXT;
ALTER TABLE ui_auth_sessions ADD COLUMN claimed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE ui_auth_sessions ADD COLUMN result_user_id TEXT;
