"""exchange_third_party_invite both ways, over fakes: the inviter's server sends the
invite only for its own joined inviter, a user of the asking server, and a `signed` that
a key of the room's m.room.third_party_invite signed (the shared check of
starling.rooms.third_party_invites); the invitee's server asks the inviter's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from nacl.signing import SigningKey as NaclKey

from starling.errors import MatrixError
from starling.federation.errors import FederationError
from starling.federation.third_party_invites import ThirdPartyInviteExchange
from starling.protocol.canonical_json import encode_canonical_json
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import get_room_version
from starling.protocol.unpadded_base64 import encode_base64

HERE = "here.test"
ROOM = "!room:here.test"
ALICE = f"@alice:{HERE}"
BOB = "@bob:there.test"
RV = get_room_version("10")
ID_KEY = NaclKey.generate()


def event(etype: str, sender: str, content: dict[str, Any], state_key: str) -> Event:
    pdu = {"type": etype, "room_id": ROOM, "sender": sender, "state_key": state_key}
    pdu["content"] = content
    return Event(pdu, f"${etype}{state_key}", RV)


def signed_for(mxid: str, token: str = "tok", key: NaclKey = ID_KEY) -> dict[str, Any]:
    body = {"mxid": mxid, "token": token}
    sig = key.sign(encode_canonical_json(body)).signature
    return {**body, "signatures": {"id.test": {"ed25519:0": encode_base64(sig)}}}


class Rooms:
    def __init__(self) -> None:
        public = encode_base64(bytes(ID_KEY.verify_key))
        self.state: dict[StateKey, Event] = {
            ("m.room.member", ALICE): event("m.room.member", ALICE, {"membership": "join"}, ALICE),
            ("m.room.third_party_invite", "tok"): event(
                "m.room.third_party_invite",
                ALICE,
                {"display_name": "b...@e.org", "public_keys": [{"public_key": public}]},
                "tok",
            ),
        }
        self.sent: list[tuple[str, str, dict[str, Any], str | None]] = []

    async def current_state_events(
        self, room_id: str, keys: Sequence[StateKey] | None = None
    ) -> Mapping[StateKey, Event]:
        return self.state if room_id == ROOM else {}

    async def invite(
        self, room_id: str, sender: str, target: str, content: dict[str, Any]
    ) -> Event:
        self.sent.append((sender, "m.room.member", content, target))
        return event("m.room.member", sender, content, target)


class Client:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.answer: Any = {}

    async def put_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        self.calls.append((destination, path, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def always_valid(url: str, key: str) -> bool:
    return True


def partial(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "m.room.member",
        "room_id": ROOM,
        "sender": ALICE,
        "state_key": BOB,
        "content": {
            "membership": "invite",
            "third_party_invite": {"display_name": "bob", "signed": signed_for(BOB)},
        },
    }
    body.update(changes)
    return body


async def test_the_inviters_server_sends_the_checked_invite() -> None:
    rooms = Rooms()
    x = ThirdPartyInviteExchange(HERE, Client(), rooms, rooms.invite, always_valid)
    await x.on_exchange("there.test", ROOM, partial())
    ((sender, etype, content, target),) = rooms.sent
    assert (sender, etype, target) == (ALICE, "m.room.member", BOB)
    assert content["membership"] == "invite"
    assert content["third_party_invite"]["signed"]["mxid"] == BOB
    assert content["third_party_invite"]["display_name"] == "b...@e.org"  # the room's


@pytest.mark.parametrize(
    ("origin", "body", "status"),
    [
        ("other.test", partial(), 403),  # bob is not other.test's user
        ("there.test", partial(sender="@mallory:there.test"), 403),  # not our inviter
        ("there.test", partial(room_id="!else:here.test"), 400),
        ("there.test", partial(type="m.room.message"), 400),
        ("there.test", partial(content={"membership": "invite"}), 400),
        (
            "there.test",
            partial(
                content={
                    "membership": "invite",
                    "third_party_invite": {
                        "display_name": "bob",
                        "signed": signed_for(BOB, key=NaclKey.generate()),  # forged
                    },
                }
            ),
            403,
        ),
        (
            "there.test",
            partial(
                content={
                    "membership": "invite",
                    "third_party_invite": {"display_name": "x", "signed": signed_for(BOB, "no")},
                }
            ),
            403,
        ),
    ],
)
async def test_anything_else_is_refused(origin: str, body: dict[str, Any], status: int) -> None:
    rooms = Rooms()
    x = ThirdPartyInviteExchange(HERE, Client(), rooms, rooms.invite, always_valid)
    with pytest.raises(MatrixError) as refused:
        await x.on_exchange(origin, ROOM, body)
    assert refused.value.status == status
    assert rooms.sent == []


async def test_the_invitees_server_asks_the_inviters() -> None:
    client = Client()
    rooms = Rooms()
    x = ThirdPartyInviteExchange("there.test", client, rooms, rooms.invite, always_valid)
    await x.exchange(ROOM, ALICE, BOB, signed_for(BOB))
    ((destination, path, body),) = client.calls
    assert destination == HERE
    assert path == "/_matrix/federation/v1/exchange_third_party_invite/%21room%3Ahere.test"
    assert body["content"]["third_party_invite"]["signed"]["mxid"] == BOB
    client.answer = FederationError(403, "M_FORBIDDEN", "no")
    with pytest.raises(MatrixError) as refused:
        await x.exchange(ROOM, ALICE, BOB, signed_for(BOB))
    assert refused.value.status == 403
