"""The joining side of the membership handshakes against fake residents: templates are
checked before this server signs them, candidates are tried in order (unreachable, unknown
room or "cannot grant" moves on; a refusal is final), and an invite must come back as the
same event signed by the invitee's server. Pure service tests: no database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from starling.errors import MatrixError
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.remote_membership import RemoteMembership
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import RoomVersion, get_room_version
from starling.protocol.signing import SigningKey
from starling.rooms.builder import EventBuilder
from starling.storage.memberships import Membership

HERE = "here.test"
ROOM = "!room:resident.test"
ALICE = f"@alice:{HERE}"
RV = get_room_version("10")


def template(**overrides: Any) -> dict[str, Any]:
    event = {
        "type": "m.room.member",
        "room_id": ROOM,
        "sender": ALICE,
        "state_key": ALICE,
        "content": {"membership": "join"},
        "depth": 5,
        "prev_events": ["$" + "A" * 43],
        "auth_events": ["$" + "B" * 42 + "A"],
        "origin_server_ts": 1,
    }
    event.update(overrides)
    return event


class FakeResidents:
    """Answers per server: an exception to raise, or a make_* template / send_* answer."""

    def __init__(self) -> None:
        self.make: dict[str, Any] = {}
        self.send: dict[str, Any] = {}
        self.calls: list[tuple[str, str, str]] = []

    async def get_json(
        self, destination: str, path: str, query: Any = None, *, timeout: float = 60.0
    ) -> Any:
        self.calls.append(("GET", destination, path))
        answer = self.make.get(destination, FederationUnreachable(destination, "down"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def put_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any:
        self.calls.append(("PUT", destination, path))
        answer = self.send.get(destination, {})
        if isinstance(answer, Exception):
            raise answer
        return answer(body) if callable(answer) else answer


class Joins:
    def __init__(self) -> None:
        self.processed: list[tuple[str, Event, list[Any]]] = []

    async def process_send_join_response(
        self,
        origin: str,
        room_id: str,
        room_version: RoomVersion,
        join_event: Event,
        state: list[dict[str, Any]],
        auth_chain: list[dict[str, Any]],
    ) -> int:
        self.processed.append((origin, join_event, state))
        return 7


class Verifier:
    async def verify_event_signatures(self, event: Event) -> None:
        return None


class Store:
    def __init__(self) -> None:
        self.stored: list[Event] = []

    async def store(self, event: Event) -> int:
        self.stored.append(event)
        return 1


class NoMemberships:
    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        return None


class NoEvents:
    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]:
        return {}


class NoState:
    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        return {}


def make(residents: FakeResidents, held: Any = None) -> tuple[RemoteMembership, Joins, Store]:
    """The joining side over `residents`; `held` (if given) answers for this server's
    memberships and events."""
    joins, store = Joins(), Store()
    remote = RemoteMembership(
        server_name=HERE,
        builder=EventBuilder(HERE, SigningKey.generate()),
        client=residents,
        joins=joins,
        verifier=Verifier(),
        store=store,
        memberships=held or NoMemberships(),
        events=held or NoEvents(),
        state=NoState(),
    )
    return remote, joins, store


async def test_join_signs_a_checked_template_and_processes_the_answer() -> None:
    residents = FakeResidents()
    residents.make["a.test"] = {"event": template(), "room_version": "10"}
    residents.send["a.test"] = {"state": [{"x": 1}], "auth_chain": []}
    remote, joins, _ = make(residents)
    event = await remote.join(ROOM, ALICE, ["a.test"], {"displayname": "Alice"})
    assert event.content == {"displayname": "Alice", "membership": "join"}
    assert HERE in event.pdu["signatures"]
    assert event.pdu["origin_server_ts"] != 1  # our own timestamp
    ((origin, processed, state),) = joins.processed
    assert origin == "a.test" and processed.event_id == event.event_id and state == [{"x": 1}]
    assert (
        residents.calls[-1][2]
        == f"/_matrix/federation/v2/send_join/%21room%3Aresident.test/{event.event_id.replace('$', '%24')}"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"sender": "@mallory:here.test"},
        {"state_key": "@mallory:here.test"},
        {"room_id": "!other:resident.test"},
        {"type": "m.room.message"},
        {"content": {"membership": "ban"}},
    ],
)
async def test_a_template_for_anything_else_is_not_signed(bad: dict[str, Any]) -> None:
    residents = FakeResidents()
    residents.make["a.test"] = {"event": template(**bad), "room_version": "10"}
    remote, joins, _ = make(residents)
    with pytest.raises(MatrixError) as refused:
        await remote.join(ROOM, ALICE, ["a.test"], {})
    assert refused.value.status == 502
    assert not any(method == "PUT" for method, _, _ in residents.calls)
    assert joins.processed == []


async def test_candidates_are_tried_until_one_grants_the_join() -> None:
    residents = FakeResidents()
    # down.test is unreachable (default); nope.test does not know the room; grant.test
    # cannot grant a restricted join; ok.test lets us in.
    residents.make["nope.test"] = FederationError(404, "M_NOT_FOUND", "unknown room")
    residents.make["grant.test"] = FederationError(400, "M_UNABLE_TO_GRANT_JOIN", "ask another")
    residents.make["ok.test"] = {"event": template(), "room_version": "10"}
    residents.send["ok.test"] = {"state": [], "auth_chain": []}
    remote, joins, _ = make(residents)
    await remote.join(ROOM, ALICE, ["down.test", HERE, "nope.test", "grant.test", "ok.test"], {})
    assert [d for m, d, _ in residents.calls if m == "GET"] == [
        "down.test",
        "nope.test",
        "grant.test",
        "ok.test",
    ]  # never this server itself
    assert joins.processed[0][0] == "ok.test"


async def test_a_refusal_is_final_and_nothing_reachable_is_an_error() -> None:
    residents = FakeResidents()
    residents.make["a.test"] = FederationError(403, "M_FORBIDDEN", "banned")
    residents.make["b.test"] = {"event": template(), "room_version": "10"}
    remote, _, _ = make(residents)
    with pytest.raises(MatrixError) as refused:
        await remote.join(ROOM, ALICE, ["a.test", "b.test"], {})
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")
    assert [d for _, d, _ in residents.calls] == ["a.test"]
    with pytest.raises(MatrixError) as unreachable:
        await remote.join(ROOM, ALICE, ["down.test"], {})
    assert unreachable.value.status == 502
    with pytest.raises(MatrixError) as nowhere:
        await remote.join(ROOM, ALICE, [HERE], {})
    assert nowhere.value.errcode == "M_NOT_FOUND"


async def test_an_unsupported_room_version_is_refused() -> None:
    residents = FakeResidents()
    residents.make["a.test"] = {"event": template(), "room_version": "org.example.99"}
    remote, _, _ = make(residents)
    with pytest.raises(MatrixError) as refused:
        await remote.join(ROOM, ALICE, ["a.test"], {})
    assert refused.value.errcode == "M_UNSUPPORTED_ROOM_VERSION"


async def test_reject_and_knock_are_remembered_for_sync() -> None:
    residents = FakeResidents()
    residents.make["a.test"] = {
        "event": template(content={"membership": "leave"}),
        "room_version": "10",
    }
    remote, _, store = make(residents)
    left = await remote.leave(ROOM, ALICE, ["a.test"], {"membership": "leave"})
    assert left.membership == "leave" and store.stored == [left]
    residents.make["a.test"] = {
        "event": template(content={"membership": "knock"}),
        "room_version": "10",
    }
    create = {"type": "m.room.create", "state_key": "", "content": {}, "sender": "@o:a.test"}
    residents.send["a.test"] = {"knock_room_state": [{**create, "hashes": {}}, "junk"]}
    knock = await remote.knock(ROOM, ALICE, ["a.test"], {})
    assert knock.unsigned["knock_room_state"] == [create]  # stripped, junk skipped
    assert store.stored[-1] is knock


async def test_an_invite_must_come_back_as_the_same_event_signed_by_the_invitee() -> None:
    builder = EventBuilder(HERE, SigningKey.generate())
    theirs = EventBuilder("far.test", SigningKey.generate())
    invite = builder.finish(
        template(
            sender=ALICE,
            state_key="@bob:far.test",
            content={"membership": "invite"},
        ),
        RV,
    )
    residents = FakeResidents()
    remote, _, _ = make(residents)

    residents.send["far.test"] = lambda body: {"event": theirs.countersign(invite).pdu}
    signed = await remote.invite(invite, [])
    assert set(signed.pdu["signatures"]) == {HERE, "far.test"}

    residents.send["far.test"] = lambda body: {"event": body["event"]}  # not signed
    with pytest.raises(MatrixError) as refused:
        await remote.invite(invite, [])
    assert (refused.value.status, refused.value.errcode) == (502, "M_UNKNOWN")
    # Not an event of the room version (a float): 400 M_BAD_JSON, as Synapse answers.
    floated = theirs.countersign(invite).pdu
    residents.send["far.test"] = lambda body: {"event": {**floated, "bad_val": 1.1}}
    with pytest.raises(MatrixError) as refused:
        await remote.invite(invite, [])
    assert (refused.value.status, refused.value.errcode) == (400, "M_BAD_JSON")
    assert "far.test" in refused.value.error
    changed = dict(invite.pdu)
    changed["content"] = {"membership": "invite", "reason": "changed"}
    residents.send["far.test"] = lambda body: {"event": changed}
    with pytest.raises(MatrixError):
        await remote.invite(invite, [])
    residents.send["far.test"] = FederationError(403, "M_FORBIDDEN", "we do not want it")
    with pytest.raises(MatrixError) as refused:
        await remote.invite(invite, [])
    assert refused.value.status == 403


class OldResidents(FakeResidents):
    """Residents that serve only the deprecated v1 of send_join/send_leave/invite: v2 is
    an unknown endpoint (404 without a Matrix error, as SyTest's and old servers answer)."""

    async def put_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any:
        if path.startswith("/_matrix/federation/v2/"):
            self.calls.append(("PUT", destination, path))
            raise FederationError(404, None, "not found")
        return [200, await super().put_json(destination, path, body, timeout=timeout)]


async def test_a_resident_without_v2_gets_v1_send_join_and_send_leave() -> None:
    residents = OldResidents()
    residents.make["old.test"] = {"event": template(), "room_version": "10"}
    residents.send["old.test"] = {"state": [{"x": 1}], "auth_chain": []}
    remote, joins, store = make(residents)
    await remote.join(ROOM, ALICE, ["old.test"], {})
    assert [p.split("/")[3:5] for m, _, p in residents.calls if m == "PUT"] == [
        ["v2", "send_join"],
        ["v1", "send_join"],
    ]
    assert joins.processed[0][2] == [{"x": 1}]  # the [200, answer] wrapper taken off
    residents.make["old.test"] = {
        "event": template(content={"membership": "leave"}),
        "room_version": "10",
    }
    residents.send["old.test"] = {}
    await remote.leave(ROOM, ALICE, ["old.test"], {})
    assert residents.calls[-1][2].startswith("/_matrix/federation/v1/send_leave/")
    assert store.stored[-1].membership == "leave"


async def test_a_missing_v2_is_not_taken_for_any_error() -> None:
    """A 404 with a Matrix error (the room is unknown there) is that server's answer, not
    a missing endpoint: no v1 retry."""
    residents = FakeResidents()
    residents.make["a.test"] = {"event": template(), "room_version": "10"}
    residents.send["a.test"] = FederationError(403, "M_FORBIDDEN", "no")
    remote, _, _ = make(residents)
    with pytest.raises(MatrixError):
        await remote.join(ROOM, ALICE, ["a.test"], {})
    assert [p.split("/")[3] for m, _, p in residents.calls if m == "PUT"] == ["v2"]


async def test_v1_invite_only_for_room_versions_one_and_two() -> None:
    theirs = EventBuilder("far.test", SigningKey.generate())
    builder = EventBuilder(HERE, SigningKey.generate())
    residents = OldResidents()
    remote, _, _ = make(residents)
    residents.send["far.test"] = lambda body: {"event": theirs.countersign(invite).pdu}
    fields = {"sender": ALICE, "state_key": "@bob:far.test", "content": {"membership": "invite"}}
    v2_room = get_room_version("2")
    pair = {"sha256": "A" * 43}
    old_format = template(
        **fields,
        event_id="$inv:here.test",
        origin=HERE,
        prev_events=[["$p:here.test", pair]],
        auth_events=[["$a:here.test", pair]],
    )
    invite = builder.finish(old_format, v2_room)
    signed = await remote.invite(invite, [{"type": "m.room.name"}])
    assert set(signed.pdu["signatures"]) == {HERE, "far.test"}
    assert residents.calls[-1][2].startswith("/_matrix/federation/v1/invite/")
    invite = builder.finish(template(**fields), RV)  # room version 10: v1 cannot carry it
    with pytest.raises(MatrixError):
        await remote.invite(invite, [])
    assert residents.calls[-1][2].startswith("/_matrix/federation/v2/invite/")


async def test_incompatible_room_version_reaches_the_client_with_its_version() -> None:
    residents = FakeResidents()
    residents.make["a.test"] = FederationError(
        400,
        "M_INCOMPATIBLE_ROOM_VERSION",
        "upgrade",
        body={"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "room_version": "99", "x": "dropped"},
    )
    remote, _, _ = make(residents)
    with pytest.raises(MatrixError) as refused:
        await remote.join(ROOM, ALICE, ["a.test"], {})
    assert refused.value.to_json() == {
        "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
        "error": "upgrade",
        "room_version": "99",
    }


class InvitedHere:
    """Alice holds `invite` (an invite from another server to a room we are not in)."""

    def __init__(self, invite: Event) -> None:
        self.invite = invite

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        return Membership(room_id, user_id, "invite", self.invite.event_id, 3)

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]:
        return {e: self.invite for e in event_ids if e == self.invite.event_id}


@pytest.mark.parametrize(
    "failure",
    [
        FederationError(403, "M_FORBIDDEN", "no"),
        FederationError(500, None, "boom"),
        FederationUnreachable("inviter.test", "down"),
    ],
)
async def test_an_invite_is_rejected_here_when_its_servers_will_not_take_the_leave(
    failure: Exception,
) -> None:
    inviter = EventBuilder("inviter.test", SigningKey.generate())
    invite = inviter.finish(
        template(sender="@carol:inviter.test", content={"membership": "invite"}), RV
    )
    residents = FakeResidents()
    residents.make["inviter.test"] = failure
    residents.make["resident.test"] = failure
    held = InvitedHere(invite)
    remote, _, store = make(residents, held)
    leave = await remote.leave_room(ROOM, ALICE, {"reason": "no thanks"})
    assert (leave.sender, leave.state_key, leave.membership) == (ALICE, ALICE, "leave")
    assert leave.content["reason"] == "no thanks"
    assert list(leave.prev_event_ids) == [invite.event_id]
    assert HERE in leave.pdu["signatures"]
    assert store.stored == [leave]
    assert not any(m == "PUT" for m, _, _ in residents.calls)  # nothing was sent


async def test_no_local_leave_without_an_invite() -> None:
    residents = FakeResidents()  # every server unreachable
    remote, _, store = make(residents)
    with pytest.raises(MatrixError):
        await remote.leave_room(ROOM, ALICE, {})
    assert store.stored == []
