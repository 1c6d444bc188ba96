-- Media repository: uploaded media of this server and cached media of other servers, their
-- thumbnails, and cached URL previews.
--
-- The bytes live on disk, named by their SHA-256 (one file however many rows share the
-- content); a file is deleted when no row of media or media_thumbnails names it any more.

-- One row per mxc://server_name/media_id. Local media has the uploader in user_id; a
-- created-but-not-yet-uploaded ID (POST /create) has sha256 NULL and unused_expires_at set.
-- `authenticated` is true for media stored while enable_authenticated_media was on: such
-- media is never served by the unauthenticated /_matrix/media endpoints. `url_cache` marks
-- images fetched for URL previews (not counted against upload quotas).
CREATE TABLE media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    user_id TEXT,
    content_type TEXT,
    upload_name TEXT,
    media_length BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT,
    unused_expires_at BIGINT,
    last_access_ts BIGINT,
    quarantined_by TEXT,
    authenticated BOOLEAN NOT NULL DEFAULT FALSE,
    url_cache BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_user ON media (user_id, created_ts);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_pending ON media (unused_expires_at) WHERE sha256 IS NULL;

-- Generated thumbnails, keyed by the size they were made for (target_width x target_height,
-- method, animated); width/height are the real dimensions of the image stored.
CREATE TABLE media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    target_width INTEGER NOT NULL,
    target_height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated BOOLEAN NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, target_width, target_height, method, animated),
    FOREIGN KEY (server_name, media_id) REFERENCES media (server_name, media_id) ON DELETE CASCADE
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- URL previews (OpenGraph JSON) cached until expires_ts.
CREATE TABLE url_previews (
    url TEXT PRIMARY KEY,
    og TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX url_previews_expires ON url_previews (expires_ts);
