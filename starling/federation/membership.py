"""The resident side of the membership handshakes (spec: server-server API, "Joining
Rooms", "Restricted rooms", "Knocking upon a room", "Inviting to a room", "Leaving Rooms"):
`make_join`/`send_join`, `make_leave`/`send_leave`, `make_knock`/`send_knock`, and
receiving an invite for one of this server's users.

A server signs only what it should:
* templates are made only for a user of the asking server, in a room this server is in,
  for a membership the auth rules would allow now;
* `send_*` accepts only that membership event, for a user of the origin, with the event ID
  it claims; a `join_authorised_via_users_server` naming one of this server's users is
  countersigned only when that user can invite and the joining user meets one of the
  room's allow conditions — the check is made again, never taken from the template;
* the event then goes through the same receipt checks as any PDU (signatures, auth
  events, state, soft-fail) and the persister, and this server relays it to the room's
  other servers on the origin's behalf;
* an invite is countersigned only for an existing local user, when the inviter is a user
  of the origin and the origin's signature verifies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from starling.errors import MatrixError, bad_json, forbidden
from starling.federation.sender.hosts import server_of
from starling.protocol.auth_rules import check_auth_rules
from starling.protocol.event import Event, StateKey
from starling.protocol.event_format import EventFormatError, validate_pdu
from starling.protocol.hashing import compute_event_id
from starling.protocol.identifiers import MAX_ID_BYTES, is_valid_user_id
from starling.protocol.power_levels import PowerLevels
from starling.protocol.restricted_joins import (
    AUTHORISER_KEY,
    allowed_room_ids,
    choose_authoriser,
    is_restricted,
)
from starling.protocol.room_versions import EventFormat, RoomVersion
from starling.rooms.builder import EventBuilder, auth_keys_for, listed_auth_events
from starling.storage.events import StoredEvent
from starling.storage.memberships import Membership

logger = logging.getLogger(__name__)

# The spec allows at most 20 prev_events.
MAX_PREV_EVENTS = 20
# State shown to knockers and invitees (the spec's recommended stripped state), plus the
# room's m.room.guest_access: an invited guest's server can only tell from it whether the
# room admits guests (spec: Guest access) before joining through us.
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.guest_access",
)


class ResidentEvents(Protocol):
    async def get_room_version(self, room_id: str) -> RoomVersion | None: ...

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]: ...

    async def get_events_with_meta(self, event_ids: Iterable[str]) -> Mapping[str, StoredEvent]: ...

    async def get_forward_extremities(self, room_id: str) -> list[str]: ...

    async def get_state_ids_before(self, event_id: str) -> Mapping[StateKey, str] | None: ...

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]: ...


class ResidentState(Protocol):
    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...


class ResidentMembers(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...

    async def get_rooms_for_user(self, user_id: str) -> dict[str, Membership]: ...


class PduReceiver(Protocol):
    async def on_send_pdu(self, origin: str, pdu_json: dict[str, Any]) -> str | None: ...


class EventVerifier(Protocol):
    async def verify_event_signatures(self, event: Event) -> None: ...


class InviteStore(Protocol):
    async def store(self, event: Event) -> int: ...


ServerAllowed = Callable[[str, str], Awaitable[bool]]
UserExists = Callable[[str], Awaitable[bool]]
RecordRelayed = Callable[[str, str], Awaitable[None]]


def _incompatible(room_version: RoomVersion) -> MatrixError:
    return MatrixError(
        400,
        "M_INCOMPATIBLE_ROOM_VERSION",
        f"Your server does not support room version {room_version.identifier}",
        room_version=room_version.identifier,
    )


def pdu_for_federation(event: Event) -> dict[str, Any]:
    return {k: v for k, v in event.pdu.items() if k != "unsigned"}


def parse_pdu(pdu: Any, room_version: RoomVersion, event_id: str | None) -> Event:
    """An event from a request body, checked for format and (if given) its claimed ID."""
    if not isinstance(pdu, dict):
        raise bad_json("The event must be a JSON object")
    # Unsigned (or unhashed) is a failed signature check, refused as such (403) rather
    # than as a malformed event.
    signatures, hashes = pdu.get("signatures"), pdu.get("hashes")
    if not isinstance(signatures, dict) or not signatures:
        raise forbidden("The event is not signed")
    if not isinstance(hashes, dict) or not hashes:
        raise forbidden("The event has no content hash")
    try:
        validate_pdu(pdu, room_version)
    except EventFormatError as e:
        raise bad_json(f"Invalid event: {e}") from None
    if room_version.event_format is EventFormat.V1:
        actual = pdu.get("event_id")
        if not isinstance(actual, str):
            raise bad_json("The event has no event_id")
    else:
        actual = compute_event_id(pdu, room_version)
    if event_id is not None and actual != event_id:
        # The path's event ID is checked here, after the body (api/federation/membership).
        if not event_id.startswith("$") or len(event_id.encode()) > MAX_ID_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", f"{event_id[:80]!r} is not an event ID")
        raise bad_json(f"The event's ID is {actual}, not {event_id}")
    return Event(pdu, actual, room_version)


class ResidentMembership:
    def __init__(
        self,
        *,
        server_name: str,
        builder: EventBuilder,
        events: ResidentEvents,
        state: ResidentState,
        members: ResidentMembers,
        receiver: PduReceiver,
        server_allowed: ServerAllowed,
        record_relayed: RecordRelayed,
        verifier: EventVerifier,
        invites: InviteStore,
        user_exists: UserExists,
    ) -> None:
        self._server_name = server_name
        self._builder = builder
        self._events = events
        self._state = state
        self._members = members
        self._receiver = receiver
        self._server_allowed = server_allowed
        self._record_relayed = record_relayed
        self._verifier = verifier
        self._invites = invites
        self._user_exists = user_exists

    # --- make_join / make_leave / make_knock ------------------------------------------------

    async def make_membership(
        self,
        origin: str,
        room_id: str,
        user_id: str,
        membership: str,
        supported_versions: Sequence[str] | None,
    ) -> dict[str, Any]:
        """GET /make_{join,leave,knock}/{roomId}/{userId}: an unsigned template."""
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user ID {user_id!r}")
        if server_of(user_id) != origin:
            raise forbidden(f"{user_id} is not a user of {origin}")
        room_version = await self._room_we_are_in(room_id)
        await self._check_origin_allowed(room_id, origin)
        if membership in ("join", "knock"):
            versions = supported_versions if supported_versions is not None else ["1"]
            if room_version.identifier not in versions:
                raise _incompatible(room_version)
        if membership == "knock" and not room_version.knocking:
            raise _incompatible(room_version)
        state_ids = await self._state.get_current_state_ids(room_id)
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_authoriser(room_id, user_id, state_ids, None)
            if authoriser is not None:
                content[AUTHORISER_KEY] = authoriser
        keys = auth_keys_for("m.room.member", user_id, user_id, content, room_version)
        auth_state = await self._load(state_ids, keys)
        extremities = await self._events.get_forward_extremities(room_id)
        prev = await self._events.get_events(extremities, allow_rejected=True)
        prev_events = sorted(prev.values(), key=lambda e: (-e.depth, e.event_id))
        template = self._builder.template(
            room_version=room_version,
            room_id=room_id,
            event_type="m.room.member",
            sender=user_id,
            content=content,
            state_key=user_id,
            prev_events=prev_events[:MAX_PREV_EVENTS],
            auth_events=listed_auth_events(auth_state, room_version),
        )
        # Would the auth rules let it in now? (Signed here only to be checked: the
        # authoriser's signature is this server's, and the sender's is not looked at.)
        trial = self._builder.finish(dict(template), room_version)
        decision = check_auth_rules(trial, auth_state)
        if not decision.allowed:
            raise forbidden(f"You are not allowed to {membership} this room: {decision.reason}")
        return {"event": template, "room_version": room_version.identifier}

    # --- send_join / send_leave / send_knock ------------------------------------------------

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str
    ) -> Event:
        """PUT /send_{join,leave,knock}/{roomId}/{eventId}: check, countersign if this
        server authorised it, run the receipt checks and persist. Returns the event as
        accepted (with this server's signature if it added one)."""
        room_version = await self._room_we_are_in(room_id)
        await self._check_origin_allowed(room_id, origin)
        event = parse_pdu(pdu, room_version, event_id)
        if event.room_id != room_id:
            raise bad_json(f"The event is for {event.room_id}, not {room_id}")
        if event.type != "m.room.member":
            raise bad_json("The event must be an m.room.member event")
        if event.state_key != event.sender:
            raise bad_json("The event's state_key must be its sender")
        if event.membership != membership:
            raise bad_json(f"The event's membership must be {membership!r}")
        if server_of(event.sender) != origin:
            raise forbidden(f"{event.sender} is not a user of {origin}")
        if membership == "knock" and not room_version.knocking:
            raise _incompatible(room_version)
        if membership == "join":
            event = await self._countersign_join(event)
        await self._record_relayed(event.event_id, origin)
        problem = await self._receiver.on_send_pdu(origin, dict(event.pdu))
        if problem is not None:
            raise forbidden(f"The event was not accepted: {problem}")
        got = (await self._events.get_events_with_meta([event.event_id])).get(event.event_id)
        if got is None:
            raise forbidden("The event was not accepted")
        meta = got.meta
        if meta.rejected_reason is not None:
            raise forbidden(f"The event is not allowed: {meta.rejected_reason}")
        if meta.soft_failed or meta.outlier:
            raise forbidden("The event is not allowed by the room's current state")
        return event

    async def send_join_response(
        self, event: Event, *, countersigned: bool, omit_members: bool = False
    ) -> dict[str, Any]:
        """The v2 send_join answer: the state before the join and the auth chain of the
        join and of that state. With `omit_members` (the joining server can take a
        partial answer, spec v1.6) the member events are left out of the state — but for
        the room's heroes when it has no name nor canonical alias, which the joining
        server's clients need — and the auth chain leaves out what the state holds."""
        state_ids = dict(await self._events.get_state_ids_before(event.event_id) or {})
        if not state_ids:
            raise MatrixError(500, "M_UNKNOWN", "The join's state is not known")
        member_ids = [eid for (t, _), eid in state_ids.items() if t == "m.room.member"]
        members = await self._events.get_events(member_ids)
        servers = sorted(
            {server_of(m.state_key or "") for m in members.values() if m.membership == "join"}
            - {""}
            | {self._server_name}
        )
        if omit_members:
            kept = _heroes(state_ids, members, event.sender)
            state_ids = {
                k: eid for k, eid in state_ids.items() if k[0] != "m.room.member" or k in kept
            }
        chain = await self._events.get_auth_chain_ids([*state_ids.values(), event.event_id])
        if omit_members:
            chain -= set(state_ids.values())
        found = await self._events.get_events([*state_ids.values(), *chain], allow_rejected=True)
        state = [pdu_for_federation(found[e]) for e in state_ids.values() if e in found]
        auth_chain = [pdu_for_federation(found[e]) for e in sorted(chain) if e in found]
        body: dict[str, Any] = {
            "origin": self._server_name,
            "state": state,
            "auth_chain": auth_chain,
            "members_omitted": omit_members,
            "servers_in_room": servers,
        }
        if countersigned:
            body["event"] = pdu_for_federation(event)
        return body

    async def knock_room_state(self, room_id: str) -> list[dict[str, Any]]:
        """The events a knocker sees of the room (full PDUs, as room versions format
        them; the knocking server strips them for its clients)."""
        state_ids = await self._state.get_current_state_ids(room_id)
        wanted = [state_ids[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state_ids]
        found = await self._events.get_events(wanted)
        return [pdu_for_federation(found[e]) for e in wanted if e in found]

    # --- invites ----------------------------------------------------------------------------

    async def receive_invite(
        self,
        origin: str,
        room_id: str,
        event_id: str,
        pdu: Any,
        room_version: RoomVersion,
        invite_room_state: Any,
    ) -> Event:
        """PUT /invite/{roomId}/{eventId}: countersign an invite of one of our users and,
        when this server is not in the room, remember it so the user sees it in /sync.

        The spec lists what to refuse (not an invite, not signed by its sender's server,
        a target on another server) and does not ask whether the target exists: an
        invite of a name no account holds is countersigned too, as Synapse does (the
        answer does not tell which names exist), and when the room is not here nothing
        is kept for it. In a room this server is in it goes through the receipt checks
        like any invite, which a /send transaction could carry without this handshake."""
        # The room's server ACL (when we hold its state) applies before anything else.
        await self._check_origin_allowed(room_id, origin)
        event = parse_pdu(pdu, room_version, event_id)
        if event.room_id != room_id:
            raise bad_json(f"The event is for {event.room_id}, not {room_id}")
        if event.type != "m.room.member" or event.membership != "invite":
            raise bad_json("The event must be an invite")
        target = event.state_key or ""
        if server_of(target) != self._server_name:
            # The spec's SHOULD for "the state_key is not a user ID on the receiving server".
            raise MatrixError(400, "M_INVALID_PARAM", f"{target} is not a user of this server")
        if server_of(event.sender) != origin:
            raise forbidden(f"{event.sender} is not a user of {origin}")
        known = await self._events.get_room_version(room_id)
        if known is not None and known.identifier != room_version.identifier:
            raise bad_json("The room version does not match the room's")
        try:
            await self._verifier.verify_event_signatures(event)
        except Exception as e:  # SignatureVerifyError, or the keys could not be fetched
            raise forbidden(f"The invite's signature does not verify: {e}") from None
        signed = self._builder.countersign(event)
        if await self._we_are_in(room_id):
            # The room's DAG is here: take the invite in now, through the receipt checks,
            # rather than when the inviting server's transaction brings it.
            problem = await self._receiver.on_send_pdu(origin, dict(signed.pdu))
            if problem is not None:
                logger.info("invite %s from %s: %s", signed.event_id, origin, problem)
        elif await self._user_exists(target):
            stripped = stripped_state(invite_room_state)
            stored = dict(signed.pdu)
            unsigned = dict(stored.get("unsigned") or {})
            unsigned["invite_room_state"] = stripped
            stored["unsigned"] = unsigned
            await self._invites.store(Event(stored, signed.event_id, room_version))
        return signed

    # --- helpers ----------------------------------------------------------------------------

    async def _we_are_in(self, room_id: str) -> bool:
        joined = await self._members.get_joined_users(room_id)
        return any(server_of(u) == self._server_name for u in joined)

    async def _room_we_are_in(self, room_id: str) -> RoomVersion:
        room_version = await self._events.get_room_version(room_id)
        if room_version is None or not await self._we_are_in(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"This server is not in room {room_id}")
        return room_version

    async def _check_origin_allowed(self, room_id: str, origin: str) -> None:
        if not await self._server_allowed(room_id, origin):
            raise forbidden(f"Server {origin} is denied by the room's server ACL")

    async def _load(
        self, state_ids: Mapping[StateKey, str], keys: Sequence[StateKey]
    ) -> dict[StateKey, Event]:
        ids = {k: state_ids[k] for k in keys if k in state_ids}
        found = await self._events.get_events(ids.values())
        return {k: found[e] for k, e in ids.items() if e in found}

    async def _restricted_authoriser(
        self,
        room_id: str,
        user_id: str,
        state_ids: Mapping[StateKey, str],
        named: str | None,
    ) -> str | None:
        """For a join into a restricted room by a user neither joined nor invited: the
        local user who authorises it (`named`, if given, must be one who can), or the
        spec's error. None when no authorisation is needed."""
        keys: list[StateKey] = [
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.power_levels", ""),
            ("m.room.member", user_id),
        ]
        state = await self._load(state_ids, keys)
        join_rules = state.get(("m.room.join_rules", ""))
        create = state.get(("m.room.create", ""))
        if join_rules is None or create is None:
            return None
        rules = create.room_version
        if not is_restricted(join_rules.content.get("join_rule"), rules):
            return None
        member = state.get(("m.room.member", user_id))
        if member is not None and member.membership in ("join", "invite"):
            return None
        allowed = allowed_room_ids(join_rules.content)
        known = [r for r in allowed if await self._we_are_in(r)]
        if not known:
            raise MatrixError(
                400,
                "M_UNABLE_TO_AUTHORISE_JOIN",
                "This server is in none of the rooms that admit members here",
            )
        theirs = await self._members.get_rooms_for_user(user_id)
        if not any(r in theirs and theirs[r].membership == "join" for r in known):
            raise forbidden(f"{user_id} is not joined to any of the rooms that admit members")
        levels = PowerLevels.from_state(create, state.get(("m.room.power_levels", "")), rules)
        joined = await self._members.get_joined_users(room_id)
        if named is not None:
            if (
                server_of(named) == self._server_name
                and named in joined
                and levels.user_level(named) >= levels.invite
            ):
                return named
            raise MatrixError(
                400, "M_UNABLE_TO_GRANT_JOIN", f"{named} cannot authorise joins to this room"
            )
        authoriser = choose_authoriser(joined, levels, self._server_name)
        if authoriser is None:
            raise MatrixError(
                400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise the join"
            )
        return authoriser

    async def _countersign_join(self, event: Event) -> Event:
        """A join naming one of our users as its authoriser is signed by this server only
        after checking the conditions again; one naming another server's user is left to
        that server's signature (the receipt checks demand it)."""
        named = event.content.get(AUTHORISER_KEY)
        if named is None:
            return event
        if not isinstance(named, str) or not is_valid_user_id(named):
            raise bad_json(f"{AUTHORISER_KEY} must be a user ID")
        if server_of(named) != self._server_name:
            return event
        state_ids = await self._state.get_current_state_ids(event.room_id)
        authoriser = await self._restricted_authoriser(
            event.room_id, event.sender, state_ids, named
        )
        if authoriser is None:
            # Joined or invited already, or not restricted: the auth rules still demand
            # the signature when the key is present, and the authoriser can vouch.
            joined = await self._members.get_joined_users(event.room_id)
            if named not in joined:
                raise forbidden(f"{named} is not in the room")
        return self._builder.countersign(event)


# Heroes of a room summary (Client-Server API, /sync's room summary: up to 5 members).
MAX_HEROES = 5


def _heroes(
    state_ids: Mapping[StateKey, str], members: Mapping[str, Event], joiner: str
) -> set[StateKey]:
    """The member entries a partial send_join answer keeps: when the room has neither
    m.room.name nor m.room.canonical_alias, the first joined or invited members (by
    depth, as the room summary's heroes) other than the joining user."""
    if ("m.room.name", "") in state_ids or ("m.room.canonical_alias", "") in state_ids:
        return set()
    candidates = [
        m
        for m in members.values()
        if m.membership in ("join", "invite") and m.state_key not in (None, joiner)
    ]
    candidates.sort(key=lambda m: (m.depth, m.event_id))
    return {("m.room.member", m.state_key or "") for m in candidates[:MAX_HEROES]}


def stripped_state(events: Any) -> list[dict[str, Any]]:
    """Stripped state events (type, state_key, content, sender) from what another server
    sent: full PDUs, or already stripped events from older servers. Anything malformed
    is skipped."""
    if not isinstance(events, list):
        return []
    out: list[dict[str, Any]] = []
    for item in events[:50]:
        if not isinstance(item, dict):
            continue
        etype, state_key = item.get("type"), item.get("state_key")
        content, sender = item.get("content"), item.get("sender")
        if (
            isinstance(etype, str)
            and isinstance(state_key, str)
            and isinstance(content, dict)
            and isinstance(sender, str)
        ):
            out.append(
                {"type": etype, "state_key": state_key, "content": content, "sender": sender}
            )
    return out
