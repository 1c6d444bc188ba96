"""The joining side of the membership handshakes: this server's users joining, knocking
on, rejecting invites to or retracting knocks from rooms this server is not in, inviting
users of other servers, and the directory and profile queries those flows start from.

Spec: server-server API "Joining Rooms" (make_join, then send_join v2 to the same
resident), "Knocking upon a room", "Leaving Rooms (Rejecting Invites)", "Inviting to a
room" (invite v2, which carries the room version).

A template from a resident server is checked before it is signed (the spec: `type`,
`room_id`, `sender`, `state_key` and `content.membership` must be what we asked for); a
countersigned invite must be the same event with the invitee's server's signature.
Candidates are tried in order: a server that cannot be reached, does not know the room or
cannot grant the join is skipped; a refusal (403, or 400 the client should see) is final.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from urllib.parse import quote

from starling.errors import MatrixError, forbidden
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.membership import (
    STRIPPED_STATE_TYPES,
    parse_pdu,
    pdu_for_federation,
    stripped_state,
)
from starling.federation.sender.hosts import server_of
from starling.protocol.event import Event, StateKey
from starling.protocol.restricted_joins import AUTHORISER_KEY
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from starling.rooms.builder import EventBuilder
from starling.storage.memberships import Membership

logger = logging.getLogger(__name__)

SUPPORTED_ROOM_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)
HANDSHAKE_TIMEOUT = 60.0
# The invite exchange runs under the room's write lock (the invite is persisted only once
# the invitee's server signed it): a dead server must not hold the room for long.
INVITE_TIMEOUT = 20.0
# Errors meaning "try another resident".
_TRY_NEXT_ERRCODES = {"M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN", "M_NOT_FOUND"}


def _path(template: str, *args: str) -> str:
    return template.format(*(quote(a, safe="") for a in args))


class HandshakeClient(Protocol):
    async def get_json(
        self, destination: str, path: str, query: Any = None, *, timeout: float = 60.0
    ) -> Any: ...

    async def put_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any: ...


class JoinResponseProcessor(Protocol):
    async def process_send_join_response(
        self,
        origin: str,
        room_id: str,
        room_version: RoomVersion,
        join_event: Event,
        state: list[dict[str, Any]],
        auth_chain: list[dict[str, Any]],
    ) -> int: ...


class EventVerifier(Protocol):
    async def verify_event_signatures(self, event: Event) -> None: ...


class RemoteMembershipStore(Protocol):
    async def store(self, event: Event) -> int: ...


class MembershipReader(Protocol):
    async def get_membership(self, room_id: str, user_id: str) -> Membership | None: ...


class EventReader(Protocol):
    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]: ...


class CurrentState(Protocol):
    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...


class OutOfBandPersister(Protocol):
    async def persist_out_of_band_membership(self, event: Event) -> int: ...


class RoomLocker(Protocol):
    def lock(self, room_id: str) -> AbstractAsyncContextManager[Any]: ...


class OutOfBandMemberships:
    """Members of rooms this server is not in (an invite from another server, a knock
    through one, the leave that rejects or retracts them), stored by the persister under
    the room's lock so the user's /sync shows them."""

    def __init__(self, persister: OutOfBandPersister, locks: RoomLocker) -> None:
        self._persister = persister
        self._locks = locks

    async def store(self, event: Event) -> int:
        async with self._locks.lock(event.room_id):
            return await self._persister.persist_out_of_band_membership(event)


def room_id_server(room_id: str) -> str | None:
    """The server named in a room ID (room versions 1-11); None for v12 room IDs."""
    _, sep, server = room_id.partition(":")
    return server if sep and server else None


class RemoteMembership:
    def __init__(
        self,
        *,
        server_name: str,
        builder: EventBuilder,
        client: HandshakeClient,
        joins: JoinResponseProcessor,
        verifier: EventVerifier,
        store: RemoteMembershipStore,
        memberships: MembershipReader,
        events: EventReader,
        state: CurrentState,
    ) -> None:
        self._server_name = server_name
        self._builder = builder
        self._client = client
        self._joins = joins
        self._verifier = verifier
        self._store = store
        self._memberships = memberships
        self._events = events
        self._state = state

    # --- what the client API calls ----------------------------------------------------------

    async def join_room(
        self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
    ) -> Event:
        """Join a room this server is not in: through the given servers, then whoever
        invited the user, then the server named in the room ID."""
        return await self.join(
            room_id, user_id, await self._candidates(room_id, user_id, via), content
        )

    async def knock_room(
        self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
    ) -> Event:
        return await self.knock(
            room_id, user_id, await self._candidates(room_id, user_id, via), content
        )

    async def leave_room(self, room_id: str, user_id: str, content: dict[str, Any]) -> Event:
        """Reject an invite to (or retract a knock on) a room this server is not in. When
        no server of the room will take the leave (unreachable, refusing, erroring), it is
        made here alone, so the user is not left holding an invite they cannot refuse."""
        try:
            return await self.leave(
                room_id, user_id, await self._candidates(room_id, user_id, ()), content
            )
        except MatrixError as e:
            local = await self._local_leave(room_id, user_id, content)
            if local is None:
                raise
            logger.info("%s left %s here only (the room's servers: %s)", user_id, room_id, e)
            return local

    async def _local_leave(
        self, room_id: str, user_id: str, content: dict[str, Any]
    ) -> Event | None:
        """A leave built and signed here, following the user's invite or knock (its only
        prev and auth event), stored out of band like the invite: no other server has it
        or needs it. None when the user holds no invite or knock."""
        current = await self._memberships.get_membership(room_id, user_id)
        if current is None or current.membership not in ("invite", "knock"):
            return None
        found = await self._events.get_events([current.event_id], allow_rejected=True)
        held = found.get(current.event_id)
        if held is None:
            return None
        rv = held.room_version
        template = self._builder.template(
            room_version=rv,
            room_id=room_id,
            event_type="m.room.member",
            sender=user_id,
            content={**content, "membership": "leave"},
            state_key=user_id,
            prev_events=[held],
            auth_events=[held],
        )
        event = self._builder.adopt_template(template, rv)
        await self._store.store(event)
        return event

    async def countersigned_invite(self, event: Event) -> Event:
        """Our invite of another server's user, signed by that server (invite v2), with
        the room's stripped state for the invitee."""
        return await self.invite(event, await self._invite_room_state(event))

    async def _candidates(self, room_id: str, user_id: str, via: Sequence[str]) -> list[str]:
        servers = list(via)
        current = await self._memberships.get_membership(room_id, user_id)
        if current is not None:
            found = await self._events.get_events([current.event_id], allow_rejected=True)
            event = found.get(current.event_id)
            if event is not None:
                servers.append(server_of(event.sender))
                carried = event.unsigned.get("knock_room_state")
                if isinstance(carried, list):
                    servers.extend(
                        server_of(e["sender"])
                        for e in carried
                        if isinstance(e, dict) and isinstance(e.get("sender"), str)
                    )
        named = room_id_server(room_id)
        if named is not None:
            servers.append(named)
        return _unique(s for s in servers if s and s != self._server_name)

    async def _invite_room_state(self, event: Event) -> list[dict[str, Any]]:
        state_ids = await self._state.get_current_state_ids(event.room_id)
        keys: list[StateKey] = [(t, "") for t in STRIPPED_STATE_TYPES]
        keys.append(("m.room.member", event.sender))
        wanted = [state_ids[k] for k in keys if k in state_ids]
        found = await self._events.get_events(wanted)
        return [pdu_for_federation(found[e]) for e in wanted if e in found]

    # --- joins, knocks, leaves --------------------------------------------------------------

    async def join(
        self, room_id: str, user_id: str, candidates: Sequence[str], content: dict[str, Any]
    ) -> Event:
        """Join a room through the first candidate resident that lets us in."""

        async def attempt(server: str) -> Event:
            room_version, event = await self._make(server, "join", room_id, user_id, content)
            response = await self._put_v2_or_v1(
                server, "send_join", room_id, event.event_id, pdu_for_federation(event)
            )
            if not isinstance(response, dict):
                raise _BadResident("send_join answer is not an object")
            state, auth_chain = response.get("state"), response.get("auth_chain")
            if not isinstance(state, list) or not isinstance(auth_chain, list):
                raise _BadResident("send_join answer has no state or auth_chain")
            join_event = event
            signed = response.get("event")
            if isinstance(signed, dict) and event.content.get(AUTHORISER_KEY) is not None:
                # A restricted join comes back with the authorising server's signature.
                countersigned = parse_pdu(signed, room_version, event.event_id)
                if countersigned.content != event.content:
                    raise _BadResident("send_join changed the join event")
                join_event = countersigned
            await self._joins.process_send_join_response(
                server, room_id, room_version, join_event, state, auth_chain
            )
            return join_event

        return await self._try(candidates, attempt)

    async def knock(
        self, room_id: str, user_id: str, candidates: Sequence[str], content: dict[str, Any]
    ) -> Event:
        """Knock through the first candidate; the knock is remembered with the room's
        stripped state so the user sees it in /sync."""

        async def attempt(server: str) -> Event:
            room_version, event = await self._make(server, "knock", room_id, user_id, content)
            response = await self._client.put_json(
                server,
                _path("/_matrix/federation/v1/send_knock/{}/{}", room_id, event.event_id),
                pdu_for_federation(event),
                timeout=HANDSHAKE_TIMEOUT,
            )
            state = response.get("knock_room_state") if isinstance(response, dict) else None
            stored = dict(event.pdu)
            stored["unsigned"] = {"knock_room_state": stripped_state(state)}
            knock = Event(stored, event.event_id, room_version)
            await self._store.store(knock)
            return knock

        return await self._try(candidates, attempt)

    async def leave(
        self, room_id: str, user_id: str, candidates: Sequence[str], content: dict[str, Any]
    ) -> Event:
        """Reject an invite or retract a knock in a room this server is not in."""

        async def attempt(server: str) -> Event:
            _, event = await self._make(server, "leave", room_id, user_id, content)
            await self._put_v2_or_v1(
                server, "send_leave", room_id, event.event_id, pdu_for_federation(event)
            )
            await self._store.store(event)
            return event

        return await self._try(candidates, attempt)

    async def _put_v2_or_v1(
        self, server: str, endpoint: str, room_id: str, event_id: str, body: Any
    ) -> Any:
        """PUT /v2/{endpoint}; a server that does not serve v2 (older than Matrix 1.0's
        v2 endpoints) is asked the deprecated v1, whose answer is wrapped as
        `[200, answer]`."""
        path = "/_matrix/federation/{}/" + endpoint + "/{}/{}"
        try:
            return await self._client.put_json(
                server, _path(path, "v2", room_id, event_id), body, timeout=HANDSHAKE_TIMEOUT
            )
        except FederationError as e:
            if not e.unknown_endpoint:
                raise
        logger.info("%s does not serve v2 %s: trying v1", server, endpoint)
        answer = await self._client.put_json(
            server, _path(path, "v1", room_id, event_id), body, timeout=HANDSHAKE_TIMEOUT
        )
        return unwrap_v1(answer)

    async def _make(
        self,
        server: str,
        membership: str,
        room_id: str,
        user_id: str,
        content: dict[str, Any],
    ) -> tuple[RoomVersion, Event]:
        """make_{membership} at `server`, the template checked, our event signed."""
        query = {"ver": SUPPORTED_ROOM_VERSIONS} if membership != "leave" else None
        response = await self._client.get_json(
            server,
            _path("/_matrix/federation/v1/make_" + membership + "/{}/{}", room_id, user_id),
            query,
            timeout=HANDSHAKE_TIMEOUT,
        )
        if not isinstance(response, dict) or not isinstance(response.get("event"), dict):
            raise _BadResident(f"make_{membership} answer has no event")
        version_id = response.get("room_version", "1")
        if not isinstance(version_id, str) or version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"This server does not support room version {version_id!r}",
            )
        room_version = get_room_version(version_id)
        template: dict[str, Any] = dict(response["event"])
        template_content = template.get("content")
        if (
            template.get("type") != "m.room.member"
            or template.get("room_id") != room_id
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or not isinstance(template_content, dict)
            or template_content.get("membership") != membership
        ):
            raise _BadResident(f"make_{membership} template is not our {membership}")
        merged = {**content, "membership": membership}
        authoriser = template_content.get(AUTHORISER_KEY)
        if membership == "join" and isinstance(authoriser, str):
            merged[AUTHORISER_KEY] = authoriser
        else:
            merged.pop(AUTHORISER_KEY, None)
        template["content"] = merged
        return room_version, self._builder.adopt_template(template, room_version)

    async def _try(self, candidates: Sequence[str], attempt: Any) -> Event:
        servers = _unique(s for s in candidates if s and s != self._server_name)
        if not servers:
            raise MatrixError(404, "M_NOT_FOUND", "No server to reach the room through")
        last: str = "no server answered"
        for server in servers:
            try:
                event: Event = await attempt(server)
                return event
            except FederationUnreachable as e:
                last = f"{server} unreachable: {e.reason}"
            except FederationError as e:
                if e.status == 429 or e.status >= 500 or e.errcode in _TRY_NEXT_ERRCODES:
                    last = f"{server}: {e}"
                elif e.status == 403:
                    raise forbidden(e.message or f"{server} refused") from None
                else:
                    raise MatrixError(
                        400 if e.status < 500 else 502,
                        e.errcode or "M_UNKNOWN",
                        e.message or str(e),
                        **passed_through_fields(e),
                    ) from None
            except _BadResident as e:
                last = f"{server}: {e}"
            logger.info("membership handshake: %s", last)
        raise MatrixError(502, "M_UNKNOWN", f"Could not reach the room: {last}")

    # --- invites ----------------------------------------------------------------------------

    async def invite(self, event: Event, invite_room_state: list[dict[str, Any]]) -> Event:
        """Have the invitee's server countersign our invite (invite v2); returns the event
        with both signatures, ready to persist."""
        target = server_of(event.state_key or "")
        try:
            response = await self._send_invite(target, event, invite_room_state)
        except FederationUnreachable as e:
            raise MatrixError(502, "M_UNKNOWN", f"Cannot reach {target}: {e.reason}") from None
        except FederationError as e:
            if e.status == 403:
                raise forbidden(e.message or f"{target} refused the invite") from None
            raise MatrixError(
                400 if e.status < 500 else 502,
                e.errcode or "M_UNKNOWN",
                e.message or str(e),
                **passed_through_fields(e),
            ) from None
        signed_json = response.get("event") if isinstance(response, dict) else None
        try:
            signed = parse_pdu(signed_json, event.room_version, event.event_id)
        except MatrixError as e:
            if e.errcode == "M_BAD_JSON":
                # Not a valid event of the room version (e.g. a float in room version
                # 6+). The client's /invite lists only 400s for requests that cannot be
                # done, a remote server's refusal included (M_UNSUPPORTED_ROOM_VERSION);
                # Synapse answers this one 400 M_BAD_JSON too.
                raise MatrixError(
                    400, "M_BAD_JSON", f"{target} returned an invalid invite: {e.error}"
                ) from None
            raise MatrixError(502, "M_UNKNOWN", f"{target} returned a bad invite") from None
        if signed.content != event.content or signed.sender != event.sender:
            raise MatrixError(502, "M_UNKNOWN", f"{target} changed the invite")
        try:
            await self._verifier.verify_event_signatures(signed)
        except Exception as e:
            raise MatrixError(502, "M_UNKNOWN", f"{target}'s signature: {e}") from None
        signatures = signed.pdu.get("signatures")
        if not isinstance(signatures, dict) or target not in signatures:
            raise MatrixError(502, "M_UNKNOWN", f"{target} did not sign the invite")
        return signed

    async def _send_invite(
        self, target: str, event: Event, invite_room_state: list[dict[str, Any]]
    ) -> Any:
        """invite v2; for rooms of versions 1 and 2 (the only ones v1 can carry) a server
        that does not serve v2 is asked v1, the stripped state in the event's unsigned."""
        path = "/_matrix/federation/{}/invite/{}/{}"
        pdu = pdu_for_federation(event)
        body = {
            "room_version": event.room_version.identifier,
            "event": pdu,
            "invite_room_state": invite_room_state,
        }
        try:
            return await self._client.put_json(
                target,
                _path(path, "v2", event.room_id, event.event_id),
                body,
                timeout=INVITE_TIMEOUT,
            )
        except FederationError as e:
            if not (e.unknown_endpoint and event.room_version.identifier in V1_INVITE_VERSIONS):
                raise
        logger.info("%s does not serve v2 invite: trying v1", target)
        v1_body = {**pdu, "unsigned": {"invite_room_state": invite_room_state}}
        answer = await self._client.put_json(
            target,
            _path(path, "v1", event.room_id, event.event_id),
            v1_body,
            timeout=INVITE_TIMEOUT,
        )
        return unwrap_v1(answer)


# The room versions a v1 invite may be for (spec: the receiver must assume 1 or 2).
V1_INVITE_VERSIONS = ("1", "2")


def unwrap_v1(answer: Any) -> Any:
    """The answer of a deprecated v1 endpoint (`[200, body]`, MSC1802) as v2 gives it;
    anything else is a malformed answer: None."""
    if isinstance(answer, list) and len(answer) == 2 and answer[0] == 200:
        return answer[1]
    return None


def passed_through_fields(error: FederationError) -> dict[str, Any]:
    """The fields of a remote's error our client should see besides errcode and error:
    only those the spec defines for that errcode, and only well-formed."""
    body = error.body or {}
    if error.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
        version = body.get("room_version")
        if isinstance(version, str) and 0 < len(version) <= 64:
            return {"room_version": version}
    return {}


class _BadResident(Exception):
    """A resident's answer we cannot use: try the next candidate."""


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
