"""Third-party IDs on identity servers: binds, unbinds and third-party invites.

Spec: client-server-api "Adding Account Administrative Contact Information"
(/account/3pid/bind, /unbind, /delete; deactivation unbinds) and "Third-party invites"
(POST /rooms/{roomId}/invite with an `id_server`, createRoom's `invite_3pid`).

- A bind goes to the identity server with the user's identity-server access token; a
  successful one is recorded (starling.storage.threepids) so that unbinds, deletes and
  deactivation can undo it later, on the servers it was made on when the client does not
  name one (Synapse's behaviour; "no-support" when there is none).
- This server keeps no third-party IDs of its own (no e-mail or phone validation), so
  /account/3pid lists none and /account/3pid/delete only unbinds.
- A 3PID invite first looks the address up on the identity server: a bound address is
  an ordinary invite of that Matrix ID; otherwise the identity server stores the invite
  and the room gets an m.room.third_party_invite state event (keyed by the identity
  server's token, holding its public keys) that a later join or invite must prove with
  the identity server's signature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starling.errors import MatrixError, bad_json, invalid_param
from starling.identity.client import IdentityServerClient, IdentityServerError, check_id_server
from starling.protocol.event import Event, StateKey
from starling.rooms.event_service import RoomEventService
from starling.rooms.third_party_invites import third_party_invite_content
from starling.storage.threepids import ThreepidBindingStore

logger = logging.getLogger(__name__)

MAX_FIELD_BYTES = 1024
MEDIA = ("email", "msisdn")

Invite = Callable[[str, str, str], Awaitable[Event]]
# (room_id, inviter, invitee, signed): exchange_third_party_invite through the room's server.
Exchange = Callable[[str, str, str, Any], Awaitable[None]]
# (event_id, origin): this server sends the event to the room's other servers although its
# sender is another server's user (the federation sender's record_relayed).
RecordRelayed = Callable[[str, str], Awaitable[None]]
MAX_ONBIND_INVITES = 100
ProfileLookup = Callable[[str], Awaitable[dict[str, Any]]]


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{key}'")
        return None
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_FIELD_BYTES:
        raise bad_json(f"'{key}' must be a non-empty string of at most {MAX_FIELD_BYTES} bytes")
    return value


def _unreachable(e: IdentityServerError) -> MatrixError:
    logger.info("identity server request failed: %s", e)
    return MatrixError(502, "M_UNKNOWN", "Could not reach the identity server")


class ThreepidService:
    def __init__(
        self,
        client: IdentityServerClient,
        bindings: ThreepidBindingStore,
        room_events: RoomEventService,
        profile_lookup: ProfileLookup,
        server_name: str,
    ) -> None:
        self._server_name = server_name
        self._exchange: Exchange | None = None
        self._record_relayed: RecordRelayed | None = None
        self.client = client
        self._bindings = bindings
        self._events = room_events
        self._profile = profile_lookup
        self._invite: Invite | None = None

    def _is_mine(self, user_id: str) -> bool:
        return user_id.startswith("@") and user_id.partition(":")[2] == self._server_name

    def use_invite(self, invite: Invite) -> None:
        """How an address the identity server knows is invited (set once, at start)."""
        self._invite = invite

    # --- binds -----------------------------------------------------------------------

    async def bind(self, user_id: str, body: dict[str, Any]) -> None:
        """POST /account/3pid/bind."""
        id_server = check_id_server(_str(body, "id_server"))
        token = _str(body, "id_access_token")
        sid = _str(body, "sid")
        secret = _str(body, "client_secret")
        assert token is not None and sid is not None and secret is not None
        try:
            answer = await self.client.bind(id_server, token, sid, secret, user_id)
        except IdentityServerError as e:
            raise _unreachable(e) from None
        medium, address = answer.get("medium"), answer.get("address")
        if answer.get("mxid") != user_id or not isinstance(medium, str):
            raise MatrixError(502, "M_UNKNOWN", "The identity server bound something else")
        if not isinstance(address, str):
            raise MatrixError(502, "M_UNKNOWN", "The identity server bound something else")
        await self._bindings.add(user_id, medium, address, id_server)

    async def unbind(self, user_id: str, medium: str, address: str, id_server: str | None) -> str:
        """Unbind one 3PID from the named identity server, or from every server it was
        bound to through us: "success", or "no-support" when no server could."""
        if id_server is not None:
            servers = [check_id_server(id_server)]
        else:
            servers = [
                b.id_server
                for b in await self._bindings.for_user(user_id)
                if (b.medium, b.address) == (medium, address)
            ]
        if not servers:
            return "no-support"
        result = "success"
        for server in servers:
            try:
                done = await self.client.unbind(server, user_id, medium, address)
            except IdentityServerError as e:
                raise _unreachable(e) from None
            if done:
                await self._bindings.remove(user_id, medium, address, server)
            else:
                result = "no-support"
        return result

    async def account_threepids(self, user_id: str) -> list[dict[str, Any]]:
        """GET /account/3pid: the account's own third-party IDs (set by an admin or
        taken from an external login; this server validates none itself)."""
        return await self._bindings.account_threepids(user_id)

    async def unbind_request(self, user_id: str, body: dict[str, Any]) -> str:
        """POST /account/3pid/unbind: undo the bind on the identity server only."""
        medium = _str(body, "medium")
        address = _str(body, "address")
        assert medium is not None and address is not None
        return await self.unbind(user_id, medium, address, _str(body, "id_server", required=False))

    async def delete_request(self, user_id: str, body: dict[str, Any]) -> str:
        """POST /account/3pid/delete: its binds made through this server are undone,
        then the 3PID leaves the account (Synapse's order: an identity server that
        cannot be reached fails the request and the account keeps the 3PID)."""
        medium = _str(body, "medium")
        address = _str(body, "address")
        assert medium is not None and address is not None
        result = await self.unbind(
            user_id, medium, address, _str(body, "id_server", required=False)
        )
        await self._bindings.remove_from_account(user_id, medium, address)
        return result

    async def unbind_all(self, user_id: str, id_server: str | None) -> str:
        """On deactivation: every 3PID bound through us; "no-support" if one could not
        be (an unreachable server does not stop the deactivation)."""
        result = "success"
        seen: set[tuple[str, str]] = set()
        for binding in await self._bindings.for_user(user_id):
            key = (binding.medium, binding.address)
            if key in seen:
                continue
            seen.add(key)
            try:
                if await self.unbind(user_id, *key, id_server) != "success":
                    result = "no-support"
            except MatrixError:
                result = "no-support"
        return result

    # --- third-party invites ---------------------------------------------------------

    def use_exchange(self, exchange: Exchange, record_relayed: RecordRelayed) -> None:
        """How a signed invite reaches a room this server is not in: the federation
        side's exchange_third_party_invite; and how an invite this server makes for
        another server's inviter reaches the room's other servers (set once, at start)."""
        self._exchange = exchange
        self._record_relayed = record_relayed

    def _joined_here(self, state: dict[StateKey, Event]) -> bool:
        """Is one of this server's users joined to the room (its current `state`)?"""
        return any(
            etype == "m.room.member" and self._is_mine(key) and event.membership == "join"
            for (etype, key), event in state.items()
        )

    async def on_bind(self, body: dict[str, Any]) -> None:
        """POST /_matrix/federation/v1/3pid/onbind: an identity server tells us that an
        address with pending invites is now bound to one of our users. Each invite is
        turned into an m.room.member invite from its inviter, after the checks of
        `third_party_invite_content` (signature by the room's invite keys, key still
        valid); one that fails them does not stop the others, and the first refusal is
        the answer (as Synapse refuses the call)."""
        mxid = body.get("mxid")
        invites = body.get("invites")
        if not isinstance(mxid, str) or not self._is_mine(mxid):
            raise invalid_param("'mxid' must be a user of this server")
        if not isinstance(invites, list):
            raise bad_json("'invites' must be a list")
        refused: MatrixError | None = None
        for invite in invites[:MAX_ONBIND_INVITES]:
            if not isinstance(invite, dict) or invite.get("mxid") != mxid:
                continue
            room_id, sender, signed = (
                invite.get("room_id"),
                invite.get("sender"),
                invite.get("signed"),
            )
            if not isinstance(room_id, str) or not isinstance(sender, str):
                continue
            try:
                await self.accept_signed_invite(room_id, sender, mxid, signed)
            except MatrixError as e:
                logger.info("3PID invite of %s to %s refused: %s", mxid, room_id, e)
                refused = refused or e
        if refused is not None:
            raise refused  # the identity server learns of it, as from Synapse

    async def accept_signed_invite(
        self, room_id: str, sender: str, target: str, signed: Any
    ) -> None:
        """Send the invite a signed third-party invite stands for. Spec (server-server
        API, Third-party invites): "If the invited homeserver is in the room the invite
        came from, it can auth the event and send it", whoever the inviter is; otherwise
        it asks the inviter's server (exchange_third_party_invite). An invite made here
        for another server's inviter carries only this server's signature, which the
        spec allows for third-party invites (the auth rules check `signed` against the
        room's m.room.third_party_invite keys instead), and this server sends it to the
        room's other servers, the inviter's included (as Synapse's send_on_behalf_of)."""
        state = await self._events.current_state_events(room_id)
        if not self._joined_here(state):
            if self._exchange is None:
                raise MatrixError(404, "M_NOT_FOUND", "The room is not on this server")
            await self._exchange(room_id, sender, target, signed)
            return
        content = await third_party_invite_content(
            state, sender, target, signed, self.client.key_is_valid
        )
        relay = None
        if not self._is_mine(sender):
            record = self._record_relayed
            if record is None:
                raise MatrixError(404, "M_NOT_FOUND", "Cannot send invites for other servers")

            async def relay(event: Event) -> None:
                await record(event.event_id, self._server_name)

        await self._events.send(
            room_id, sender, "m.room.member", content, target, before_persist=relay
        )

    async def invite(
        self, room_id: str, sender: str, body: dict[str, Any], *, shadow_banned: bool = False
    ) -> None:
        """A 3PID invite (`id_server`, `id_access_token`, `medium`, `address`). A
        shadow-banned sender's is not even looked at: it reaches nobody, and they are told
        it worked (Synapse)."""
        if shadow_banned:
            return
        id_server = check_id_server(_str(body, "id_server"))
        token = _str(body, "id_access_token", required=False)
        medium = _str(body, "medium")
        address = _str(body, "address")
        assert medium is not None and address is not None
        if medium not in MEDIA:
            raise invalid_param(f"Unknown medium {medium!r}")
        # The sender must be able to invite before anything is asked of the identity
        # server: the m.room.third_party_invite event's auth rule checks it again.
        state = await self._events.current_state_events(room_id)
        member = state.get(("m.room.member", sender))
        if member is None or member.membership != "join":
            raise MatrixError(403, "M_FORBIDDEN", "You are not in this room")
        try:
            mxid = await self.client.lookup(id_server, token, medium, address)
        except IdentityServerError as e:
            raise _unreachable(e) from None
        if mxid is not None:
            assert self._invite is not None
            await self._invite(room_id, sender, mxid)
            return
        stored = await self._store_invite(room_id, sender, id_server, token, medium, address, state)
        await self._events.send(
            room_id, sender, "m.room.third_party_invite", stored["content"], stored["token"]
        )

    async def _store_invite(
        self,
        room_id: str,
        sender: str,
        id_server: str,
        token: str | None,
        medium: str,
        address: str,
        state: dict[Any, Event],
    ) -> dict[str, Any]:
        def content_of(etype: str, key: str) -> Any:
            ev = state.get((etype, ""))
            return ev.content.get(key) if ev is not None else None

        profile = await self._profile(sender)
        request: dict[str, Any] = {
            "medium": medium,
            "address": address,
            "room_id": room_id,
            "sender": sender,
        }
        for field, value in (
            ("room_alias", content_of("m.room.canonical_alias", "alias")),
            ("room_avatar_url", content_of("m.room.avatar", "url")),
            ("room_join_rules", content_of("m.room.join_rules", "join_rule")),
            ("room_name", content_of("m.room.name", "name")),
            ("room_type", content_of("m.room.create", "type")),
            ("sender_display_name", profile.get("displayname")),
            ("sender_avatar_url", profile.get("avatar_url")),
        ):
            if isinstance(value, str):
                request[field] = value
        try:
            answer = await self.client.store_invite(id_server, token, request)
        except IdentityServerError as e:
            raise _unreachable(e) from None
        invite_token = answer.get("token")
        public_keys = answer.get("public_keys")
        if not isinstance(invite_token, str) or not 0 < len(invite_token) <= 255:
            raise MatrixError(502, "M_UNKNOWN", "The identity server gave no invite token")
        keys = [
            {"public_key": k["public_key"], "key_validity_url": k["key_validity_url"]}
            for k in (public_keys if isinstance(public_keys, list) else [])
            if isinstance(k, dict)
            and isinstance(k.get("public_key"), str)
            and isinstance(k.get("key_validity_url"), str)
        ]
        if not keys:
            raise MatrixError(502, "M_UNKNOWN", "The identity server gave no public keys")
        display_name = answer.get("display_name")
        content = {
            "display_name": display_name if isinstance(display_name, str) else "",
            "public_keys": keys,
            # The first key again at the top level, for older clients (as Synapse).
            "public_key": keys[0]["public_key"],
            "key_validity_url": keys[0]["key_validity_url"],
        }
        return {"token": invite_token, "content": content}
