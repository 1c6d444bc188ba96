"""Client-Server API: POST /search (spec: modules "Server Side Search",
#post_matrixclientv3search). The search itself is `starling.search.service`.

Validation: wrong JSON types are 400 M_BAD_JSON, a missing search_term 400
M_MISSING_PARAM, a bad `next_batch` or out-of-range value 400 M_INVALID_PARAM. A request
without the `room_events` category, an unknown `order_by` or grouping key answer 400
M_UNKNOWN, as Synapse does (the spec names no code); other categories next to
`room_events` are ignored.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.client.common import body_flag
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import MatrixError, bad_json, invalid_param, missing_param
from starling.search.service import ALL_KEYS, EventContextRequest, RoomEventsQuery, SearchService
from starling.sync.filtering import NO_FILTER, parse_event_filter

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CONTEXT = 100
MAX_TERM_LENGTH = 1024


def _object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_json(f"'{where}{key}' must be an object")
    return value


def _count(obj: dict[str, Any], key: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'event_context.{key}' must be an integer")
    if value < 0:
        raise invalid_param(f"'event_context.{key}' must not be negative")
    return min(value, MAX_CONTEXT)


def parse_room_events(category: dict[str, Any]) -> RoomEventsQuery:
    where = "search_categories.room_events."
    term = category.get("search_term")
    if term is None:
        raise missing_param(f"Missing '{where}search_term'")
    if not isinstance(term, str):
        raise bad_json(f"'{where}search_term' must be a string")
    keys_value = category.get("keys", list(ALL_KEYS))
    if not isinstance(keys_value, list) or not all(isinstance(k, str) for k in keys_value):
        raise bad_json(f"'{where}keys' must be a list of strings")
    unknown = [k for k in keys_value if k not in ALL_KEYS]
    if unknown:
        raise invalid_param(f"Unsupported search key {unknown[0][:80]!r}")
    order_by = category.get("order_by", "rank")
    if order_by not in ("rank", "recent"):
        raise MatrixError(400, "M_UNKNOWN", "Invalid order_by: must be 'rank' or 'recent'")
    filter_obj = _object(category, "filter", where)
    efilter = parse_event_filter(filter_obj, "filter.") if filter_obj is not None else NO_FILTER
    context_obj = _object(category, "event_context", where)
    context = None
    if context_obj is not None:
        context = EventContextRequest(
            before_limit=_count(context_obj, "before_limit", 5),
            after_limit=_count(context_obj, "after_limit", 5),
            include_profile=body_flag(context_obj, "include_profile", where="event_context."),
        )
    group_keys: set[str] = set()
    groupings = _object(category, "groupings", where)
    if groupings is not None:
        group_by = groupings.get("group_by", [])
        if not isinstance(group_by, list) or not all(isinstance(g, dict) for g in group_by):
            raise bad_json(f"'{where}groupings.group_by' must be a list of objects")
        for group in group_by:
            key = group.get("key")
            if key not in ("room_id", "sender"):
                raise MatrixError(400, "M_UNKNOWN", "Invalid group_by key: 'room_id' or 'sender'")
            group_keys.add(key)
    return RoomEventsQuery(
        search_term=term[:MAX_TERM_LENGTH],
        keys=tuple(dict.fromkeys(keys_value)),
        efilter=efilter,
        limit=min(efilter.limit or DEFAULT_LIMIT, MAX_LIMIT),
        by_rank=order_by == "rank",
        context=context,
        include_state=body_flag(category, "include_state", where=where),
        group_by_room="room_id" in group_keys,
        group_by_sender="sender" in group_keys,
    )


class SearchRoutes:
    def __init__(self, search: SearchService) -> None:
        self.service = search

    # POST /_matrix/client/v3/search
    # (spec: client-server-api/#post_matrixclientv3search)
    async def search(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        categories = _object(body, "search_categories", "")
        if categories is None:
            raise missing_param("Missing 'search_categories'")
        room_events = _object(categories, "room_events", "search_categories.")
        if room_events is None:
            raise MatrixError(400, "M_UNKNOWN", "Invalid search query: no supported category")
        query = parse_room_events(room_events)
        token = request.query.get("next_batch")
        result = await self.service.room_events(
            requester.user_id, requester.device_id, query, token
        )
        return json_response({"search_categories": {"room_events": result}})
