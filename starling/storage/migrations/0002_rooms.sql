-- Rooms, events, state and memberships.
--
-- Identifiers are interned to integers where they repeat most: every event has an
-- event_nid, every (type, state_key) pair a key_nid. State is stored as state groups,
-- each a delta over a previous group with a bounded chain length (StateStore keeps
-- chains short), so a room's state costs one row per change, not one per event.

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT FALSE   -- published in the room directory
);

CREATE TABLE events (
    event_nid {bigint_pk_auto},
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    -- Position in the events stream (sync and /messages order by it). NULL for outliers:
    -- events known only as auth or state, never part of the timeline.
    stream_ordering BIGINT UNIQUE,
    depth BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,                        -- the PDU, exactly as hashed and signed
    state_before BIGINT,                       -- state group before this event
    state_after BIGINT,                        -- state group after it (= before for messages)
    rejected_reason TEXT,
    soft_failed BOOLEAN NOT NULL DEFAULT FALSE,
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    -- For local events: the sending device and transaction ID (idempotent /send).
    device_id TEXT,
    txn_id TEXT,
    redacted_by TEXT,                          -- event ID of an applied redaction
    replaces_state TEXT                        -- the state event this one replaced (prev_content)
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_member_changes ON events (state_key, stream_ordering)
    WHERE type = 'm.room.member';
CREATE INDEX events_relates ON events (room_id, type, state_key);
CREATE UNIQUE INDEX events_txn ON events (sender, device_id, txn_id)
    WHERE txn_id IS NOT NULL;

CREATE TABLE event_edges (
    event_nid BIGINT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE state_keys (
    key_nid {bigint_pk_auto},
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (type, state_key)
);

CREATE TABLE state_groups (
    state_group {bigint_pk_auto},
    room_id TEXT NOT NULL,
    prev_group BIGINT,                         -- NULL: the entries are the whole state
    chain_length INTEGER NOT NULL              -- deltas between this group and a full one
);

-- A group's entries: the keys that differ from prev_group (all keys when prev_group is NULL).
CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    key_nid BIGINT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (state_group, key_nid)
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    key_nid BIGINT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (room_id, key_nid)
);

-- The current membership of every user in every room this server is in, denormalised
-- from current_state for "which rooms is this user in" and member lists.
CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

-- Users who forgot a room (/forget): hidden from their sync until they rejoin.
CREATE TABLE room_forgotten (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Global profiles of local users (display name and avatar), copied into member events.
CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);
