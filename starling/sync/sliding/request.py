"""The sliding sync request, validated into plain data.

Two shapes are accepted, because clients send both: Synapse's (what Element X and
matrix-rust-sdk send today: `ranges`, `required_state` as `[type, state_key]` pairs with
`*`, `$LAZY` and `$ME`, `is_invite`, `pos`/`timeout` as query parameters) and the MSC's
latest text (`range`, `required_state` as `{include, exclude, lazy_members}`,
`is_invited`, `pos`/`timeout` in the body). Every bad field is a 400 with a Matrix error
(`M_BAD_JSON` for a wrong type, `M_INVALID_PARAM` for a value out of bounds), never a 500.
Unknown extensions are ignored (MSC: clients must be able to ask a server that does not
know them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starling.errors import MatrixError, bad_json, invalid_param
from starling.protocol.event import StateKey
from starling.protocol.identifiers import is_valid_room_id

MAX_LISTS = 100
MAX_SUBSCRIPTIONS = 100
MAX_RANGES = 10
MAX_RANGE_INDEX = 2**31 - 1
MAX_TIMELINE_LIMIT = 1000
MAX_REQUIRED_STATE = 100
MAX_FILTER_ITEMS = 100
MAX_KEY_BYTES = 255
MAX_CONN_ID_BYTES = 128
PRESENCE_STATES = ("online", "offline", "unavailable")
LAZY = "$LAZY"
ME = "$ME"
WILD = "*"
_DIGITS = re.compile(r"[0-9]{1,18}")
THREADS_EXTENSIONS = ("io.element.msc4360.threads", "threads")  # unstable name first
THREADS_DEFAULT_LIMIT = 100
THREADS_MAX_LIMIT = 100  # the MSC lets servers impose a smaller limit than asked


@dataclass(frozen=True)
class StateRule:
    """One required_state element; None is a wildcard."""

    type: str | None
    state_key: str | None

    def matches(self, key: StateKey) -> bool:
        return (self.type is None or self.type == key[0]) and (
            self.state_key is None or self.state_key == key[1]
        )


@dataclass(frozen=True)
class RequiredState:
    include: frozenset[StateRule] = frozenset()
    exclude: frozenset[StateRule] = frozenset()
    lazy_members: bool = False

    def matches(self, key: StateKey) -> bool:
        """Whether this config returns the state entry at `key` (lazy members aside).
        With lazy members on, member events come only from rules naming the state key."""
        if any(rule.matches(key) for rule in self.exclude):
            return False
        if self.lazy_members and key[0] == "m.room.member":
            return any(r.state_key is not None and r.matches(key) for r in self.include)
        return any(rule.matches(key) for rule in self.include)


@dataclass(frozen=True)
class RoomConfig:
    timeline_limit: int
    required_state: RequiredState


@dataclass(frozen=True)
class CombinedConfig:
    """The superset of every room config a room matched (MSC: "Combining room configs")."""

    timeline_limit: int
    states: frozenset[RequiredState]
    lazy_members: bool = False

    @classmethod
    def of(cls, configs: list[RoomConfig]) -> CombinedConfig:
        states = frozenset(c.required_state for c in configs)
        return cls(
            max(c.timeline_limit for c in configs),
            states,
            any(s.lazy_members for s in states),
        )

    def matches(self, key: StateKey) -> bool:
        return any(s.matches(key) for s in self.states)


@dataclass(frozen=True)
class ListFilters:
    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: frozenset[str | None] | None = None
    not_room_types: frozenset[str | None] = frozenset()
    spaces: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    not_tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ListRequest:
    name: str
    config: RoomConfig
    ranges: tuple[tuple[int, int], ...] | None  # None: every room of the list
    filters: ListFilters


@dataclass(frozen=True)
class ScopedExtension:
    """account_data, receipts, typing: which lists' and subscriptions' rooms they cover
    (None: all of them, the `*` default)."""

    lists: frozenset[str] | None = None
    rooms: frozenset[str] | None = None


@dataclass(frozen=True)
class ThreadsExtension:
    """MSC4360's threads extension: `name` is the key the client asked under (the
    unstable `io.element.msc4360.threads` or `threads`), answered under the same."""

    name: str
    include_roots: bool = False
    limit: int = THREADS_DEFAULT_LIMIT


@dataclass(frozen=True)
class ExtensionsRequest:
    to_device: bool = False
    to_device_since: int | None = None
    e2ee: bool = False
    account_data: ScopedExtension | None = None
    receipts: ScopedExtension | None = None
    typing: ScopedExtension | None = None
    threads: ThreadsExtension | None = None


@dataclass(frozen=True)
class SlidingRequest:
    user_id: str
    device_id: str | None
    conn_id: str
    pos: str | None
    timeout_ms: int
    lists: Mapping[str, ListRequest]
    subscriptions: Mapping[str, RoomConfig]
    extensions: ExtensionsRequest
    set_presence: str | None = None


# --- parsing -------------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"'{where}' must be an object")
    return value


def _bool(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_json(f"'{where}' must be a boolean")
    return value


def _int(value: Any, where: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'{where}' must be an integer")
    if not minimum <= value <= maximum:
        raise invalid_param(f"'{where}' must be between {minimum} and {maximum}")
    return value


def _str(value: Any, where: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    if not isinstance(value, str):
        raise bad_json(f"'{where}' must be a string")
    if len(value.encode()) > max_bytes:
        raise invalid_param(f"'{where}' is longer than {max_bytes} bytes")
    return value


def _str_list(value: Any, where: str, nullable: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise bad_json(f"'{where}' must be a list")
    if len(value) > MAX_FILTER_ITEMS:
        raise invalid_param(f"'{where}' has more than {MAX_FILTER_ITEMS} entries")
    out: list[Any] = []
    for item in value:
        if item is None and nullable:
            out.append(None)
        else:
            out.append(_str(item, where))
    return out


def _state_part(value: str, user_id: str) -> str | None:
    if value == WILD:
        return None
    if value == ME:
        return user_id
    return value


def parse_required_state(raw: Any, where: str, user_id: str) -> RequiredState:
    if raw is None:
        return RequiredState()
    if isinstance(raw, list):
        # Synapse's shape: [[type, state_key], ...] with "*", "$LAZY" and "$ME".
        if len(raw) > MAX_REQUIRED_STATE:
            raise invalid_param(f"'{where}' has more than {MAX_REQUIRED_STATE} entries")
        include: set[StateRule] = set()
        lazy = False
        for pair in raw:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)
            ):
                raise bad_json(f"'{where}' entries must be [type, state_key] pairs of strings")
            etype = _str(pair[0], where)
            key = _str(pair[1], where)
            if etype == "m.room.member" and key == LAZY:
                lazy = True
                continue
            include.add(StateRule(_state_part(etype, user_id), _state_part(key, user_id)))
        return RequiredState(frozenset(include), frozenset(), lazy)
    if not isinstance(raw, dict):
        raise bad_json(f"'{where}' must be a list or an object")

    def rules(value: Any, field: str) -> frozenset[StateRule]:
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise bad_json(f"'{where}.{field}' must be a list")
        if len(value) > MAX_REQUIRED_STATE:
            raise invalid_param(f"'{where}.{field}' has more than {MAX_REQUIRED_STATE} entries")
        out: set[StateRule] = set()
        for item in value:
            element = _obj(item, f"{where}.{field}[]")
            etype = element.get("type")
            key = element.get("state_key")
            state_key = None if key is None else _str(key, f"{where}.{field}[].state_key")
            out.add(
                StateRule(
                    None if etype is None else _str(etype, f"{where}.{field}[].type"),
                    user_id if state_key == ME else state_key,
                )
            )
        return frozenset(out)

    return RequiredState(
        rules(raw.get("include"), "include"),
        rules(raw.get("exclude"), "exclude"),
        bool(_bool(raw.get("lazy_members"), f"{where}.lazy_members")),
    )


def parse_room_config(raw: Any, where: str, user_id: str) -> RoomConfig:
    body = _obj(raw, where)
    if "timeline_limit" not in body:
        raise bad_json(f"'{where}.timeline_limit' is required")
    limit = _int(body["timeline_limit"], f"{where}.timeline_limit", 0, MAX_TIMELINE_LIMIT)
    return RoomConfig(
        limit,
        parse_required_state(body.get("required_state"), f"{where}.required_state", user_id),
    )


def _range(value: Any, where: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise bad_json(f"'{where}' must be a pair of integers")
    start = _int(value[0], where, 0, MAX_RANGE_INDEX)
    end = _int(value[1], where, 0, MAX_RANGE_INDEX)
    if start > end:
        raise invalid_param(f"'{where}' starts after it ends")
    return (start, end)


def parse_filters(raw: Any, where: str) -> ListFilters:
    body = _obj(raw, where)

    def opt_list(name: str, nullable: bool = False) -> frozenset[Any] | None:
        value = body.get(name)
        if value is None:
            return None
        return frozenset(_str_list(value, f"{where}.{name}", nullable))

    is_invite = _bool(body.get("is_invite"), f"{where}.is_invite")
    if is_invite is None:
        is_invite = _bool(body.get("is_invited"), f"{where}.is_invited")
    spaces = opt_list("spaces")
    return ListFilters(
        is_dm=_bool(body.get("is_dm"), f"{where}.is_dm"),
        is_encrypted=_bool(body.get("is_encrypted"), f"{where}.is_encrypted"),
        is_invite=is_invite,
        room_types=opt_list("room_types", nullable=True),
        not_room_types=opt_list("not_room_types", nullable=True) or frozenset(),
        spaces=spaces,
        tags=opt_list("tags"),
        not_tags=opt_list("not_tags") or frozenset(),
    )


def parse_list(name: str, raw: Any, user_id: str) -> ListRequest:
    where = f"lists.{name}"
    body = _obj(raw, where)
    config = parse_room_config(body, where, user_id)
    ranges: tuple[tuple[int, int], ...] | None = None
    if body.get("ranges") is not None:
        value = body["ranges"]
        if not isinstance(value, list):
            raise bad_json(f"'{where}.ranges' must be a list of pairs")
        if len(value) > MAX_RANGES:
            raise invalid_param(f"'{where}.ranges' has more than {MAX_RANGES} ranges")
        ranges = tuple(_range(r, f"{where}.ranges[]") for r in value)
    elif body.get("range") is not None:
        ranges = (_range(body["range"], f"{where}.range"),)
    if body.get("slow_get_all_rooms") is True:
        ranges = None
    return ListRequest(name, config, ranges, parse_filters(body.get("filters"), f"{where}.filters"))


def _scoped(raw: Any, where: str) -> ScopedExtension | None:
    body = _obj(raw, where)
    if not _bool(body.get("enabled"), f"{where}.enabled"):
        return None

    def scope(name: str) -> frozenset[str] | None:
        value = body.get(name)
        if value is None:
            return None
        items = _str_list(value, f"{where}.{name}")
        return None if WILD in items else frozenset(items)

    return ScopedExtension(scope("lists"), scope("rooms"))


def parse_extensions(raw: Any) -> ExtensionsRequest:
    body = _obj(raw, "extensions")
    to_device = _obj(body.get("to_device"), "extensions.to_device")
    since: int | None = None
    raw_since = to_device.get("since")
    if raw_since is not None:
        text = _str(raw_since, "extensions.to_device.since", 20)
        if not _DIGITS.fullmatch(text):
            raise invalid_param("'extensions.to_device.since' must be a to_device next_batch")
        since = int(text)
    e2ee = _obj(body.get("e2ee"), "extensions.e2ee")
    threads: ThreadsExtension | None = None
    for name in THREADS_EXTENSIONS:
        raw_threads = _obj(body.get(name), f"extensions.{name}")
        if not _bool(raw_threads.get("enabled"), f"extensions.{name}.enabled"):
            continue
        raw_limit = raw_threads.get("limit")
        limit = (
            THREADS_DEFAULT_LIMIT
            if raw_limit is None
            else _int(raw_limit, f"extensions.{name}.limit", 1, 2**31)
        )
        threads = ThreadsExtension(
            name,
            bool(_bool(raw_threads.get("include_roots"), f"extensions.{name}.include_roots")),
            min(limit, THREADS_MAX_LIMIT),
        )
        break
    return ExtensionsRequest(
        to_device=bool(_bool(to_device.get("enabled"), "extensions.to_device.enabled")),
        to_device_since=since,
        e2ee=bool(_bool(e2ee.get("enabled"), "extensions.e2ee.enabled")),
        account_data=_scoped(body.get("account_data"), "extensions.account_data"),
        receipts=_scoped(body.get("receipts"), "extensions.receipts"),
        typing=_scoped(body.get("typing"), "extensions.typing"),
        threads=threads,
    )


def parse_request(
    body: Mapping[str, Any],
    *,
    user_id: str,
    device_id: str | None,
    pos: str | None,
    timeout_ms: int | None,
    set_presence: str | None,
) -> SlidingRequest:
    """The request from its body and query parameters (query wins, as Synapse reads
    them there; the MSC moved them into the body)."""
    conn_id = body.get("conn_id")
    conn = "" if conn_id is None else _str(conn_id, "conn_id", MAX_CONN_ID_BYTES)
    if pos is None and body.get("pos") is not None:
        pos = _str(body["pos"], "pos", 1024)
    if timeout_ms is None:
        raw_timeout = body.get("timeout")
        timeout_ms = 0 if raw_timeout is None else _int(raw_timeout, "timeout", 0, 2**31)
    if set_presence is None and body.get("set_presence") is not None:
        set_presence = _str(body["set_presence"], "set_presence")
    if set_presence is not None and set_presence not in PRESENCE_STATES:
        raise MatrixError(
            400, "M_INVALID_PARAM", f"'set_presence' must be one of {PRESENCE_STATES}"
        )
    raw_lists = _obj(body.get("lists"), "lists")
    if len(raw_lists) > MAX_LISTS:
        raise invalid_param(f"At most {MAX_LISTS} lists")
    lists: dict[str, ListRequest] = {}
    for name, raw in raw_lists.items():
        if not name or len(name.encode()) > 64:
            raise invalid_param("List names must be 1-64 bytes")
        lists[name] = parse_list(name, raw, user_id)
    raw_subs = _obj(body.get("room_subscriptions"), "room_subscriptions")
    if len(raw_subs) > MAX_SUBSCRIPTIONS:
        raise invalid_param(f"At most {MAX_SUBSCRIPTIONS} room subscriptions")
    subs: dict[str, RoomConfig] = {}
    for room_id, raw in raw_subs.items():
        if not is_valid_room_id(room_id):
            raise invalid_param(f"{room_id[:100]!r} is not a room ID")
        subs[room_id] = parse_room_config(raw, f"room_subscriptions.{room_id}", user_id)
    return SlidingRequest(
        user_id=user_id,
        device_id=device_id,
        conn_id=conn,
        pos=pos,
        timeout_ms=timeout_ms,
        lists=lists,
        subscriptions=subs,
        extensions=parse_extensions(body.get("extensions")),
        set_presence=set_presence,
    )
