"""What another server says about its rooms in a space hierarchy (server-server-api
GET /hierarchy/{roomId}), checked before any of it reaches a client.

An answer is untrusted input: each room summary keeps only the spec's fields with the
spec's types (strings bounded in length), children_state only well-formed
`m.space.child` stripped events, `inaccessible_children` only room IDs. Anything else
is dropped rather than passed on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starling.protocol.identifiers import is_valid_room_id

JsonDict = dict[str, Any]

RemoteHierarchyFetcher = Callable[[str, str, bool], Awaitable[Any]]
"""(server, room ID, suggested_only) -> the server's /hierarchy answer, or None."""

MAX_TEXT = 1000
MAX_CHILDREN = 50
_TEXT_FIELDS = ("name", "topic", "canonical_alias", "avatar_url", "room_type", "encryption")
_BOOL_FIELDS = ("world_readable", "guest_can_join")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_TEXT else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**53:
        return None
    return value


def clean_child_event(raw: object) -> JsonDict | None:
    if not isinstance(raw, dict) or raw.get("type") != "m.space.child":
        return None
    state_key, sender = raw.get("state_key"), raw.get("sender")
    content, ts = raw.get("content"), _int(raw.get("origin_server_ts"))
    if not isinstance(state_key, str) or not is_valid_room_id(state_key):
        return None
    if not isinstance(content, dict) or not isinstance(sender, str) or ts is None:
        return None
    via = content.get("via")
    if not isinstance(via, list) or not via or not all(_text(s) for s in via):
        return None
    return {
        "type": "m.space.child",
        "state_key": state_key,
        "content": content,
        "sender": sender[:MAX_TEXT],
        "origin_server_ts": ts,
    }


def clean_summary(raw: object, *, with_children: bool) -> JsonDict | None:
    """A room summary as a client may see it, or None when it is not one."""
    if not isinstance(raw, dict):
        return None
    room_id = raw.get("room_id")
    if not isinstance(room_id, str) or not is_valid_room_id(room_id):
        return None
    entry: JsonDict = {
        "room_id": room_id,
        "num_joined_members": _int(raw.get("num_joined_members")) or 0,
        "join_rule": _text(raw.get("join_rule")) or "public",
    }
    for name in _BOOL_FIELDS:
        entry[name] = raw.get(name) is True
    for name in _TEXT_FIELDS:
        value = _text(raw.get(name))
        if value is not None:
            entry[name] = value
    version = _text(raw.get("room_version"))
    if version is not None:
        entry["room_version"] = version
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        entry["allowed_room_ids"] = [
            r for r in allowed[:MAX_CHILDREN] if isinstance(r, str) and is_valid_room_id(r)
        ]
    if with_children:
        children = raw.get("children_state")
        cleaned = (
            [clean_child_event(c) for c in children[:MAX_CHILDREN]]
            if isinstance(children, list)
            else []
        )
        entry["children_state"] = [c for c in cleaned if c is not None]
    return entry


def parse_answer(
    answer: object, room_id: str
) -> tuple[JsonDict, dict[str, JsonDict], set[str]] | None:
    """(the room, its children's summaries by room ID, inaccessible children) from a
    /hierarchy answer about `room_id`, or None when it is not one."""
    if not isinstance(answer, dict):
        return None
    room = clean_summary(answer.get("room"), with_children=True)
    if room is None or room["room_id"] != room_id:
        return None
    children: dict[str, JsonDict] = {}
    raw_children = answer.get("children")
    if isinstance(raw_children, list):
        for raw in raw_children[:MAX_CHILDREN]:
            child = clean_summary(raw, with_children=False)
            if child is not None:
                children[child["room_id"]] = child
    inaccessible: set[str] = set()
    raw_inaccessible = answer.get("inaccessible_children")
    if isinstance(raw_inaccessible, list):
        inaccessible = {
            r for r in raw_inaccessible[:MAX_CHILDREN] if isinstance(r, str) and is_valid_room_id(r)
        }
    return room, children, inaccessible
