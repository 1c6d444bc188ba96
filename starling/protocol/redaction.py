"""The redaction algorithm: what survives of an event once it is redacted.

The redacted form is what gets signed and what the reference hash (so the event ID in
room versions 3+) covers, so it must be bit-exact with every other server. There are five
families (`RoomVersion.redaction`: v1, v6, v8, v9, v11); each is a top-level keep-list
plus, per event type, a keep-list for `content` (spec: Room Versions > Room Version N >
Redactions). This module owns those tables and `redact`; it does not decide *when* a
redaction applies (that is the auth/serving layer's business).
"""

from __future__ import annotations

from typing import Any

from starling.protocol.room_versions import RedactionRules, RoomVersion

JsonDict = dict[str, Any]


class RedactionError(ValueError):
    """The input cannot be redacted (not an object, or `content` is not an object)."""


_TOP_LEVEL_V1 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11 (MSC2176/MSC3821...) drops keys that no longer mean anything to the protocol.
_TOP_LEVEL_V11 = _TOP_LEVEL_V1 - {"origin", "membership", "prev_state"}

_POWER_LEVELS_V1 = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)

# Per family: event type -> content keys kept. A type absent from the table keeps nothing.
# m.room.create in v11 and the member event's third_party_invite in v11 need more than a
# key list; they are special-cased in `_redact_content`.
_CONTENT_V1: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership",),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule",),
    "m.room.power_levels": _POWER_LEVELS_V1,
    "m.room.aliases": ("aliases",),
    "m.room.history_visibility": ("history_visibility",),
}
# v6: m.room.aliases lost its special meaning, so its content is no longer protected.
_CONTENT_V6 = {k: v for k, v in _CONTENT_V1.items() if k != "m.room.aliases"}
# v8: restricted join rules need `allow` to survive.
_CONTENT_V8 = {**_CONTENT_V6, "m.room.join_rules": ("join_rule", "allow")}
# v9: ...and the authorising user of a restricted join (v8's bug).
_CONTENT_V9 = {**_CONTENT_V8, "m.room.member": ("membership", "join_authorised_via_users_server")}
_CONTENT_V11 = {
    **_CONTENT_V9,
    "m.room.create": (),  # all keys: handled in _redact_content
    "m.room.power_levels": (*_POWER_LEVELS_V1, "invite"),
    "m.room.redaction": ("redacts",),
}

_FAMILIES: dict[RedactionRules, tuple[frozenset[str], dict[str, tuple[str, ...]]]] = {
    RedactionRules.V1: (_TOP_LEVEL_V1, _CONTENT_V1),
    RedactionRules.V6: (_TOP_LEVEL_V1, _CONTENT_V6),
    RedactionRules.V8: (_TOP_LEVEL_V1, _CONTENT_V8),
    RedactionRules.V9: (_TOP_LEVEL_V1, _CONTENT_V9),
    RedactionRules.V11: (_TOP_LEVEL_V11, _CONTENT_V11),
}


def _redact_content(etype: Any, content: JsonDict, family: RedactionRules) -> JsonDict:
    keep = _FAMILIES[family][1].get(etype) if isinstance(etype, str) else None
    if keep is None:
        return {}
    if family is RedactionRules.V11:
        if etype == "m.room.create":
            return dict(content)
        if etype == "m.room.member":
            out = {k: content[k] for k in keep if k in content}
            tpi = content.get("third_party_invite")
            if isinstance(tpi, dict):
                # Only `signed` is protected. The spec is silent on an invite object
                # without `signed`; Synapse keeps an empty object, and hashes must agree.
                out["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
            return out
    return {k: content[k] for k in keep if k in content}


def redact(pdu: JsonDict, room_version: RoomVersion) -> JsonDict:
    """The redacted form of `pdu` under the room version's redaction rules.

    Returns a new top-level dict with a new `content` dict (always present, as in
    Synapse); deeper values are shared with the input, so copy before mutating them.
    Raises RedactionError if `pdu` or its `content` is not a JSON object.
    """
    if not isinstance(pdu, dict):
        raise RedactionError("event is not a JSON object")
    top_level, _ = _FAMILIES[room_version.redaction]
    content = pdu.get("content", {})
    if not isinstance(content, dict):
        raise RedactionError("event content is not a JSON object")
    out = {k: v for k, v in pdu.items() if k in top_level}
    out["content"] = _redact_content(pdu.get("type"), content, room_version.redaction)
    return out
