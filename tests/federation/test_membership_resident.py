"""The resident side of the membership handshakes, on both engines: what this server
agrees to template, countersign and accept for another server (make_join, send_join,
make_leave, make_knock, invites), restricted-join authorisation included.

The receipt pipeline is replaced by a recorder that refuses everything, so these tests see
exactly what would be handed to it (and that a refused request never reaches it). Remote
members are put in rooms by persisting their joins directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from starling.errors import MatrixError
from starling.federation.membership import ResidentMembership
from starling.protocol.event import Event
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SigningKey
from starling.rooms.builder import EventBuilder
from tests.support.harness import Harness

REMOTE = "remote.test"
OTHER = "other.test"


class Recorder:
    def __init__(self) -> None:
        self.pdus: list[tuple[str, dict[str, Any]]] = []

    async def on_send_pdu(self, origin: str, pdu_json: dict[str, Any]) -> str | None:
        self.pdus.append((origin, pdu_json))
        return "recorded by the test"


class Verifier:
    def __init__(self) -> None:
        self.fail = False

    async def verify_event_signatures(self, event: Event) -> None:
        if self.fail:
            raise ValueError("bad signature")


class InviteRecorder:
    def __init__(self) -> None:
        self.stored: list[Event] = []

    async def store(self, event: Event) -> int:
        self.stored.append(event)
        return 1


class Setup:
    def __init__(self, hs: Harness) -> None:
        s = hs.services
        self.hs = hs
        self.receiver = Recorder()
        self.verifier = Verifier()
        self.invites = InviteRecorder()
        self.relayed: list[tuple[str, str]] = []
        self.remote_builder = EventBuilder(REMOTE, SigningKey.generate())
        self.other_builder = EventBuilder(OTHER, SigningKey.generate())

        async def allowed(room_id: str, server: str) -> bool:
            return server != "banned.test"

        async def relay(event_id: str, origin: str) -> None:
            self.relayed.append((event_id, origin))

        self.resident = ResidentMembership(
            server_name=s.config.server_name,
            builder=EventBuilder(s.config.server_name, s.signing_key),
            events=s.event_store,  # type: ignore[arg-type]
            state=s.state_store,
            members=s.membership_store,
            receiver=self.receiver,
            server_allowed=allowed,
            record_relayed=relay,
            verifier=self.verifier,
            invites=self.invites,
            user_exists=s.account_store.user_exists,
        )

    async def room(self, **body: Any) -> tuple[str, str]:
        alice, token = await self.hs.register()
        room = await self.hs.create_room(token, **body)
        return room, alice

    async def join_remote(self, room: str, user: str) -> None:
        await self.hs.services.room_events.send(
            room, user, "m.room.member", {"membership": "join"}, user
        )

    async def signed_join(
        self, room: str, user: str, builder: EventBuilder | None = None, **content: Any
    ) -> Event:
        """The remote server's join: a template from us, finished and signed by it."""
        server = user.partition(":")[2]
        made = await self.resident.make_membership(server, room, user, "join", ["10", "11", "12"])
        template = dict(made["event"])
        template["content"] = {**template["content"], **content}
        return (builder or self.remote_builder).adopt_template(
            template, get_room_version(made["room_version"])
        )


@pytest.fixture
async def setup(hs: Harness) -> AsyncIterator[Setup]:
    yield Setup(hs)


def json_key(pdu: dict[str, Any]) -> str:
    """An event of an answer told apart by its canonical content (IDs may be implicit)."""
    return repr(sorted(pdu.items()))


async def expect(errcode: str, status: int, coro: Any) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        await coro
    assert (info.value.status, info.value.errcode) == (status, errcode), info.value
    return info.value


async def test_make_join_templates_a_join_for_a_user_of_the_asking_server(setup: Setup) -> None:
    room, _ = await setup.room(preset="public_chat")
    made = await setup.resident.make_membership(
        REMOTE, room, f"@bob:{REMOTE}", "join", ["10", "11", "12"]
    )
    template = made["event"]
    assert (
        made["room_version"]
        == (await setup.hs.services.event_store.get_room_version(room)).identifier
    )  # type: ignore[union-attr]
    assert template["type"] == "m.room.member"
    assert template["sender"] == template["state_key"] == f"@bob:{REMOTE}"
    assert template["room_id"] == room
    assert template["content"] == {"membership": "join"}
    assert "signatures" not in template and "hashes" not in template
    extremities = await setup.hs.services.event_store.get_forward_extremities(room)
    assert template["prev_events"] == extremities


async def test_make_join_refuses_a_user_of_another_server(setup: Setup) -> None:
    room, _ = await setup.room(preset="public_chat")
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.make_membership(OTHER, room, f"@bob:{REMOTE}", "join", ["10", "11"]),
    )
    # Nor for one of this server's own users.
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.make_membership(REMOTE, room, "@alice:test.local", "join", None),
    )


async def test_make_join_refusals(setup: Setup) -> None:
    room, _ = await setup.room(preset="private_chat")
    bob = f"@bob:{REMOTE}"
    # Invite-only: the auth rules would not let bob in.
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.make_membership(REMOTE, room, bob, "join", ["10", "11", "12"]),
    )
    public, _ = await setup.room(preset="public_chat")
    # A room version the joining server does not support (default: only "1").
    await expect(
        "M_INCOMPATIBLE_ROOM_VERSION",
        400,
        setup.resident.make_membership(REMOTE, public, bob, "join", None),
    )
    # Unknown room, bad user ID, a server the room's ACL refuses.
    await expect(
        "M_NOT_FOUND", 404, setup.resident.make_membership(REMOTE, "!nope:x", bob, "join", ["10"])
    )
    await expect(
        "M_INVALID_PARAM", 400, setup.resident.make_membership(REMOTE, public, "bob", "join", None)
    )
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.make_membership(
            "banned.test", public, "@x:banned.test", "join", ["10", "11", "12"]
        ),
    )


async def test_send_join_refuses_anything_but_that_join(setup: Setup) -> None:
    room, _ = await setup.room(preset="public_chat")
    bob = f"@bob:{REMOTE}"
    join = await setup.signed_join(room, bob)
    rv = join.room_version

    # The ID in the path must be the event's.
    await expect(
        "M_BAD_JSON",
        400,
        setup.resident.send_membership(REMOTE, room, "$other", join.pdu, "join"),
    )
    # The body is checked before the path's ID (the guard leaves {eventId} to the
    # handler): a float anywhere in it is M_BAD_JSON, whatever the path says; a good
    # body with a path that is no event ID is M_INVALID_PARAM.
    await expect(
        "M_BAD_JSON",
        400,
        setup.resident.send_membership(
            REMOTE, room, "xxx", {**join.pdu, "contents": {"bad": 1.1}}, "join"
        ),
    )
    await expect(
        "M_INVALID_PARAM",
        400,
        setup.resident.send_membership(REMOTE, room, "xxx", join.pdu, "join"),
    )
    # A join of remote.test's user sent by other.test.
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.send_membership(OTHER, room, join.event_id, join.pdu, "join"),
    )
    # Not a join: a leave, a message, another user's membership.
    made = await setup.resident.make_membership(REMOTE, room, bob, "join", ["10", "11", "12"])
    leave = setup.remote_builder.adopt_template(
        {**made["event"], "content": {"membership": "leave"}}, rv
    )
    await expect(
        "M_BAD_JSON",
        400,
        setup.resident.send_membership(REMOTE, room, leave.event_id, leave.pdu, "join"),
    )
    message = dict(made["event"])
    message.update(type="m.room.message", content={"body": "hi", "msgtype": "m.text"})
    message.pop("state_key")
    msg = setup.remote_builder.adopt_template(message, rv)
    await expect(
        "M_BAD_JSON",
        400,
        setup.resident.send_membership(REMOTE, room, msg.event_id, msg.pdu, "join"),
    )
    other_user = dict(join.pdu)
    other_user["state_key"] = f"@carol:{REMOTE}"
    forged = setup.remote_builder.adopt_template(other_user, rv)
    await expect(
        "M_BAD_JSON",
        400,
        setup.resident.send_membership(REMOTE, room, forged.event_id, forged.pdu, "join"),
    )
    assert setup.receiver.pdus == [] and setup.relayed == []

    # The real join goes to the receipt checks, recorded for relaying first.
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.send_membership(REMOTE, room, join.event_id, join.pdu, "join"),
    )
    assert setup.relayed == [(join.event_id, REMOTE)]
    ((origin, pdu),) = setup.receiver.pdus
    assert origin == REMOTE and pdu == join.pdu  # not countersigned: no authoriser


async def restricted_room(setup: Setup) -> tuple[str, str, str]:
    """A space-like room `allowed` and a restricted room admitting its members."""
    allowed, _ = await setup.room(preset="public_chat")
    room, owner = await setup.room(
        preset="private_chat",
        room_version="10",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": allowed}],
                },
            }
        ],
    )
    return room, owner, allowed


async def test_restricted_join_is_authorised_only_when_allowed(setup: Setup) -> None:
    room, owner, allowed = await restricted_room(setup)
    bob, carol = f"@bob:{REMOTE}", f"@carol:{REMOTE}"
    await setup.join_remote(allowed, bob)

    # bob is in the allowed room: the template names a local user who can invite.
    made = await setup.resident.make_membership(REMOTE, room, bob, "join", ["10"])
    assert made["event"]["content"]["join_authorised_via_users_server"] == owner
    # carol is not: refused.
    await expect(
        "M_FORBIDDEN", 403, setup.resident.make_membership(REMOTE, room, carol, "join", ["10"])
    )

    # bob's join is countersigned by this server before the receipt checks.
    join = await setup.signed_join(room, bob)
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.send_membership(REMOTE, room, join.event_id, join.pdu, "join"),
    )
    ((_, pdu),) = setup.receiver.pdus
    assert set(pdu["signatures"]) == {REMOTE, setup.hs.server_name}

    # carol naming the owner as her authoriser anyway: checked again, refused, unsigned.
    made_for_bob = dict(made["event"])
    made_for_bob.update(sender=carol, state_key=carol)
    carols = setup.remote_builder.adopt_template(made_for_bob, join.room_version)
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.send_membership(REMOTE, room, carols.event_id, carols.pdu, "join"),
    )
    assert len(setup.receiver.pdus) == 1

    # bob naming a local user who is not in the room: this server will not vouch.
    nobody, _ = await setup.hs.register()
    weak = setup.remote_builder.adopt_template(
        {
            **dict(made["event"]),
            "content": {"membership": "join", "join_authorised_via_users_server": nobody},
        },
        join.room_version,
    )
    await expect(
        "M_UNABLE_TO_GRANT_JOIN",
        400,
        setup.resident.send_membership(REMOTE, room, weak.event_id, weak.pdu, "join"),
    )
    assert len(setup.receiver.pdus) == 1


async def test_restricted_join_needs_a_room_and_an_inviter_here(setup: Setup) -> None:
    room, owner, allowed = await restricted_room(setup)
    bob = f"@bob:{REMOTE}"
    await setup.join_remote(allowed, bob)
    # Nobody here can invite any more (the invite level is above everyone).
    await setup.hs.services.room_events.send(
        room,
        owner,
        "m.room.power_levels",
        {"users": {owner: 0}, "invite": 50},
        "",
    )
    await expect(
        "M_UNABLE_TO_GRANT_JOIN",
        400,
        setup.resident.make_membership(REMOTE, room, bob, "join", ["10"]),
    )
    # A restricted room admitting members of a room this server is not in.
    other, _ = await setup.room(
        preset="private_chat",
        room_version="10",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": "!elsewhere:far.test"}],
                },
            }
        ],
    )
    await expect(
        "M_UNABLE_TO_AUTHORISE_JOIN",
        400,
        setup.resident.make_membership(REMOTE, other, bob, "join", ["10"]),
    )


async def test_make_knock_and_leave(setup: Setup) -> None:
    knockable, _ = await setup.room(
        preset="private_chat",
        room_version="10",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    bob = f"@bob:{REMOTE}"
    made = await setup.resident.make_membership(REMOTE, knockable, bob, "knock", ["10"])
    assert made["event"]["content"] == {"membership": "knock"}
    # A room that does not take knocks.
    public, _ = await setup.room(preset="public_chat")
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.make_membership(REMOTE, public, bob, "knock", ["10", "11", "12"]),
    )
    # Leaving: only for a user with a membership to leave.
    await expect(
        "M_FORBIDDEN", 403, setup.resident.make_membership(REMOTE, public, bob, "leave", None)
    )
    await setup.join_remote(public, bob)
    made = await setup.resident.make_membership(REMOTE, public, bob, "leave", None)
    assert made["event"]["content"] == {"membership": "leave"}
    state = await setup.resident.knock_room_state(knockable)
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.join_rules"}


async def test_invites_are_countersigned_only_for_local_users_from_their_inviter(
    setup: Setup,
) -> None:
    bob, _ = await setup.hs.register("bob")
    rv = get_room_version("10")
    room_id = f"!remote:{REMOTE}"

    def invite(sender: str, target: str, builder: EventBuilder) -> Event:
        template = builder.template(
            room_version=rv,
            room_id=room_id,
            event_type="m.room.member",
            sender=sender,
            content={"membership": "invite"},
            state_key=target,
            prev_events=[],
            auth_events=[],
        )
        return builder.finish(template, rv)

    state = [{"type": "m.room.name", "state_key": "", "content": {"name": "Far"}, "sender": "x"}]
    good = invite(f"@carol:{REMOTE}", bob, setup.remote_builder)
    # Sent by another server than the inviter's; for a user that does not exist here.
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.receive_invite(OTHER, room_id, good.event_id, good.pdu, rv, state),
    )
    # A server the ACL bans hears so before anything else (even for a user unknown here).
    banned_builder = EventBuilder("banned.test", SigningKey.generate())
    banned = invite("@eve:banned.test", "@nobody:test.local", banned_builder)
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.receive_invite(
            "banned.test", room_id, banned.event_id, banned.pdu, rv, state
        ),
    )
    # A user of another server: the spec's M_INVALID_PARAM.
    elsewhere = invite(f"@carol:{REMOTE}", f"@bob:{OTHER}", setup.remote_builder)
    await expect(
        "M_INVALID_PARAM",
        400,
        setup.resident.receive_invite(
            REMOTE, room_id, elsewhere.event_id, elsewhere.pdu, rv, state
        ),
    )
    # A signature that does not verify.
    setup.verifier.fail = True
    await expect(
        "M_FORBIDDEN",
        403,
        setup.resident.receive_invite(REMOTE, room_id, good.event_id, good.pdu, rv, state),
    )
    setup.verifier.fail = False
    assert setup.invites.stored == []

    signed = await setup.resident.receive_invite(
        REMOTE, room_id, good.event_id, good.pdu, rv, state
    )
    assert signed.event_id == good.event_id
    assert set(signed.pdu["signatures"]) == {REMOTE, setup.hs.server_name}
    (stored,) = setup.invites.stored
    assert stored.unsigned["invite_room_state"] == state

    # A name no account holds: countersigned as any (the answer does not say which
    # names exist, as Synapse's), and nothing kept for nobody.
    nobody = invite(f"@carol:{REMOTE}", "@nobody:test.local", setup.remote_builder)
    signed = await setup.resident.receive_invite(
        REMOTE, room_id, nobody.event_id, nobody.pdu, rv, state
    )
    assert set(signed.pdu["signatures"]) == {REMOTE, setup.hs.server_name}
    assert len(setup.invites.stored) == 1


async def test_an_invite_into_a_room_we_are_in_goes_through_the_receipt_checks(
    setup: Setup,
) -> None:
    room, _ = await setup.room(preset="public_chat")
    carol = f"@carol:{REMOTE}"
    await setup.join_remote(room, carol)
    bob, _ = await setup.hs.register("bob")
    made = await setup.resident.make_membership(REMOTE, room, carol, "join", ["10", "11", "12"])
    rv = get_room_version(made["room_version"])
    template = {**made["event"], "state_key": bob, "content": {"membership": "invite"}}
    invite = setup.remote_builder.adopt_template(template, rv)
    signed = await setup.resident.receive_invite(REMOTE, room, invite.event_id, invite.pdu, rv, [])
    ((origin, pdu),) = setup.receiver.pdus
    assert origin == REMOTE and pdu == signed.pdu
    assert set(pdu["signatures"]) == {REMOTE, setup.hs.server_name}
    assert setup.invites.stored == []  # the DAG is here: no out-of-band copy


async def test_an_unsigned_join_is_a_failed_signature_check(setup: Setup) -> None:
    room, _ = await setup.room(preset="public_chat")
    join = await setup.signed_join(room, f"@bob:{REMOTE}")
    for key in ("signatures", "hashes"):
        bare = {k: v for k, v in join.pdu.items() if k != key}
        await expect(
            "M_FORBIDDEN",
            403,
            setup.resident.send_membership(REMOTE, room, join.event_id, bare, "join"),
        )
    assert setup.receiver.pdus == []


async def test_send_join_answer_whole_or_without_members(setup: Setup) -> None:
    """The whole answer's auth chain is closed by itself (it holds the state events the
    chain cites); with omit_members the member events are left out but for the heroes of
    a room without a name, and the chain leaves out what the state holds."""
    room, alice = await setup.room(preset="public_chat")
    members = [f"@m{i}:{REMOTE}" for i in range(7)]
    for user in members:
        await setup.join_remote(room, user)
    store, state = setup.hs.services.event_store, setup.hs.services.state_store
    joiner = members[-1]
    join_id = (await state.get_current_state_ids(room))[("m.room.member", joiner)]
    join = (await store.get_events([join_id]))[join_id]

    whole = await setup.resident.send_join_response(join, countersigned=False)
    assert whole["members_omitted"] is False
    state_types = [(e["type"], e["state_key"]) for e in whole["state"]]
    assert ("m.room.member", alice) in state_types and len(whole["state"]) >= 8
    # Alice's join and the power levels cite each other's keys: both are in the state and
    # in the chain (before omit_members, the chain did not repeat what the state held).
    assert {e["type"] for e in whole["auth_chain"]} >= {"m.room.power_levels", "m.room.member"}
    assert REMOTE in whole["servers_in_room"]

    partial = await setup.resident.send_join_response(join, countersigned=False, omit_members=True)
    assert partial["members_omitted"] is True
    kept = [e["state_key"] for e in partial["state"] if e["type"] == "m.room.member"]
    # The first five members by depth other than the joiner: alice and m0..m3.
    assert kept and len(kept) == 5 and joiner not in kept and alice in kept
    in_state = {json_key(e) for e in partial["state"]}
    assert not any(json_key(e) in in_state for e in partial["auth_chain"])
    assert partial["servers_in_room"] == whole["servers_in_room"]
