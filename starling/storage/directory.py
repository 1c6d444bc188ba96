"""The published room directory: which rooms are public, and the state their entries show.

`rooms.is_public` marks a published room. The state an entry needs (name, topic, alias,
avatar, join rules, history visibility, guest access, the create event's room type) is
read for many rooms in one query over current state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from starling.storage.database import Database

# The state events a directory entry is built from (all with state_key "").
DIRECTORY_STATE_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
)
# Redaction strips these events' whole content (the others keep the keys shown here).
_EMPTIED_BY_REDACTION = frozenset(
    {
        "m.room.name",
        "m.room.topic",
        "m.room.canonical_alias",
        "m.room.avatar",
        "m.room.guest_access",
    }
)


class DirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def is_public(self, room_id: str) -> bool | None:
        """Whether the room is published; None for a room this server does not know."""
        value = await self._db.fetch_val("SELECT is_public FROM rooms WHERE room_id = ?", room_id)
        return None if value is None else bool(value)

    async def set_public(self, room_id: str, public: bool) -> bool:
        """Publish or unpublish; False if the room is unknown."""
        changed = await self._db.execute(
            "UPDATE rooms SET is_public = ? WHERE room_id = ?", public, room_id
        )
        return changed > 0

    async def network_rooms(self) -> list[tuple[str, str, str]]:
        """(service ID, network ID, room ID) of every application-service room list."""
        rows = await self._db.fetch_all(
            "SELECT as_id, network_id, room_id FROM appservice_room_list"
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def set_network_room(
        self, as_id: str, network_id: str, room_id: str, public: bool
    ) -> None:
        if public:
            await self._db.execute(
                "INSERT INTO appservice_room_list (as_id, network_id, room_id)"
                " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                as_id,
                network_id,
                room_id,
            )
        else:
            await self._db.execute(
                "DELETE FROM appservice_room_list"
                " WHERE as_id = ? AND network_id = ? AND room_id = ?",
                as_id,
                network_id,
                room_id,
            )

    async def public_room_ids(self) -> list[str]:
        rows = await self._db.fetch_all("SELECT room_id FROM rooms WHERE is_public = TRUE")
        return [r[0] for r in rows]

    async def directory_state(
        self, room_ids: Sequence[str]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """{room_id: {event type: content}} of the directory state of these rooms."""
        if not room_ids:
            return {}
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT cs.room_id, sk.type, e.json, e.redacted_by FROM current_state cs"
            " JOIN state_keys sk ON sk.key_nid = cs.key_nid"
            " JOIN events e ON e.event_nid = cs.event_nid"
            f" WHERE {sql.in_array('cs.room_id')} AND sk.state_key = ''"
            f" AND {sql.in_array('sk.type')}",
            sql.array(room_ids),
            sql.array(DIRECTORY_STATE_TYPES),
        )
        out: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in room_ids}
        for room_id, event_type, raw, redacted_by in rows:
            content = orjson.loads(raw).get("content")
            if redacted_by is not None and event_type in _EMPTIED_BY_REDACTION:
                content = {}
            out[room_id][event_type] = content if isinstance(content, dict) else {}
        return out
