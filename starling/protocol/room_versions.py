"""Room versions 1-12 as a table of rule flags.

Code asks `rules.knocking`, never `version >= "7"`: each version is one frozen dataclass
built from the one before it with only what changed (spec: "Room Versions", one page per
version; our summary in shared/notes/room-versions.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class EventFormat(enum.Enum):
    """The PDU shape (pdu_v*.yaml in the spec data)."""

    V1 = 1  # event_id in the PDU; prev/auth events are [id, {hashes}] pairs (rooms 1-2)
    V2 = 2  # event ID is the reference hash, standard base64 (room 3)
    V3 = 3  # event ID is the reference hash, URL-safe base64 (rooms 4+)


class StateResAlgorithm(enum.Enum):
    V1 = 1
    V2 = 2
    V2_1 = 3  # room version 12 (MSC4297)


class RedactionRules(enum.Enum):
    """The five redaction algorithm families."""

    V1 = 1  # rooms 1-5
    V6 = 6  # rooms 6-7: m.room.aliases content no longer kept
    V8 = 8  # room 8: join_rules keeps `allow`
    V9 = 9  # rooms 9-10: member keeps join_authorised_via_users_server
    V11 = 11  # rooms 11-12


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    state_res: StateResAlgorithm
    redaction: RedactionRules
    # v1-v2: auth rule 11 checks redactions; v3+ checks them after auth, when serving.
    redaction_auth_rule: bool = True
    # v1-v2: an event also needs a signature from the server named in its event_id.
    event_id_domain_signature: bool = True
    # v5+: a signature only counts while the key's valid_until_ts >= origin_server_ts.
    enforce_key_validity: bool = False
    # v6+: integers within +-(2^53-1), no floats, checked on every event.
    strict_canonical_json: bool = False
    # v1-v5: the special m.room.aliases auth rule.
    special_case_aliases_auth: bool = True
    # v6+: the power-levels rule also checks `notifications`.
    limit_notifications_power_levels: bool = False
    # v7+: join rule `knock` and membership `knock`.
    knocking: bool = False
    # v8+: join rule `restricted` and join_authorised_via_users_server.
    restricted_joins: bool = False
    # v10+: join rule `knock_restricted`.
    knock_restricted: bool = False
    # v10+: power level values must be JSON integers (no strings, no floats).
    integer_power_levels: bool = False
    # v1-v5 also accept floats as power levels (v6+ canonical JSON forbids them).
    float_power_levels: bool = True
    # v1-v10: m.room.create needs content.creator; v11+ uses the create event's sender.
    create_event_has_creator: bool = True
    # v11+: m.room.redaction carries `redacts` in content instead of top level.
    redacts_in_content: bool = False
    # v12: the room ID is "!" + the create event's reference hash; create has no room_id.
    room_id_from_create_event: bool = False
    # v12: the create event is never listed in auth_events (the room ID implies it).
    create_event_in_auth_events: bool = True
    # v12: sender + additional_creators have infinite power.
    privileged_creators: bool = False

    @property
    def event_id_in_pdu(self) -> bool:
        return self.event_format is EventFormat.V1


V1 = RoomVersion(
    identifier="1",
    event_format=EventFormat.V1,
    state_res=StateResAlgorithm.V1,
    redaction=RedactionRules.V1,
)
V2 = replace(V1, identifier="2", state_res=StateResAlgorithm.V2)
V3 = replace(
    V2,
    identifier="3",
    event_format=EventFormat.V2,
    redaction_auth_rule=False,
    event_id_domain_signature=False,
)
V4 = replace(V3, identifier="4", event_format=EventFormat.V3)
V5 = replace(V4, identifier="5", enforce_key_validity=True)
V6 = replace(
    V5,
    identifier="6",
    redaction=RedactionRules.V6,
    strict_canonical_json=True,
    special_case_aliases_auth=False,
    limit_notifications_power_levels=True,
    float_power_levels=False,
)
V7 = replace(V6, identifier="7", knocking=True)
V8 = replace(V7, identifier="8", redaction=RedactionRules.V8, restricted_joins=True)
V9 = replace(V8, identifier="9", redaction=RedactionRules.V9)
V10 = replace(V9, identifier="10", knock_restricted=True, integer_power_levels=True)
V11 = replace(
    V10,
    identifier="11",
    redaction=RedactionRules.V11,
    create_event_has_creator=False,
    redacts_in_content=True,
)
V12 = replace(
    V11,
    identifier="12",
    state_res=StateResAlgorithm.V2_1,
    room_id_from_create_event=True,
    create_event_in_auth_events=False,
    privileged_creators=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
}

DEFAULT_ROOM_VERSION = "12"


class UnknownRoomVersion(ValueError):
    """A room version this server does not implement."""


def get_room_version(identifier: str) -> RoomVersion:
    """The rules of a known room version; UnknownRoomVersion otherwise."""
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnknownRoomVersion(f"unsupported room version {identifier!r}") from None
