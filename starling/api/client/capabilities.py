"""Client-Server API: capabilities.

Spec: client-server-api "Capabilities negotiation" (#get_matrixclientv3capabilities).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS


def capabilities(default_room_version: str, threepid_changes: bool = False) -> dict[str, Any]:
    return {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": default_room_version,
            "available": dict.fromkeys(KNOWN_ROOM_VERSIONS, "stable"),
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        # email addresses can be added when the server sends mail (accounts/email.py)
        "m.3pid_changes": {"enabled": threepid_changes},
        "m.get_login_token": {"enabled": False},
        "m.profile_fields": {"enabled": True, "allowed": ["displayname", "avatar_url"]},
    }


class CapabilityRoutes:
    def __init__(self, default_room_version: str, threepid_changes: bool = False) -> None:
        self.body = {"capabilities": capabilities(default_room_version, threepid_changes)}

    # GET /_matrix/client/v3/capabilities
    # (spec: client-server-api/#get_matrixclientv3capabilities)
    async def get_capabilities(self, request: web.Request) -> web.Response:
        return json_response(self.body)
