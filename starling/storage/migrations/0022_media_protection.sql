-- Media an admin protected from quarantine (Synapse's safe_from_quarantine).
ALTER TABLE media ADD COLUMN safe_from_quarantine BOOLEAN NOT NULL DEFAULT FALSE;
