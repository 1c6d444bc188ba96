"""VoIP and third-party-network discovery.

Spec: client-server-api modules/voip_events.md (GET /voip/turnServer) and
modules/third_party_networks.md.

TURN credentials follow the TURN REST API convention that coturn's `use-auth-secret`
implements (and Synapse uses): username `<expiry seconds>:<user ID>`, password the base64
HMAC-SHA1 of the username keyed with `turn_shared_secret`; or fixed `turn_username` and
`turn_password`. With no TURN server configured the answer is `{}`, as Synapse's.

Third-party networks come from application services: see `api/client/appservice.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from aiohttp import web

from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.config import Config, parse_duration
from starling.errors import MatrixError


def turn_credentials(secret: str, user_id: str, lifetime_ms: int, now_ms: int) -> tuple[str, str]:
    """(username, password) valid until now + lifetime, for a TURN server sharing `secret`."""
    expiry_s = (now_ms + lifetime_ms) // 1000
    username = f"{expiry_s}:{user_id}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


class VoipRoutes:
    def __init__(self, config: Config) -> None:
        self.config = config

    # GET /_matrix/client/v3/voip/turnServer
    # (spec: client-server-api/#get_matrixclientv3voipturnserver)
    async def turn_server(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        config = self.config
        if not config.turn_uris:
            return json_response({})
        if requester.is_guest and not config.turn_allow_guests:
            raise MatrixError(403, "M_FORBIDDEN", "Guests may not use the TURN server")
        lifetime_ms = parse_duration(config.turn_user_lifetime)
        if config.turn_shared_secret:
            username, password = turn_credentials(
                config.turn_shared_secret,
                requester.user_id,
                lifetime_ms,
                int(time.time() * 1000),
            )
        elif config.turn_username and config.turn_password:
            username, password = config.turn_username, config.turn_password
        else:
            return json_response({})
        return json_response(
            {
                "username": username,
                "password": password,
                "uris": list(config.turn_uris),
                "ttl": lifetime_ms // 1000,
            }
        )
