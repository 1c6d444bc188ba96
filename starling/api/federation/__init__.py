"""The Server-Server API's HTTP edge: one module per area, each listing its routes.

`register(app, transport, ..., federation=..., keys=...)` adds the routes of a listener's
`federation` and `keys` resources. Federation endpoints authenticate with
`auth.authenticate_origin(request)`; the key endpoints need no authentication.
Areas add their route lists to `federation_routes` below.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.federation import version
from starling.api.federation.auth import (
    FEDERATION_AUTH,
    OriginAuthenticator,
    release_slot_middleware,
)
from starling.api.federation.keys import KeysApi
from starling.api.federation.public_rooms import PublicRoomsApi
from starling.api.federation.routes import Route
from starling.api.services import Services


def federation_routes(services: Services) -> list[Route]:
    """Every /_matrix/federation route."""
    return [*version.routes(), *PublicRoomsApi(services.directory).routes()]


def key_routes(services: Services) -> list[Route]:
    """Every /_matrix/key route."""
    return KeysApi(services.federation.key_server).routes()


def register(
    app: web.Application,
    authenticator: OriginAuthenticator,
    routes: list[Route],
) -> None:
    """Add `routes` and what authenticated federation requests need to `app`."""
    app[FEDERATION_AUTH] = authenticator
    app.middlewares.append(release_slot_middleware)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
