"""The in-memory form of a PDU that the auth rules and state resolution work on.

An `Event` wraps the PDU's JSON (`pdu`, exactly as signed and hashed) and exposes the
fields every algorithm reads as attributes, normalised across event formats: prev and auth
events are plain ID tuples in every room version, and in room version 12 the create
event's room ID is derived from its event ID. Events are immutable; nothing here
validates the format (see `event_format`), it only reads what is there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from starling.protocol.room_versions import RoomVersion

JsonDict = dict[str, Any]

StateKey = tuple[str, str]
"""A state map key: (event type, state key)."""


def _ids(refs: Any) -> tuple[str, ...]:
    """Event IDs from a prev_events/auth_events list of either format."""
    if not isinstance(refs, list):
        return ()
    # Interned: state resolution compares these IDs in sets millions of times, and equal
    # interned strings compare by identity.
    out: list[str] = []
    for ref in refs:
        if isinstance(ref, str):
            out.append(sys.intern(ref))
        elif isinstance(ref, list) and ref and isinstance(ref[0], str):
            out.append(sys.intern(ref[0]))  # room versions 1-2: [event_id, {"sha256": ...}]
    return tuple(out)


class Event:
    """A PDU with its event ID and room version. Treat as immutable."""

    __slots__ = (
        "auth_event_ids",
        "content",
        "depth",
        "event_id",
        "origin_server_ts",
        "pdu",
        "prev_event_ids",
        "room_id",
        "room_version",
        "sender",
        "state_key",
        "type",
    )

    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    content: JsonDict
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    room_version: RoomVersion
    pdu: JsonDict

    def __init__(self, pdu: JsonDict, event_id: str, room_version: RoomVersion) -> None:
        self.pdu = pdu
        self.event_id = sys.intern(event_id)
        self.room_version = room_version
        etype = pdu.get("type")
        self.type = etype if isinstance(etype, str) else ""
        sk = pdu.get("state_key")
        self.state_key = sk if isinstance(sk, str) else None
        sender = pdu.get("sender")
        self.sender = sender if isinstance(sender, str) else ""
        content = pdu.get("content")
        self.content = content if isinstance(content, dict) else {}
        self.prev_event_ids = _ids(pdu.get("prev_events"))
        self.auth_event_ids = _ids(pdu.get("auth_events"))
        depth = pdu.get("depth")
        self.depth = depth if isinstance(depth, int) and not isinstance(depth, bool) else 0
        ts = pdu.get("origin_server_ts")
        self.origin_server_ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
        room_id = pdu.get("room_id")
        if isinstance(room_id, str):
            self.room_id = room_id
        elif (
            room_version.room_id_from_create_event
            and self.type == "m.room.create"
            and self.state_key == ""
        ):
            self.room_id = "!" + event_id[1:]
        else:
            self.room_id = ""

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_map_key(self) -> StateKey:
        """(type, state_key); only meaningful for state events."""
        return (self.type, self.state_key if self.state_key is not None else "")

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @property
    def redacts(self) -> str | None:
        """The target of an m.room.redaction, wherever this room version keeps it."""
        if self.room_version.redacts_in_content:
            r = self.content.get("redacts")
        else:
            r = self.pdu.get("redacts")
        return r if isinstance(r, str) else None

    @property
    def unsigned(self) -> Mapping[str, Any]:
        u = self.pdu.get("unsigned")
        return u if isinstance(u, dict) else {}

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} from {self.sender}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)
