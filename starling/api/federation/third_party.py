"""PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}: the invitee's server
asks this one, the inviter's, to send the invite a signed third-party invite stands for.
What is checked before anything is sent: starling.federation.third_party_invites."""

from __future__ import annotations

from aiohttp import web

from starling.api.federation.auth import federation_body
from starling.api.http import json_response
from starling.api.routing import Auth, Route, put
from starling.api.routing import origin as calling_server
from starling.federation.third_party_invites import ThirdPartyInviteExchange


class FederationThirdPartyApi:
    def __init__(self, exchange: ThirdPartyInviteExchange) -> None:
        self._exchange = exchange

    async def exchange_third_party_invite(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}
        (spec: server-server-api/#put_matrixfederationv1exchange_third_party_inviteroomid)."""
        await self._exchange.on_exchange(
            calling_server(request), request.match_info["roomId"], federation_body(request)
        )
        return json_response({})

    def routes(self) -> list[Route]:
        return [
            put(
                "/exchange_third_party_invite/{roomId}",
                self.exchange_third_party_invite,
                Auth.FEDERATION,
            )
        ]
