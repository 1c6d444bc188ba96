"""Third-party invites across servers (spec: server-server-api "Third-party invites",
PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}).

When an identity server tells the invitee's server that an invited address is bound
(/3pid/onbind, starling.identity), and the room is not on that server, it asks the
inviter's server to send the invite: `exchange` here. The inviter's server takes such a
request (`on_exchange`) only for its own inviter, for a user of the asking server, in a
room it is in, and only after `starling.rooms.third_party_invites.third_party_invite_content`
— the one check the client side uses too — found the room's m.room.third_party_invite
for the token, sent by that inviter, whose keys signed `signed`, with the identity
server still vouching for the key. The invite is then an ordinary invite of a remote
user (countersigned by the invitee's server), and the auth rules check it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from starling.errors import MatrixError, bad_json, forbidden
from starling.federation.errors import FederationError, FederationUnreachable
from starling.protocol.event import Event, StateKey
from starling.protocol.identifiers import is_valid_user_id
from starling.protocol.power_levels import server_of
from starling.rooms.third_party_invites import third_party_invite_content

EXCHANGE_TIMEOUT = 30.0
KeyValidity = Callable[[str, str], Awaitable[bool]]


class ExchangeClient(Protocol):
    async def put_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any: ...


class RoomState(Protocol):
    async def current_state_events(
        self, room_id: str, keys: Sequence[StateKey] | None = None
    ) -> Mapping[StateKey, Event]: ...


# (room_id, inviter, invitee, content) -> the invite, sent as any invite of a remote user
# (the invitee's server countersigns it first).
SendInvite = Callable[[str, str, str, dict[str, Any]], Awaitable[Event]]


class ThirdPartyInviteExchange:
    def __init__(
        self,
        server_name: str,
        client: ExchangeClient,
        rooms: RoomState,
        send_invite: SendInvite,
        key_is_valid: KeyValidity,
    ) -> None:
        self._server_name = server_name
        self._client = client
        self._rooms = rooms
        self._send_invite = send_invite
        self._key_is_valid = key_is_valid

    async def exchange(self, room_id: str, sender: str, target: str, signed: Any) -> None:
        """Ask the inviter's server to send the invite a signed third-party invite stands
        for (the invitee, `target`, is ours; the room is not here)."""
        if not is_valid_user_id(sender) or server_of(sender) == self._server_name:
            raise MatrixError(404, "M_NOT_FOUND", "No server to send the invite")
        body = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender,
            "state_key": target,
            "content": {
                "membership": "invite",
                # The room's server takes the display name from its own
                # m.room.third_party_invite; the spec still wants one here.
                "third_party_invite": {"display_name": target, "signed": signed},
            },
        }
        destination = server_of(sender)
        path = f"/_matrix/federation/v1/exchange_third_party_invite/{quote(room_id, safe='')}"
        try:
            await self._client.put_json(destination, path, body, timeout=EXCHANGE_TIMEOUT)
        except FederationUnreachable as e:
            raise MatrixError(502, "M_UNKNOWN", f"Cannot reach {destination}: {e.reason}") from None
        except FederationError as e:
            status = e.status if 400 <= e.status < 500 else 502
            raise MatrixError(status, e.errcode or "M_UNKNOWN", e.message or str(e)) from None

    async def on_exchange(self, origin: str, room_id: str, body: Any) -> None:
        """PUT /exchange_third_party_invite/{roomId} from `origin`, the invitee's server."""
        if not isinstance(body, dict):
            raise bad_json("The body must be a partial m.room.member event")
        sender, target = body.get("sender"), body.get("state_key")
        content = body.get("content")
        if body.get("type") != "m.room.member" or body.get("room_id") != room_id:
            raise bad_json("The event must be an m.room.member event of this room")
        if not isinstance(content, dict) or content.get("membership") != "invite":
            raise bad_json("The event must be an invite")
        third_party = content.get("third_party_invite")
        if not isinstance(third_party, dict) or not isinstance(third_party.get("signed"), dict):
            raise bad_json("The invite carries no signed third_party_invite")
        if not isinstance(target, str) or not is_valid_user_id(target):
            raise bad_json("state_key must be a user ID")
        if server_of(target) != origin:
            raise forbidden(f"{target} is not a user of {origin}")
        if not isinstance(sender, str) or server_of(sender) != self._server_name:
            raise forbidden("The inviter is not a user of this server")
        state = await self._rooms.current_state_events(room_id)
        member = state.get(("m.room.member", sender))
        if member is None or member.membership != "join":
            raise forbidden(f"{sender} is not in room {room_id}")
        invite = await third_party_invite_content(
            state, sender, target, third_party["signed"], self._key_is_valid
        )
        await self._send_invite(room_id, sender, target, invite)
