-- The user agent a device last used (the admin API's whois and device list), recorded
-- with last_seen_ts and last_seen_ip by the client-IP tracker.
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;
