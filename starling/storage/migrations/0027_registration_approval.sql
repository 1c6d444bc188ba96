-- registration_requires_approval: accounts registered while it is on wait for an admin.
ALTER TABLE users ADD COLUMN approved BOOLEAN NOT NULL DEFAULT TRUE;
