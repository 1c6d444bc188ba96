"""Power levels: reading an `m.room.power_levels` content (or its absence) per room version.

Owns: `PowerLevels` (the parsed view the auth rules, state resolution and push rules ask
"what level does this user have / does this action need"), `parse_power_level_value` (the
value forms each room version accepts), `creators` (who created the room, in the sense the
rules of that version use), and `is_valid_user_id` as the power-level and creator rules
apply it.

Sources: Client-Server API > Permissions and the `m.room.power_levels` schema (defaults);
Room Version 1 > "values as strings" / "values as floats"; Room Version 10 (integers only);
Room Version 12 (creators have an infinite level). Reading is lenient: a value this room
version cannot parse falls back to the default, because the event is already in the room.
`power_levels_change_error` is auth rule 10 (whether a new power-levels content may
replace the current one), strict where reading is lenient; auth_rules.py calls it.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any

from starling.protocol.event import Event
from starling.protocol.room_versions import RoomVersion

# Defaults from the m.room.power_levels schema and the Server-Server API definitions of
# the invite/kick/ban/redact levels.
DEFAULT_USERS = 0
DEFAULT_EVENTS = 0
DEFAULT_STATE = 50
DEFAULT_INVITE = 0
DEFAULT_KICK = 50
DEFAULT_BAN = 50
DEFAULT_REDACT = 50
DEFAULT_NOTIFICATION = 50
# Rooms 1-11 without a power-levels event: the creator has 100, everyone else 0.
IMPLICIT_CREATOR_LEVEL = 100

NAMED_LEVELS: tuple[str, ...] = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
_NAMED_DEFAULTS: dict[str, int] = {
    "users_default": DEFAULT_USERS,
    "events_default": DEFAULT_EVENTS,
    "state_default": DEFAULT_STATE,
    "ban": DEFAULT_BAN,
    "redact": DEFAULT_REDACT,
    "kick": DEFAULT_KICK,
    "invite": DEFAULT_INVITE,
}

# Room Version 1 > values as strings: optional surrounding whitespace, one optional sign,
# base-10 digits (leading zeros allowed), nothing else. ASCII digits only: Python's int()
# would also take "1_000" and non-ASCII digits, which the spec's format does not.
_INT_STRING = re.compile(r"\s*[+-]?[0-9]+\s*")

# Appendices > Identifier Grammar > Server Name: hostname [":" port], where hostname is an
# IPv4 literal, a bracketed IPv6 literal or a DNS name (IPv4 is within the DNS-name chars).
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?")


class InvalidPowerLevel(ValueError):
    """A power level value in a form this room version does not accept."""


def parse_power_level_value(value: Any, room_version: RoomVersion) -> int:
    """The integer a power level value stands for, or InvalidPowerLevel.

    Rooms 1-9 also accept integer strings, rooms 1-5 also floats (exponent applied, then
    truncated toward zero; infinities and NaN rejected); rooms 10+ only JSON integers.
    Booleans are never integers here, whatever Python thinks.
    """
    t = type(value)
    if t is int:
        return int(value)
    if room_version.integer_power_levels:
        raise InvalidPowerLevel("power levels must be integers in this room version")
    if t is str:
        if _INT_STRING.fullmatch(value):
            return int(value)
        raise InvalidPowerLevel(f"{value!r} is not an integer string")
    if t is float and room_version.float_power_levels:
        if not math.isfinite(value):
            raise InvalidPowerLevel("power level is not a finite number")
        return int(value)  # truncates toward zero, after the exponent is applied
    raise InvalidPowerLevel(f"{t.__name__} is not a valid power level")


def is_valid_user_id(user_id: Any) -> bool:
    """`@localpart:server_name`, at most 255 bytes.

    The localpart follows the historical grammar servers must still accept over
    federation (Appendices > Historical User IDs: anything but ':' and NUL, even empty);
    the server name must follow its grammar.
    """
    if type(user_id) is not str or not user_id.startswith("@"):
        return False
    localpart, sep, server = user_id[1:].partition(":")
    if not sep or "\x00" in localpart or len(user_id.encode("utf-8")) > 255:
        return False
    return _SERVER_NAME.fullmatch(server) is not None


def server_of(identifier: str) -> str:
    """The server part of `@user:server` or `$id:server` / `!id:server` ("" if none)."""
    return identifier.partition(":")[2]


def original_creator(create: Event) -> str | None:
    """The single creator the older rules name: `content.creator` in rooms 1-10, the
    create event's sender from room 11 on (Room Version 11 > Event format)."""
    if create.room_version.create_event_has_creator:
        creator = create.content.get("creator")
        return creator if isinstance(creator, str) else None
    return create.sender


def creators(create: Event) -> frozenset[str]:
    """The room's creators: from room 12, the create event's sender plus any valid
    `additional_creators`; before that, the one creator of `original_creator`."""
    if create.room_version.privileged_creators:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            return frozenset([create.sender, *(u for u in extra if is_valid_user_id(u))])
        return frozenset((create.sender,))
    creator = original_creator(create)
    return frozenset((creator,)) if creator is not None else frozenset()


def _lenient(value: Any, default: int, room_version: RoomVersion) -> int:
    if type(value) is int:
        return int(value)
    try:
        return parse_power_level_value(value, room_version)
    except InvalidPowerLevel:
        return default


def _lenient_map(value: Any, room_version: RoomVersion) -> dict[str, int]:
    """A str -> level mapping, dropping entries this room version cannot parse."""
    if not isinstance(value, dict):
        return {}
    # The common case (all plain integers) is one C-level pass, no copy per entry.
    if all(type(v) is int for v in value.values()):
        return value
    out: dict[str, int] = {}
    for k, v in value.items():
        with contextlib.suppress(InvalidPowerLevel):
            out[k] = parse_power_level_value(v, room_version)
    return out


class PowerLevels:
    """The levels in force given a room's create and power-levels events.

    Attributes `users_default`, `events_default`, `state_default`, `invite`, `kick`, `ban`,
    `redact` are the named levels (defaults applied); `users`, `events` and
    `notifications` are the parsed maps (read-only by convention: they may share the
    event's own dicts). `creators` are the room creators, infinitely powerful when
    `privileged_creators` (room 12+).
    """

    __slots__ = (
        "ban",
        "creators",
        "events",
        "events_default",
        "has_event",
        "invite",
        "kick",
        "notifications",
        "privileged_creators",
        "redact",
        "state_default",
        "users",
        "users_default",
    )

    users: Mapping[str, int]
    events: Mapping[str, int]
    notifications: Mapping[str, int]

    def __init__(
        self,
        content: Mapping[str, Any] | None,
        room_creators: frozenset[str],
        room_version: RoomVersion,
    ) -> None:
        self.creators = room_creators
        self.privileged_creators = room_version.privileged_creators
        self.has_event = content is not None
        if content is None:
            content = {}
            if not room_version.privileged_creators:
                self.users = dict.fromkeys(room_creators, IMPLICIT_CREATOR_LEVEL)
            else:
                self.users = {}
        else:
            self.users = _lenient_map(content.get("users"), room_version)
        get = content.get
        self.users_default = _lenient(get("users_default", 0), DEFAULT_USERS, room_version)
        self.events_default = _lenient(get("events_default", 0), DEFAULT_EVENTS, room_version)
        self.state_default = _lenient(get("state_default", 50), DEFAULT_STATE, room_version)
        self.invite = _lenient(get("invite", 0), DEFAULT_INVITE, room_version)
        self.kick = _lenient(get("kick", 50), DEFAULT_KICK, room_version)
        self.ban = _lenient(get("ban", 50), DEFAULT_BAN, room_version)
        self.redact = _lenient(get("redact", 50), DEFAULT_REDACT, room_version)
        self.events = _lenient_map(get("events"), room_version)
        self.notifications = _lenient_map(get("notifications"), room_version)

    @classmethod
    def from_state(
        cls, create: Event | None, power_levels: Event | None, room_version: RoomVersion
    ) -> PowerLevels:
        """Parse once; `create` supplies the creators (None: nobody is a creator)."""
        room_creators = creators(create) if create is not None else frozenset()
        content = power_levels.content if power_levels is not None else None
        return cls(content, room_creators, room_version)

    def user_level(self, user_id: str) -> int | float:
        """The user's level; math.inf for creators in room 12+."""
        if self.privileged_creators and user_id in self.creators:
            return math.inf
        level = self.users.get(user_id)
        return self.users_default if level is None else level

    def event_level(self, event_type: str, is_state: bool) -> int:
        """The level needed to send an event of this type (`events`, else the default)."""
        level = self.events.get(event_type)
        if level is not None:
            return level
        return self.state_default if is_state else self.events_default

    def notification_level(self, key: str) -> int:
        """The level needed for a notification kind, e.g. "room" for @room pings."""
        level = self.notifications.get(key)
        return DEFAULT_NOTIFICATION if level is None else level

    def __repr__(self) -> str:
        return (
            f"<PowerLevels users={dict(self.users)!r} default={self.users_default} "
            f"events={dict(self.events)!r} state={self.state_default} "
            f"msg={self.events_default} invite={self.invite} kick={self.kick} "
            f"ban={self.ban} redact={self.redact} creators={sorted(self.creators)!r}>"
        )


# --- Whether a new power-levels content is acceptable (auth rule 10) ---------------------


class _Levels:
    """The values a power-levels content sets explicitly: named levels and the three maps."""

    __slots__ = ("events", "named", "notifications", "users")

    def __init__(self) -> None:
        self.named: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.notifications: dict[str, int] = {}
        self.users: dict[str, int] = {}


def _parse_new_levels(content: Mapping[str, Any], rules: RoomVersion) -> _Levels | str:
    """The explicit values of a proposed power-levels content, or why it is invalid.

    Rule 10.1 (rooms 1-9) only spells out `users`; the other values are held to the same
    form here, since their meaning would otherwise be undefined. Rooms 10+ (rules 9.1-9.3)
    demand JSON integers throughout. `notifications` is only looked at from room 6 on,
    the version that brought it under the rules. An absent `users` means no entries.
    """
    levels = _Levels()
    for name in NAMED_LEVELS:
        if name in content:
            try:
                levels.named[name] = parse_power_level_value(content[name], rules)
            except InvalidPowerLevel:
                return f"{name} is not a valid power level"
    maps: list[tuple[str, dict[str, int]]] = [("events", levels.events)]
    if rules.limit_notifications_power_levels:
        maps.append(("notifications", levels.notifications))
    for name, target in maps:
        if name not in content:
            continue
        value = content[name]
        if not isinstance(value, dict):
            return f"{name} is not an object"
        for key, level in value.items():
            try:
                target[key] = parse_power_level_value(level, rules)
            except InvalidPowerLevel:
                return f"{name} has an invalid power level for {key!r}"
    users = content.get("users", {})
    if not isinstance(users, dict):
        return "users is not an object"
    for user_id, level in users.items():
        if not is_valid_user_id(user_id):
            return f"users has an invalid user ID {user_id!r}"
        try:
            levels.users[user_id] = parse_power_level_value(level, rules)
        except InvalidPowerLevel:
            return f"users has an invalid power level for {user_id}"
    return levels


def _parse_old_levels(content: Mapping[str, Any], rules: RoomVersion) -> _Levels:
    """The explicit values of the power-levels event in the state, leniently: entries this
    room version cannot parse count as absent."""
    levels = _Levels()
    for name in NAMED_LEVELS:
        if name in content:
            with contextlib.suppress(InvalidPowerLevel):
                levels.named[name] = parse_power_level_value(content[name], rules)
    for name, target in (
        ("events", levels.events),
        ("notifications", levels.notifications),
        ("users", levels.users),
    ):
        value = content.get(name)
        if isinstance(value, dict):
            for key, level in value.items():
                with contextlib.suppress(InvalidPowerLevel):
                    target[key] = parse_power_level_value(level, rules)
    return levels


def power_levels_change_error(
    new_content: Mapping[str, Any],
    current_content: Mapping[str, Any] | None,
    sender: str,
    sender_level: int | float,
    room_creators: frozenset[str],
    room_version: RoomVersion,
) -> str | None:
    """Why `sender` (at `sender_level` under the current power levels) may not replace
    `current_content` (None: there is none yet) with `new_content`, or None if they may.

    Auth rule 10 of room 1 (rule 9 in rooms 6-11, 10 again in room 12), after the rules
    on membership and required levels have passed.
    """
    rules = room_version
    new = _parse_new_levels(new_content, rules)
    if isinstance(new, str):
        return new
    if rules.privileged_creators:
        # Room 12, rule 10.4: creators are never listed; their level is fixed at infinity.
        listed = room_creators.intersection(new.users)
        if listed:
            return f"users lists the room creator {min(listed)}"
    if current_content is None:  # rule 10.2: the first power-levels event
        return None
    old = _parse_old_levels(current_content, rules)

    # Rule 10.3: added, changed or removed named levels; an absent side is not compared.
    for name in NAMED_LEVELS:
        before = old.named.get(name)
        after = new.named.get(name)
        if before == after:
            continue
        if before is not None and before > sender_level:
            return f"{name} is above the power level of {sender}"
        if after is not None and after > sender_level:
            return f"new {name} is above the power level of {sender}"

    # Rules 10.4/10.5 (and `notifications` from room 6 on).
    maps = [("events", old.events, new.events)]
    if rules.limit_notifications_power_levels:
        maps.append(("notifications", old.notifications, new.notifications))
    for name, before_map, after_map in maps:
        error = _map_change_error(name, before_map, after_map, sender_level, sender)
        if error is not None:
            return error

    # Rules 10.6/10.7: other users' entries at or above the sender's level are untouchable;
    # nobody may be raised above the sender.
    for user_id in _keys_of_both(old.users, new.users):
        before = old.users.get(user_id)
        after = new.users.get(user_id)
        if before == after:
            continue
        if user_id != sender and before is not None and before >= sender_level:
            return f"power level of {user_id} is not below that of {sender}"
        if after is not None and after > sender_level:
            return f"new power level of {user_id} is above that of {sender}"
    return None


def _keys_of_both(before: Mapping[str, int], after: Mapping[str, int]) -> set[str]:
    return set(before).union(after)


def _map_change_error(
    name: str,
    before_map: Mapping[str, int],
    after_map: Mapping[str, int],
    sender_level: int | float,
    sender: str,
) -> str | None:
    for key in _keys_of_both(before_map, after_map):
        before = before_map.get(key)
        after = after_map.get(key)
        if before == after:
            continue
        if before is not None and before > sender_level:
            return f"{name} level of {key} is above the power level of {sender}"
        if after is not None and after > sender_level:
            return f"new {name} level of {key} is above the power level of {sender}"
    return None


_LEVEL_KEYS = (
    "ban",
    "kick",
    "redact",
    "invite",
    "events_default",
    "state_default",
    "users_default",
)
_MAP_KEYS = ("events", "users", "notifications")


def power_levels_shape_error(content: Mapping[str, Any]) -> str | None:
    """Why a power-levels content is not even shaped like one (a level given as an object
    or list, `events` / `users` / `notifications` not objects of levels), or None.

    For events this server builds: such a body is the client's malformed request (400
    M_BAD_JSON), as Synapse's schema check has it. Values of the right shape but the wrong
    kind (a string where this room version wants an integer) are left to the auth rules,
    which refuse them (403).
    """
    for key in _LEVEL_KEYS:
        if isinstance(content.get(key), (dict, list)):
            return f"'{key}' must be a power level, not {type(content[key]).__name__}"
    for key in _MAP_KEYS:
        value = content.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"'{key}' must be an object of power levels"
        for name, level in value.items():
            if isinstance(level, (dict, list)) or level is None:
                return f"'{key}.{name}' must be a power level"
    return None
