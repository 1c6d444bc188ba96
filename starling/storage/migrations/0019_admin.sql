-- Server administration: account flags the admin API sets, rooms an admin blocked, and
-- what users reported.

-- locked: every access token answers 401 M_USER_LOCKED and logins are refused (Synapse).
-- shadow_banned: the user's sends succeed for them but reach nobody.
-- erased: deactivated with erase (GDPR); the profile was cleared.
ALTER TABLE users ADD COLUMN locked BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN shadow_banned BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;

-- Rooms no local user may join (an admin blocked them, or deleted them with block).
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,                     -- the admin who blocked it
    blocked_ts BIGINT NOT NULL
);

-- POST /rooms/{roomId}/report/{eventId} (event_id set) and /rooms/{roomId}/report (NULL).
CREATE TABLE event_reports (
    id {bigint_pk_auto},
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    user_id TEXT NOT NULL,
    reason TEXT,
    score BIGINT
);
CREATE INDEX event_reports_room ON event_reports (room_id);
CREATE INDEX event_reports_user ON event_reports (user_id);
