"""What every admin handler shares: requiring a server admin."""

from __future__ import annotations

from aiohttp import web

from starling.accounts.auth import RequestAuthenticator, Requester
from starling.api.client.common import require_user
from starling.errors import forbidden

ADMIN_V1 = "/_synapse/admin/v1"


async def require_admin(request: web.Request, auth: RequestAuthenticator) -> Requester:
    """The requester if a server admin; 403 M_FORBIDDEN otherwise (as Synapse)."""
    requester = await require_user(request, auth)
    if not requester.is_admin:
        raise forbidden("You are not a server admin")
    return requester
