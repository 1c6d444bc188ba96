"""Endpoints declared as data, and the one place that guards them.

Each API (client, media, admin, keys, federation) is a `RouteTable`: a URL prefix with a
`{version}` slot and a list of `Route`s. A route says its method, its path under the prefix,
the versions it is served under (an unstable alias such as
``unstable/org.matrix.msc2946`` is one more version), who may call it (`Auth`, and whether
guest accounts may), which per-requester rate limit it spends, and its handler. Reading a
table answers "what do we serve and how is it guarded".

`mount` adds a table to an aiohttp application. Before a handler runs, the route's guard:

1. authenticates as `auth` says (401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN; a guest on a route
   not open to guests 403 M_GUEST_ACCESS_FORBIDDEN; a non-admin on an admin route 403
   M_FORBIDDEN; a federation request through the origin authenticator);
2. checks the path parameters that name Matrix identifiers, one rule each for every
   table: ``roomId`` a room ID, ``userId`` a user ID, ``eventId`` an event ID
   (400 M_INVALID_PARAM), except those a route leaves to its handler (`late_parameters`:
   the federation membership PUTs check the body's event first, then that the path
   names it);
3. spends the route's rate limit, keyed by the requester (429 M_LIMIT_EXCEEDED).

Limits that need the request's content (login and registration per address, joins and
invites per room and target) are applied by the services that read it.

Handlers are ``async def handler(request) -> response``; they find who is asking with
`requester_of(request)` (or `optional_requester`, or `origin(request)` on federation routes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from aiohttp import web

from starling.accounts.auth import Requester
from starling.api.http import USER_ID_KEY, Handler
from starling.errors import MatrixError, forbidden, invalid_param, missing_token
from starling.protocol.identifiers import MAX_ID_BYTES, is_valid_room_id, is_valid_user_id
from starling.ratelimit import RateLimits

OriginCheck = Callable[[web.Request], Awaitable[str]]
SeenHook = Callable[[str, str | None, str | None, str | None], None]
"""Authenticates a federation request; returns its origin server."""

REQUESTER_KEY = web.RequestKey("requester", Requester)
ORIGIN_KEY = web.RequestKey("origin", str)


class TokenAuthenticator(Protocol):
    async def requester_for_token(
        self, token: str, user_id: str | None = None, device_id: str | None = None
    ) -> Requester:
        """`user_id`, `device_id`: the request's parameters (application services)."""
        ...


class Auth(Enum):
    """Who may call a route."""

    NONE = "none"
    """Anyone; no access token is read."""
    OPTIONAL = "optional"
    """Anyone; an access token, if given, must be valid and identifies the requester."""
    USER = "user"
    """A user's access token."""
    ADMIN = "admin"
    """A server admin's access token."""
    FEDERATION = "federation"
    """Another homeserver, by a signed (X-Matrix) request."""


class RateClass(Enum):
    """A rate limit the guard spends per requester, by its `rc_*` config name."""

    MESSAGE = "rc_message"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """Under the table's prefix, with aiohttp's ``{name}`` / ``{name:regex}`` parameters."""
    handler: Handler
    auth: Auth = Auth.USER
    guests: bool = False
    """Whether guest accounts may call it (spec: modules/guest_access.md)."""
    versions: tuple[str, ...] = ()
    """The versions (and unstable aliases) it is served under; empty: the table's."""
    rate_limit: RateClass | None = None
    late_parameters: tuple[str, ...] = ()
    """Path parameters the guard does not check: the handler checks them itself, after
    the body (an ID that must name the body's event)."""


@dataclass(frozen=True)
class _Method:
    """`get(path, handler, auth, ...)` and its siblings: a Route in one short line."""

    method: str

    def __call__(
        self,
        path: str,
        handler: Handler,
        auth: Auth = Auth.USER,
        *,
        guests: bool = False,
        versions: tuple[str, ...] = (),
        rate_limit: RateClass | None = None,
        late_parameters: tuple[str, ...] = (),
    ) -> Route:
        return Route(
            self.method, path, handler, auth, guests, versions, rate_limit, late_parameters
        )


get = _Method("GET")
post = _Method("POST")
put = _Method("PUT")
delete = _Method("DELETE")


@dataclass(frozen=True)
class RouteTable:
    """One API's endpoints: `prefix` holds ``{version}`` where each version goes."""

    name: str
    prefix: str
    versions: tuple[str, ...]
    routes: Sequence[Route]

    def paths(self, route: Route) -> list[str]:
        return [
            self.prefix.replace("{version}", version) + route.path
            for version in route.versions or self.versions
        ]

    def endpoints(self) -> list[tuple[str, str, Route]]:
        """(method, full path, route) for everything the table serves, in order."""
        return [(r.method, path, r) for r in self.routes for path in self.paths(r)]


@dataclass(frozen=True)
class Guards:
    """What the guard needs to check requests: the parts a table's routes use."""

    auth: TokenAuthenticator | None = None
    rate_limits: RateLimits | None = None
    authenticate_origin: OriginCheck | None = None
    # Told (user, device, address, user agent) of every authenticated request: where
    # devices were last seen (starling/accounts/client_ips.py).
    seen: SeenHook | None = None


# --- what handlers read --------------------------------------------------------------------


def requester_of(request: web.Request) -> Requester:
    """Who is asking, on a route whose guard authenticated a user."""
    return request[REQUESTER_KEY]


def optional_requester(request: web.Request) -> Requester | None:
    return request.get(REQUESTER_KEY)


def origin(request: web.Request) -> str:
    """The calling server, on a federation route."""
    return request[ORIGIN_KEY]


# --- path parameters -----------------------------------------------------------------------


def _room_id(value: str) -> None:
    if not is_valid_room_id(value):
        raise invalid_param(f"{value[:80]!r} is not a room ID")


def _user_id(value: str) -> None:
    if not is_valid_user_id(value):
        raise invalid_param(f"{value[:80]!r} is not a user ID")


def _event_id(value: str) -> None:
    # Only the shape every room version shares: event IDs of old rooms are opaque.
    if not value.startswith("$") or len(value.encode()) > MAX_ID_BYTES:
        raise invalid_param(f"{value[:80]!r} is not an event ID")


PATH_PARAMETERS: dict[str, Callable[[str], None]] = {
    "roomId": _room_id,
    "userId": _user_id,
    "eventId": _event_id,
}


def check_path_parameters(request: web.Request, skip: tuple[str, ...] = ()) -> None:
    for name, value in request.match_info.items():
        check = PATH_PARAMETERS.get(name)
        if check is not None and name not in skip:
            check(value)


# --- authentication --------------------------------------------------------------------------


def access_token_from(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer`, or the deprecated `access_token` query."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise MatrixError(401, "M_MISSING_TOKEN", "Invalid Authorization header")
    query_token = request.query.get("access_token")
    return query_token or None


async def _authenticate_user(
    request: web.Request, auth: TokenAuthenticator, guests: bool, seen: SeenHook | None = None
) -> Requester:
    token = access_token_from(request)
    if token is None:
        raise missing_token()
    query = request.query
    device_id = query.get("device_id") or query.get("org.matrix.msc3202.device_id")
    found = await auth.requester_for_token(token, query.get("user_id"), device_id)
    if found.is_guest and not guests:
        raise MatrixError(
            403, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts may not use this endpoint"
        )
    request[USER_ID_KEY] = found.user_id  # for the access log
    request[REQUESTER_KEY] = found
    if seen is not None:
        seen(found.user_id, found.device_id, request.remote, request.headers.get("User-Agent"))
    return found


async def _spend(rate_limits: RateLimits, rate_limit: RateClass, key: str) -> None:
    """Spend the limit; requesters exempt from limits (``rate_limited: false`` application
    services) never get here."""
    if rate_limit is RateClass.MESSAGE:
        await rate_limits.check_message(key)


def guarded(route: Route, guards: Guards) -> Handler:
    """The route's handler behind its guard."""
    handler = route.handler
    kind = route.auth
    if kind in (Auth.OPTIONAL, Auth.USER, Auth.ADMIN) and guards.auth is None:
        raise ValueError(f"{route.method} {route.path} needs an access-token authenticator")
    if kind is Auth.FEDERATION and guards.authenticate_origin is None:
        raise ValueError(f"{route.method} {route.path} needs an origin authenticator")
    if route.rate_limit is not None and (guards.rate_limits is None or kind is Auth.NONE):
        raise ValueError(f"{route.method} {route.path}: a rate limit needs a requester")
    auth = guards.auth
    authenticate_origin = guards.authenticate_origin
    rate_limits = guards.rate_limits
    guests = route.guests
    rate_limit = route.rate_limit
    seen = guards.seen
    late = route.late_parameters

    async def guard(request: web.Request) -> web.StreamResponse:
        key: str | None = None
        if kind is Auth.USER:
            assert auth is not None
            found = await _authenticate_user(request, auth, guests, seen)
            key = found.user_id if found.rate_limited else None
        elif kind is Auth.OPTIONAL:
            assert auth is not None
            if access_token_from(request) is not None:
                found = await _authenticate_user(request, auth, guests, seen)
                key = found.user_id if found.rate_limited else None
        elif kind is Auth.ADMIN:
            assert auth is not None
            admin = await _authenticate_user(request, auth, guests, seen)
            if not admin.is_admin:
                raise forbidden("You are not a server admin")
            key = admin.user_id
        elif kind is Auth.FEDERATION:
            assert authenticate_origin is not None
            key = request[ORIGIN_KEY] = await authenticate_origin(request)
        check_path_parameters(request, late)
        if rate_limit is not None and key is not None:
            assert rate_limits is not None
            await _spend(rate_limits, rate_limit, key)
        return await handler(request)

    return guard


def mount(app: web.Application, table: RouteTable, guards: Guards) -> None:
    """Serve every endpoint of `table` on `app`, each behind its guard."""
    for method, path, route in table.endpoints():
        app.router.add_route(method, path, guarded(route, guards))
