"""The authorisation rules of room versions 1-12, and the auth-events selection.

Owns: `check_auth_rules` (the room version's rules against a given state: the event's
auth events, the state before it, or the current state - Server-Server API > Checks
performed on receipt of a PDU, steps 4-6), `check_auth_events_list` (the rule about the
event's own `auth_events` list), `auth_types_for_event` (Server-Server API > Auth events
selection) and `AuthDecision`.

Rule numbers in comments follow Room Version 1's list ("rule 5.3.1"); where a later
version renumbered or changed a rule the comment names that version. Version differences
are read from the rule flags of `RoomVersion`, never from the version string.

Everything here is pure and total: malformed events (wrong types, missing keys) are
denied with a reason, never raised. For `join_authorised_via_users_server` (rule 4.2,
room 8+) the rule here demands an ed25519 signature from the authorising user's server;
verifying it cryptographically belongs to the signature step of the receipt pipeline
(`Keyring.verify_event_signatures`), which has the server keys.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import (
    PowerLevels,
    creators,
    is_valid_user_id,
    original_creator,
    power_levels_change_error,
    server_of,
)
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

# Upper bound on ed25519 verifications for one third-party invite, so a crafted event
# with hundreds of signatures and keys cannot make one auth check expensive.
_MAX_3PID_VERIFICATIONS = 64


@dataclass(frozen=True, slots=True)
class AuthDecision:
    allowed: bool
    reason: str = ""


ALLOWED = AuthDecision(True)


def _deny(reason: str) -> AuthDecision:
    return AuthDecision(False, reason)


def _membership(auth_state: Mapping[StateKey, Event], user_id: str) -> str | None:
    member = auth_state.get(("m.room.member", user_id))
    if member is None:
        return None
    m = member.content.get("membership")
    return m if isinstance(m, str) else None


def _join_rule(auth_state: Mapping[StateKey, Event]) -> str:
    event = auth_state.get(JOIN_RULES_KEY)
    if event is None:
        # The spec gives no default join rule; "invite" (only invited or joined users may
        # join) is the closed reading, and what other servers assume.
        return "invite"
    rule = event.content.get("join_rule")
    return rule if isinstance(rule, str) else ""


# --- Auth events selection -------------------------------------------------------------


def auth_types_for_event(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    room_version: RoomVersion,
) -> list[StateKey]:
    """The state keys a new event's auth_events must reference (Server-Server API > Auth
    events selection), in a stable order without duplicates. Empty for m.room.create."""
    if event_type == "m.room.create":
        return []
    keys: list[StateKey] = []
    if room_version.create_event_in_auth_events:
        keys.append(CREATE_KEY)
    keys.append(POWER_LEVELS_KEY)
    keys.append(("m.room.member", sender))
    if event_type == "m.room.member" and isinstance(state_key, str):
        target_key = ("m.room.member", state_key)
        if target_key not in keys:
            keys.append(target_key)
        membership = content.get("membership")
        if membership in ("join", "invite", "knock"):
            keys.append(JOIN_RULES_KEY)
        if membership == "invite":
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                keys.append(("m.room.third_party_invite", token))
        if membership == "join" and room_version.restricted_joins:
            authoriser = content.get("join_authorised_via_users_server")
            if isinstance(authoriser, str):
                auth_key = ("m.room.member", authoriser)
                if auth_key not in keys:
                    keys.append(auth_key)
    return keys


def check_auth_events_list(
    event: Event, auth_events: Sequence[Event], rejected: Container[str] = ()
) -> AuthDecision:
    """Rule 2 (rule 3 in room 12): the event's own auth_events, given as the events its
    `auth_event_ids` name. `rejected` holds IDs of events that were rejected."""
    if event.type == "m.room.create":
        return ALLOWED  # rule 1 decides about create events before rule 2 is reached
    rules = event.room_version
    if len(set(event.auth_event_ids)) != len(event.auth_event_ids):
        return _deny("auth_events lists an event twice")
    allowed_keys = set(
        auth_types_for_event(event.type, event.state_key, event.sender, event.content, rules)
    )
    seen: set[StateKey] = set()
    has_create = False
    for auth_event in auth_events:
        if auth_event.state_key is None:
            return _deny(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_map_key
        if key in seen:  # rule 2.1
            return _deny(f"auth_events has two {key[0]} events for {key[1]!r}")
        seen.add(key)
        if key not in allowed_keys:  # rule 2.2; in room 12 this also excludes the create
            return _deny(f"auth event {key[0]} {key[1]!r} is not needed for this event")
        if auth_event.event_id in rejected:  # rule 2.3
            return _deny(f"auth event {auth_event.event_id} was rejected")
        if auth_event.room_id != event.room_id:  # rule 2.5
            return _deny(f"auth event {auth_event.event_id} is from another room")
        if key == CREATE_KEY:
            has_create = True
    if rules.create_event_in_auth_events and not has_create:  # rule 2.4 (rooms 1-11)
        return _deny("auth_events has no m.room.create event")
    return ALLOWED


# --- The rules ---------------------------------------------------------------------------


def check_auth_rules(event: Event, auth_state: Mapping[StateKey, Event]) -> AuthDecision:
    """Whether `event` passes its room version's authorisation rules against
    `auth_state`, which must hold the create event under ("m.room.create", "") (room 12
    too, where auth_events never lists it); that create event is taken to be accepted.
    Rule 2 (the auth_events list itself) is `check_auth_events_list`.
    """
    rules = event.room_version
    etype = event.type
    if etype == "m.room.create":
        return _check_create(event, rules)

    create = auth_state.get(CREATE_KEY)
    if create is None:
        return _deny("no m.room.create event in the auth state")
    if rules.room_id_from_create_event:
        # Room 12, rule 2: the room ID is the (accepted) create event's ID with "!".
        if not create.event_id.startswith("$") or event.room_id != "!" + create.event_id[1:]:
            return _deny("room_id is not the create event's ID")
    elif create.room_id != event.room_id:
        return _deny("the create event is from another room")

    sender = event.sender
    sender_server = server_of(sender)
    # Rule 3: m.federate false keeps out senders from other servers than the creator's.
    if create.content.get("m.federate") is False and sender_server != server_of(create.sender):
        return _deny("room is not federated and sender is from another server")

    # Rule 4 (rooms 1-5): aliases are governed by the sender's server alone.
    if etype == "m.room.aliases" and rules.special_case_aliases_auth:
        if event.state_key is None:
            return _deny("m.room.aliases event has no state_key")
        if event.state_key != sender_server:
            return _deny("m.room.aliases state_key is not the sender's server")
        return ALLOWED

    if etype == "m.room.member":
        return _check_member(event, auth_state, create, rules)

    # Rule 6: everything else needs a joined sender.
    if _membership(auth_state, sender) != "join":
        return _deny("sender is not joined to the room")

    pl_event = auth_state.get(POWER_LEVELS_KEY)
    pl = PowerLevels(pl_event.content if pl_event is not None else None, creators(create), rules)
    sender_level = pl.user_level(sender)

    # Rule 7: third-party invites need the invite level and nothing else.
    if etype == "m.room.third_party_invite":
        if sender_level >= pl.invite:
            return ALLOWED
        return _deny(f"power level of {sender} is below the invite level")

    # Rule 8: the event type's required level.
    if pl.event_level(etype, event.state_key is not None) > sender_level:
        return _deny(f"power level of {sender} is below the level needed for {etype}")

    # Rule 9: state keys that look like user IDs belong to that user.
    if event.state_key is not None and event.state_key.startswith("@"):
        if event.state_key != sender:
            return _deny("state_key starting with @ is not the sender")

    # Rule 10 (rule 9 in rooms 6-11).
    if etype == "m.room.power_levels":
        error = power_levels_change_error(
            event.content,
            pl_event.content if pl_event is not None else None,
            sender,
            sender_level,
            pl.creators,
            rules,
        )
        return ALLOWED if error is None else _deny(error)

    # Rule 11 (rooms 1-2 only; later versions check redactions when applying them).
    if etype == "m.room.redaction" and rules.redaction_auth_rule:
        if sender_level >= pl.redact:
            return ALLOWED
        redacts = event.redacts
        own_server = server_of(event.event_id)
        if redacts is not None and own_server and server_of(redacts) == own_server:
            return ALLOWED
        return _deny(f"power level of {sender} is below the redact level")

    return ALLOWED


def _check_create(event: Event, rules: RoomVersion) -> AuthDecision:
    """Rule 1."""
    if event.prev_event_ids or event.pdu.get("prev_events"):
        return _deny("m.room.create has prev_events")
    if rules.room_id_from_create_event:
        # Room 12, rule 1.2: the room ID is derived from the create event, so it has none.
        if "room_id" in event.pdu:
            return _deny("m.room.create has a room_id")
    else:
        room_server = server_of(event.room_id)
        if not room_server or room_server != server_of(event.sender):
            return _deny("room_id's server is not the sender's server")
    content = event.content
    if "room_version" in content:
        version = content["room_version"]
        if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
            return _deny("unknown room_version in m.room.create")
    if rules.create_event_has_creator and "creator" not in content:
        return _deny("m.room.create has no creator")
    if rules.privileged_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            return _deny("additional_creators is not a list of valid user IDs")
    return ALLOWED


def _check_member(
    event: Event, auth_state: Mapping[StateKey, Event], create: Event, rules: RoomVersion
) -> AuthDecision:
    """Rule 5 (rule 4 from room 6 on)."""
    content = event.content
    target = event.state_key
    if target is None or "membership" not in content:
        return _deny("m.room.member has no state_key or no membership")
    membership = content["membership"]
    sender = event.sender

    # Rule 4.2 (room 8+): the authorising user's server must have signed the join.
    if rules.restricted_joins and "join_authorised_via_users_server" in content:
        authoriser = content["join_authorised_via_users_server"]
        if not is_valid_user_id(authoriser):
            return _deny("join_authorised_via_users_server is not a user ID")
        if not _has_server_signature(event, server_of(authoriser)):
            return _deny("event is not signed by the authorising user's server")

    target_membership = _membership(auth_state, target)

    if membership == "join":
        # Rule 5.2.1: the creator's own first join, straight after the create event.
        if event.prev_event_ids == (create.event_id,) and target == original_creator(create):
            return ALLOWED
        if sender != target:
            return _deny("sender cannot join on behalf of another user")
        if target_membership == "ban":
            return _deny(f"{sender} is banned from the room")
        join_rule = _join_rule(auth_state)
        if join_rule == "invite" or (join_rule == "knock" and rules.knocking):
            if target_membership in ("invite", "join"):
                return ALLOWED
            return _deny(f"join rule is {join_rule} and {sender} is not invited")
        if (join_rule == "restricted" and rules.restricted_joins) or (
            join_rule == "knock_restricted" and rules.knock_restricted
        ):
            if target_membership in ("invite", "join"):
                return ALLOWED
            authoriser = content.get("join_authorised_via_users_server")
            if not isinstance(authoriser, str):
                return _deny("restricted join has no join_authorised_via_users_server")
            if _membership(auth_state, authoriser) != "join":
                return _deny(f"authorising user {authoriser} is not joined to the room")
            pl = _power_levels(auth_state, create, rules)
            if pl.user_level(authoriser) < pl.invite:
                return _deny(f"power level of {authoriser} is below the invite level")
            return ALLOWED
        if join_rule == "public":
            return ALLOWED
        return _deny(f"join rule {join_rule!r} does not allow joining")

    if membership == "invite":
        if "third_party_invite" in content:
            if target_membership == "ban":
                return _deny(f"{target} is banned from the room")
            return _check_third_party_invite(event, content["third_party_invite"], auth_state)
        if _membership(auth_state, sender) != "join":
            return _deny("sender is not joined to the room")
        if target_membership == "join":
            return _deny(f"{target} is already joined")
        if target_membership == "ban":
            return _deny(f"{target} is banned from the room")
        pl = _power_levels(auth_state, create, rules)
        if pl.user_level(sender) >= pl.invite:
            return ALLOWED
        return _deny(f"power level of {sender} is below the invite level")

    if membership == "leave":
        if sender == target:
            if target_membership in ("invite", "join") or (
                target_membership == "knock" and rules.knocking
            ):
                return ALLOWED
            return _deny(f"{sender} cannot leave with membership {target_membership}")
        if _membership(auth_state, sender) != "join":
            return _deny("sender is not joined to the room")
        pl = _power_levels(auth_state, create, rules)
        sender_level = pl.user_level(sender)
        if target_membership == "ban" and sender_level < pl.ban:
            return _deny(f"power level of {sender} is below the ban level")
        if sender_level < pl.kick:
            return _deny(f"power level of {sender} is below the kick level")
        if pl.user_level(target) >= sender_level:
            return _deny(f"power level of {target} is not below that of {sender}")
        return ALLOWED

    if membership == "ban":
        if _membership(auth_state, sender) != "join":
            return _deny("sender is not joined to the room")
        pl = _power_levels(auth_state, create, rules)
        sender_level = pl.user_level(sender)
        if sender_level < pl.ban:
            return _deny(f"power level of {sender} is below the ban level")
        if pl.user_level(target) >= sender_level:
            return _deny(f"power level of {target} is not below that of {sender}")
        return ALLOWED

    if membership == "knock" and rules.knocking:
        join_rule = _join_rule(auth_state)
        if join_rule != "knock" and not (
            join_rule == "knock_restricted" and rules.knock_restricted
        ):
            return _deny(f"join rule {join_rule!r} does not allow knocking")
        if sender != target:
            return _deny("sender cannot knock on behalf of another user")
        if target_membership in ("ban", "invite", "join"):
            return _deny(f"{sender} cannot knock with membership {target_membership}")
        return ALLOWED

    return _deny(f"unknown membership {membership!r}")


def _has_server_signature(event: Event, server_name: str) -> bool:
    """Whether the event carries an ed25519 signature string from `server_name`. That the
    signature verifies is checked where the server keys are: the keyring's
    `verify_event_signatures` on receipt, which covers the authorising server of a
    restricted join; a local event is only signed after the membership service has
    checked the join's allow conditions and chosen its authoriser itself."""
    signatures = event.pdu.get("signatures")
    by_key = signatures.get(server_name) if isinstance(signatures, dict) else None
    if not isinstance(by_key, dict):
        return False
    return any(
        isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(sig, str) and sig
        for key_id, sig in by_key.items()
    )


def _power_levels(
    auth_state: Mapping[StateKey, Event], create: Event, rules: RoomVersion
) -> PowerLevels:
    pl_event = auth_state.get(POWER_LEVELS_KEY)
    return PowerLevels(pl_event.content if pl_event is not None else None, creators(create), rules)


def _check_third_party_invite(
    event: Event, tpi: Any, auth_state: Mapping[StateKey, Event]
) -> AuthDecision:
    """Rule 5.3.1 (after the ban check): the invite must be backed by a signature from a
    key of the matching m.room.third_party_invite, which the same sender placed."""
    if not isinstance(tpi, dict) or not isinstance(tpi.get("signed"), dict):
        return _deny("third_party_invite has no signed object")
    signed: dict[str, Any] = tpi["signed"]
    mxid = signed.get("mxid")
    token = signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        return _deny("third_party_invite.signed has no mxid or token")
    if mxid != event.state_key:
        return _deny("third_party_invite mxid is not the invited user")
    invite_event = auth_state.get(("m.room.third_party_invite", token))
    if invite_event is None:
        return _deny("no m.room.third_party_invite event for this token")
    if invite_event.sender != event.sender:
        return _deny("sender did not send the m.room.third_party_invite")
    if _third_party_signature_matches(signed, invite_event.content):
        return ALLOWED
    return _deny("no signature in third_party_invite matches the invite's public keys")


def _third_party_public_keys(content: Mapping[str, Any]) -> list[bytes]:
    from starling.protocol.unpadded_base64 import decode_base64

    encoded: list[Any] = [content.get("public_key")]
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        encoded.extend(k.get("public_key") for k in public_keys if isinstance(k, dict))
    keys: list[bytes] = []
    for text in encoded:
        if isinstance(text, str):
            try:
                raw = decode_base64(text)
            except ValueError:
                continue
            if len(raw) == 32 and raw not in keys:
                keys.append(raw)
    return keys


def _third_party_signature_matches(signed: dict[str, Any], content: Mapping[str, Any]) -> bool:
    # Imported here: only third-party invites need ed25519 and canonical JSON.
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    from starling.protocol.canonical_json import encode_canonical_json
    from starling.protocol.unpadded_base64 import decode_base64

    keys = _third_party_public_keys(content)
    signatures = signed.get("signatures")
    if not keys or not isinstance(signatures, dict):
        return False
    # Appendices > Signing JSON: the signature covers the object without `signatures`
    # and `unsigned`.
    unsigned_copy = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    try:
        message = encode_canonical_json(unsigned_copy)
    except ValueError:
        return False
    attempts = 0
    for by_key in signatures.values():
        if not isinstance(by_key, dict):
            continue
        for signature_b64 in by_key.values():
            if not isinstance(signature_b64, str):
                continue
            try:
                signature = decode_base64(signature_b64)
            except ValueError:
                continue
            if len(signature) != 64:
                continue
            for key in keys:
                attempts += 1
                if attempts > _MAX_3PID_VERIFICATIONS:
                    return False
                try:
                    VerifyKey(key).verify(message, signature)
                except (BadSignatureError, ValueError):
                    continue
                return True
    return False
