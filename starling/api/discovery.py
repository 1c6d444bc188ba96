"""Discovery and liveness: /_matrix/client/versions, .well-known, /health, metrics.

Spec: client-server-api "Server Discovery" and "API Standards > Versions";
server-server-api "Resolving server names" (/.well-known/matrix/server).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response
from starling.config import Config
from starling.errors import MatrixError
from starling.metrics import enable as enable_metrics
from starling.metrics import exposition

# The spec versions whose core Client-Server API is served (docs/status.md lists the
# optional modules not implemented yet). v1.11 is what tells clients to use
# authenticated media; later versions are added as their requirements are met.
SUPPORTED_SPEC_VERSIONS: list[str] = [
    "r0.5.0",
    "r0.6.0",
    "r0.6.1",
    *(f"v1.{minor}" for minor in range(1, 12)),
]
UNSTABLE_FEATURES: dict[str, bool] = {
    # Simplified sliding sync (MSC4186), which Element X requires.
    "org.matrix.simplified_msc3575": True,
    # Room summaries (MSC3266, /v1/room_summary), as Synapse advertises them: clients
    # that see it use the stable path.
    "org.matrix.msc3266": True,
    # Dehydrated devices (MSC3814), as Synapse advertises them.
    "org.matrix.msc3814": True,
    # Delayed events (MSC4140, Element Call), as Synapse advertises them.
    "org.matrix.msc4140": True,
    # Starling's WebSocket transport (docs/transports.md).
    "org.starling.ws": True,
}


class DiscoveryResource:
    def __init__(self, config: Config, extra_versions: dict[str, Any] | None = None) -> None:
        self._config = config
        # Top-level /versions keys of optional transports (MSC3079's low-bandwidth entry).
        self._extra_versions = extra_versions or {}

    def register(self, app: web.Application, *, client: bool, federation: bool) -> None:
        app.router.add_get("/health", self.health)
        if client:
            app.router.add_get("/_matrix/client/versions", self.versions)
            app.router.add_get("/.well-known/matrix/client", self.well_known_client)
        if federation or self._config.serve_server_wellknown:
            app.router.add_get("/.well-known/matrix/server", self.well_known_server)

    async def health(self, request: web.Request) -> web.Response:
        """GET /health — liveness, as Synapse answers it."""
        return web.Response(text="OK", content_type="text/plain")

    async def versions(self, request: web.Request) -> web.Response:
        """GET /_matrix/client/versions (spec: client-server-api/#get_matrixclientversions)."""
        return json_response(
            {
                "versions": SUPPORTED_SPEC_VERSIONS,
                "unstable_features": UNSTABLE_FEATURES,
                **self._extra_versions,
            }
        )

    async def well_known_client(self, request: web.Request) -> web.Response:
        """GET /.well-known/matrix/client (spec: client-server-api/#getwell-knownmatrixclient)."""
        if not self._config.serve_client_wellknown:
            raise MatrixError(404, "M_NOT_FOUND", ".well-known/matrix/client is not served here")
        body = dict(self._config.extra_well_known_client_content)
        body["m.homeserver"] = {"base_url": self._config.client_base_url}
        return json_response(body)

    async def well_known_server(self, request: web.Request) -> web.Response:
        """GET /.well-known/matrix/server (spec: server-server-api/#getwell-knownmatrixserver)."""
        if not self._config.serve_server_wellknown:
            raise MatrixError(404, "M_NOT_FOUND", ".well-known/matrix/server is not served here")
        # Whoever fetched https://<server_name>/.well-known reached us on port 443, so
        # that is where federation goes (Synapse's rule); a server name with a port keeps
        # it. The listener's own port is not used: a proxy may sit in between.
        host = self._config.server_name
        if ":" not in host.rsplit("]", 1)[-1]:
            host = f"{host}:443"
        return json_response({"m.server": host})


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics and /_synapse/metrics — Prometheus text format."""
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def register_metrics(app: web.Application) -> None:
    """Serve /metrics; metrics count from now on (`starling.metrics`)."""
    enable_metrics()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/_synapse/metrics", metrics_handler)
