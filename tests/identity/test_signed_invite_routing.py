"""Where a signed third-party invite (/3pid/onbind) is turned into an m.room.member
invite (spec: server-server API "Third-party invites"): the invitee's server makes and
sends it itself when it is in the room, whoever the inviter is, and sends it on to the
room's other servers; it asks the inviter's server (exchange_third_party_invite) only
when none of its users is joined."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
from nacl.signing import SigningKey as NaclKey

from starling.errors import MatrixError
from starling.identity.service import ThreepidService
from starling.protocol.canonical_json import encode_canonical_json
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import get_room_version
from starling.protocol.unpadded_base64 import encode_base64

HERE = "invitee.test"
ROOM = "!room:inviter.test"
ALICE = "@alice:inviter.test"  # the inviter, on the room's server
BOB = f"@bob:{HERE}"  # the invitee
CAROL = f"@carol:{HERE}"  # already in the room, or not
RV = get_room_version("10")
ID_KEY = NaclKey.generate()


def event(etype: str, sender: str, content: dict[str, Any], state_key: str) -> Event:
    pdu = {"type": etype, "room_id": ROOM, "sender": sender, "state_key": state_key}
    pdu["content"] = content
    return Event(pdu, f"${etype}{state_key}", RV)


def signed_for(mxid: str, key: NaclKey = ID_KEY) -> dict[str, Any]:
    body = {"mxid": mxid, "token": "tok"}
    sig = key.sign(encode_canonical_json(body)).signature
    return {**body, "signatures": {"id.test": {"ed25519:0": encode_base64(sig)}}}


class RoomEvents:
    def __init__(self, carol: str | None) -> None:
        public = encode_base64(bytes(ID_KEY.verify_key))
        self.state: dict[StateKey, Event] = {
            ("m.room.member", ALICE): event("m.room.member", ALICE, {"membership": "join"}, ALICE),
            ("m.room.third_party_invite", "tok"): event(
                "m.room.third_party_invite",
                ALICE,
                {"display_name": "Bob", "public_keys": [{"public_key": public}]},
                "tok",
            ),
        }
        if carol is not None:
            self.state[("m.room.member", CAROL)] = event(
                "m.room.member", CAROL, {"membership": carol}, CAROL
            )
        self.sent: list[tuple[str, str, dict[str, Any], str | None]] = []

    async def current_state_events(
        self, room_id: str, keys: Sequence[StateKey] | None = None
    ) -> Mapping[StateKey, Event]:
        return self.state if room_id == ROOM else {}

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        before_persist: Callable[[Event], Awaitable[None]] | None = None,
    ) -> Event:
        made = event(event_type, sender, content, state_key or "")
        if before_persist is not None:
            await before_persist(made)
        self.sent.append((sender, event_type, content, state_key))
        return made


class IdentityClient:
    async def key_is_valid(self, url: str, key: str) -> bool:
        return True


def service(events: RoomEvents) -> tuple[ThreepidService, list[Any], list[Any]]:
    exchanged: list[Any] = []
    relayed: list[Any] = []

    async def exchange(room_id: str, sender: str, target: str, signed: Any) -> None:
        exchanged.append((room_id, sender, target))

    async def record_relayed(event_id: str, origin: str) -> None:
        relayed.append((event_id, origin, len(events.sent)))

    async def no_profile(user_id: str) -> dict[str, Any]:
        return {}

    svc = ThreepidService(IdentityClient(), None, events, no_profile, HERE)  # type: ignore[arg-type]
    svc.use_exchange(exchange, record_relayed)
    return svc, exchanged, relayed


async def test_in_the_room_the_invitees_server_sends_the_invite_itself() -> None:
    events = RoomEvents(carol="join")
    svc, exchanged, relayed = service(events)
    await svc.accept_signed_invite(ROOM, ALICE, BOB, signed_for(BOB))
    ((sender, etype, content, target),) = events.sent
    assert (sender, etype, target) == (ALICE, "m.room.member", BOB)
    assert content["membership"] == "invite"
    assert content["third_party_invite"]["display_name"] == "Bob"  # the room's
    assert content["third_party_invite"]["signed"]["mxid"] == BOB
    # Recorded as ours to send (before it is stored), though its sender is not ours.
    assert relayed == [("$m.room.member" + BOB, HERE, 0)]
    assert exchanged == []


@pytest.mark.parametrize("carol", [None, "leave", "invite"])
async def test_not_in_the_room_it_asks_the_inviters_server(carol: str | None) -> None:
    events = RoomEvents(carol=carol)
    svc, exchanged, relayed = service(events)
    await svc.accept_signed_invite(ROOM, ALICE, BOB, signed_for(BOB))
    assert exchanged == [(ROOM, ALICE, BOB)]
    assert events.sent == [] and relayed == []


@pytest.mark.parametrize(
    "signed",
    [
        signed_for(BOB, key=NaclKey.generate()),  # not the identity server's key
        signed_for(CAROL),  # for someone else
        {"mxid": BOB, "token": "tok"},  # unsigned
    ],
)
async def test_a_bad_signed_block_sends_nothing(signed: dict[str, Any]) -> None:
    events = RoomEvents(carol="join")
    svc, exchanged, relayed = service(events)
    with pytest.raises(MatrixError) as refused:
        await svc.accept_signed_invite(ROOM, ALICE, BOB, signed)
    assert refused.value.status == 403
    assert events.sent == [] and relayed == [] and exchanged == []
